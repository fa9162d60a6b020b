"""Publish every device change of a node on the bus (seed 002: "the valve state change is
published on ZMQ back to pyExperiment"; spec pychron.md §13).

Each :class:`~labbridge.devices.base.Change` becomes one envelope on topic
``<node>.<device>.<signal>`` carrying the value (JSON, or the binary form for numpy arrays)
and the change's own timestamp. A valve change (a value with ``state``, ``locked`` and
``owner``, as :class:`~labbridge.devices.valves.ValveBank` emits) is also published as the
legacy ``pychron {"kind":"valve_state",...}`` line when the sink has legacy output on.
"""

from __future__ import annotations

import logging
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
