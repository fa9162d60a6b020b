"""Gauge controllers: named pressure gauges (``GetPressure <ctrl>,<gauge>``).

Spec pychron.md section 5: ``GetPressure`` names a controller device and one of its gauges
(``IG``, ``CG1``, ``CG2``...) and answers a float, or ``ERROR 016 : <ctrl> <gauge> not
available`` for a gauge the controller does not have (:class:`KeyError` here). The real
client waits 0.25 s before each ask (section 7); nothing here depends on it.

Every reading is announced as a Change (signal = gauge name, value = pressure in torr), so a
dashboard sees what clients read. An optional ``poll_period`` makes the controller read all
its gauges periodically by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

from labbridge.devices.backends import BackendError, GaugeBackend
from labbridge.devices.base import Device

log = logging.getLogger(__name__)


class GaugeController(Device):
    """A controller with named gauges over a :class:`GaugeBackend`."""

    kind = "gauge_controller"

    def __init__(self, name: str, gauges: list[str], backend: GaugeBackend, *,
                 timeout: float = 5.0, poll_period: float | None = None) -> None:
        super().__init__(name)
        if not gauges:
            raise ValueError("a gauge controller needs at least one gauge")
        if len(set(gauges)) != len(gauges):
            raise ValueError("duplicate gauge names")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
        if poll_period is not None and not (poll_period > 0 and math.isfinite(poll_period)):
            raise ValueError(f"poll_period must be a number > 0, got {poll_period!r}")
        self.gauges: list[str] = list(gauges)
        self.backend = backend
        self.timeout = timeout
        self.poll_period = poll_period
        self._last: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = False

    def has(self, gauge: str) -> bool:
        return gauge in self.gauges

    async def pressure(self, gauge: str) -> float:
        """Read one gauge (torr). KeyError for a gauge this controller does not have;
        :class:`BackendError` when the hardware does not answer within ``timeout``."""
        if gauge not in self.gauges:
            raise KeyError(gauge)
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the reading when a
            # cancellation arrives just as the backend answers, and the cancelled caller (a
            # dashboard's poll loop being stopped) then runs on for ever.
            async with asyncio.timeout(self.timeout):
                value = await self.backend.read_pressure(gauge)
        except TimeoutError:
            raise BackendError(f"gauge {gauge}: no answer within {self.timeout:g} s") from None
        value = float(value)
        self._last[gauge] = value
        self.emit(gauge, value)
        return value

    def last(self, gauge: str) -> float | None:
        """The last pressure read from ``gauge`` (None before the first read)."""
        if gauge not in self.gauges:
            raise KeyError(gauge)
        return self._last.get(gauge)

    def snapshot(self) -> dict[str, Any]:
        return {g: self._last.get(g) for g in self.gauges}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "gauges": list(self.gauges),
                "backend": self.backend.describe(), "poll_period": self.poll_period}

    def signals(self) -> dict[str, dict[str, Any]]:
        # every signal is a gauge's reading, in torr (module docstring)
        return {"*": {"units": "torr", "quantity": "pressure"}}

    async def start(self) -> None:
        if self._started:
            return
        await self.backend.start()
        self._started = True
        if self.poll_period:
            self._task = asyncio.get_running_loop().create_task(
                self._poll(self.poll_period), name=f"gauges {self.name} poll")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._started:
            self._started = False
            await self.backend.stop()

    async def _poll(self, period: float) -> None:
        while True:
            for g in self.gauges:
                try:
                    await self.pressure(g)
                except BackendError as exc:
                    log.warning("%s: %s", self.name, exc)
            await asyncio.sleep(period)
