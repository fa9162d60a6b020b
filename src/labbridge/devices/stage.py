"""A motion stage (one axis) over a backend; the simulated backend has a speed and limits.

The stage is what a PyMoDAQ ``DAQ_Move`` drives (spec pymodaq.md §4.2): absolute and relative
moves, homing, stop, and a position query. Moves are coroutines that return the final
position; a stop cancels the motion in progress and the move returns where the stage stopped.
Every position change is announced as a Change on signal ``position``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any, Protocol

from labbridge.devices.base import Device


def _finite(what: str, value: Any) -> float:
    """``value`` as a float; ValueError unless it is finite (NaN and +-inf are refused)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return out


class StageBackend(Protocol):
    """What a stage needs from hardware: read the position, move, stop."""

    async def read_position(self) -> float: ...

    async def move_to(self, target: float) -> float: ...

    async def stop(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...


class SimStageBackend:
    """Simulated axis: moves at ``speed`` units/s (0 = instantly), starts at ``position``.

    The physics is linear motion in event-loop time; ``move_to`` sleeps in small steps so a
    ``stop`` (or a cancellation) leaves the axis where it was at that instant.
    """

    STEP = 0.01  # seconds between simulated position updates

    def __init__(self, position: float = 0.0, speed: float = 0.0) -> None:
        if not (speed >= 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a finite number >= 0, got {speed!r}")
        self.position = _finite("position", position)
        self.speed = float(speed)
        self._stop = asyncio.Event()

    async def read_position(self) -> float:
        return self.position

    async def move_to(self, target: float) -> float:
        target = _finite("target", target)  # inf would make the position NaN and loop forever
        self._stop = asyncio.Event()
        if self.speed == 0:
            self.position = float(target)
            return self.position
        start, t0 = self.position, time.monotonic()
        duration = abs(target - start) / self.speed
        while not self._stop.is_set():
            frac = min(1.0, (time.monotonic() - t0) / duration) if duration else 1.0
            self.position = start + (target - start) * frac
            if frac >= 1.0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.STEP):
                    await self._stop.wait()
        return self.position

    async def stop(self) -> float:
        self._stop.set()
        return self.position

    def describe(self) -> dict[str, Any]:
        return {"kind": "sim", "speed": self.speed}


class Stage(Device):
    """One motion axis: ``move_abs``, ``move_rel``, ``move_home``, ``stop_motion``,
    ``get_position``. Targets outside ``[min, max]``, and non-finite targets or home (NaN,
    +-inf: the default limits are infinite), raise ValueError (no motion)."""

    kind = "stage"

    def __init__(self, name: str, backend: StageBackend, *, units: str = "mm",
                 home: float = 0.0, minimum: float = -math.inf, maximum: float = math.inf) -> None:
        super().__init__(name)
        if minimum > maximum:
            raise ValueError("minimum must not exceed maximum")
        self.backend = backend
        self.units = units
        self.home = _finite("home", home)
        self.minimum = minimum
        self.maximum = maximum
        self._position: float | None = None
        self._lock = asyncio.Lock()

    @property
    def position(self) -> float | None:
        """Last known position (None before the first read)."""
        return self._position

    def _set(self, value: float) -> float:
        if value != self._position:
            self._position = value
            self.emit("position", value)
        return value

    async def get_position(self) -> float:
        return self._set(float(await self.backend.read_position()))

    async def move_abs(self, target: float) -> float:
        target = _finite("target", target)
        if not (self.minimum <= target <= self.maximum):
            raise ValueError(f"target {target} {self.units} outside [{self.minimum}, "
                             f"{self.maximum}]")
        async with self._lock:
            self.emit("moving", True)
            try:
                return self._set(float(await self.backend.move_to(target)))
            finally:
                self.emit("moving", False)

    async def move_rel(self, delta: float) -> float:
        return await self.move_abs(await self.get_position() + float(delta))

    async def move_home(self) -> float:
        return await self.move_abs(self.home)

    async def stop_motion(self) -> None:
        self._set(float(await self.backend.stop()))

    def settings(self) -> dict[str, Any]:
        """Settings exported to a PyMoDAQ server (§4.1 ``Infos``; ``units`` is expected)."""
        return {"units": self.units, "home": self.home}

    def set_setting(self, name: str, value: str) -> None:
        """Apply one exported setting (``set_info``); KeyError for an unknown one."""
        if name == "home":
            self.home = _finite("home", value)
        elif name == "units":
            self.units = str(value)
        else:
            raise KeyError(name)
        self.emit(name, getattr(self, name))

    def snapshot(self) -> dict[str, Any]:
        return {"position": self._position}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "units": self.units,
                "min": self.minimum, "max": self.maximum, "backend": self.backend.describe()}

    def signals(self) -> dict[str, dict[str, Any]]:
        return {"position": {"units": self.units, "on_change": True},
                "moving": {"on_change": True}, "*": {"on_change": True}}
