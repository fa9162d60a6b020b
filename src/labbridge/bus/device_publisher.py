"""Publish every device change of a node on the bus (seed 002: "the valve state change is
published on ZMQ back to pyExperiment"; spec pychron.md §13).

Each :class:`~labbridge.devices.base.Change` becomes one envelope on topic
``<node>.<device>.<signal>`` carrying the value (JSON, or the binary form for numpy arrays)
and the change's own timestamp. A valve change (a value with ``state``, ``locked`` and
``owner``, as :class:`~labbridge.devices.valves.ValveBank` emits) is also published as the
legacy ``pychron {"kind":"valve_state",...}`` line when the sink has legacy output on.

Device metadata: :meth:`DevicePublisher.publish_meta` puts one message per device on topic
``<node>.<device>.meta``: ``{"kind", "signals", "describe", "snapshot"}`` (what
:meth:`Device.signals` says about units and meaning, the static description, and the scalar
values of the snapshot). A subscriber that joins late learns what the signals are from the
next one; :meth:`meta_loop` repeats them every ``period`` seconds (the notifier service runs
it; ``meta_period`` in the node file).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from labbridge.devices.base import Change, Device
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.envelope import make_topic

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What a DevicePublisher publishes through (a Publisher or a Notifier)."""

    def publish(self, topic: str, value: Any, ts: float | None = None, *,
                copy: bool = True) -> int: ...

    def publish_legacy(self, line: bytes) -> None: ...


def valve_event(change: Change) -> dict[str, Any] | None:
    """The ``valve_state`` event of a valve change, or None for other changes (§13)."""
    v = change.value
    if not isinstance(v, dict) or "state" not in v or "locked" not in v:
        return None
    return {"kind": "valve_state", "name": change.signal, "state": int(bool(v["state"])),
            "locked": int(bool(v["locked"])), "owner": str(v.get("owner") or ""),
            "ts": change.ts}


#: Signal name of the metadata message of every device (``<node>.<device>.meta``).
META_SIGNAL = "meta"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int) or (
        isinstance(v, float) and math.isfinite(v))


def device_meta(dev: Device) -> dict[str, Any]:
    """The metadata message of one device (module docstring)."""
    snap = {str(k): v for k, v in dev.snapshot().items() if _scalar(v)}
    return {"kind": dev.kind, "signals": dev.signals(), "describe": dev.describe(),
            "snapshot": snap}


class DevicePublisher:
    """Subscribes to devices' changes and publishes them through ``sink``."""

    def __init__(self, sink: Sink, node: str, devices: Iterable[Device], *,
                 legacy: bool = True) -> None:
        self.sink = sink
        self.node = node
        self.devices = list(devices)
        self.legacy = legacy
        self._unsubscribe: list[Callable[[], None]] = []
        self.published = 0
        self.failed = 0
        self._meta_failed: set[str] = set()

    def start(self) -> None:
        if self._unsubscribe:
            return
        for dev in self.devices:
            self._unsubscribe.append(dev.subscribe(self._on_change))

    def stop(self) -> None:
        while self._unsubscribe:
            self._unsubscribe.pop()()

    def topic(self, change: Change) -> str:
        return make_topic(self.node, change.device, change.signal)

    def publish_meta(self) -> None:
        """One metadata message per device; a device whose metadata cannot be encoded is
        logged once (not every period) and skipped."""
        for dev in self.devices:
            try:
                self.sink.publish(make_topic(self.node, dev.name, META_SIGNAL),
                                  device_meta(dev))
            except Exception as exc:
                if dev.name not in self._meta_failed:
                    log.warning("cannot publish the metadata of %s: %s", dev.name, exc)
                self._meta_failed.add(dev.name)
            else:
                self._meta_failed.discard(dev.name)

    async def meta_loop(self, period: float) -> None:
        """Publish the metadata now and every ``period`` seconds."""
        while True:
            self.publish_meta()
            await asyncio.sleep(period)

    def _on_change(self, change: Change) -> None:
        try:
            self.sink.publish(self.topic(change), change.value, change.ts)
            if self.legacy:
                ev = valve_event(change)
                if ev is not None:
                    self.sink.publish_legacy(legacy.pychron_line(ev))
        except Exception as exc:  # a value we cannot encode must not break the device
            self.failed += 1
            log.warning("cannot publish %s.%s: %s", change.device, change.signal, exc)
            return
        self.published += 1
