"""Dashboard events and the per-value sampling logic, as pure code (spec pychron.md §14).

Events are frozen dataclasses; each renders itself in the two forms the DashboardServer
publishes: the JSON envelope (:meth:`DashboardEvent.to_json`, topic from :func:`event_topic`)
and the legacy single strings, in the order of the spec table (§14.1)::

    value update   dashboard {...}, then <tag> <value>
    warning        dashboard {...}, then the bare message
    critical       the bare message, then dashboard {...}, then error <message>
    timeout, heartbeat, error   dashboard {...} only

:class:`ValueMonitor` decides, for one configured value, what a sample, a failed sample or
the passing of time produces. It holds no clock and no I/O: the server passes ``now``.

Conditional semantics (ADR 0034): a conditional fires when its test is true on ``nfail``
consecutive samples (Pychron fires on sample ``nfail + 1``, an off-by-one we do not copy),
fires once, and re-arms after one sample where the test is false. Warning and critical
conditionals are independent: a value that jumps past both fires both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.dashboard_config import (
    ConditionalConfig,
    DeviceConfig,
    Severity,
    ValueConfig,
)
from labbridge.protocol.telemetry.envelope import make_topic
from labbridge.protocol.telemetry.expr import compile_test


@dataclass(frozen=True, slots=True)
class DashboardEvent:
    """Base of every dashboard event; ``kind`` names it on the wire."""

    kind: ClassVar[str] = "event"
    ts: float

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "ts": self.ts}
        for name in self.__slots__:
            out[name] = getattr(self, name)
        return out

    def legacy_lines(self) -> list[bytes]:
        return [legacy.dashboard_line(self.to_json())]


@dataclass(frozen=True, slots=True)
class Heartbeat(DashboardEvent):
    kind: ClassVar[str] = "heartbeat"
    source: str
    state: str


@dataclass(frozen=True, slots=True)
class ValueUpdate(DashboardEvent):
    kind: ClassVar[str] = "value_update"
    device: str
    name: str
    tag: str
    value: Any
    units: str

    def legacy_lines(self) -> list[bytes]:
        return [legacy.dashboard_line(self.to_json()), legacy.value_line(self.tag, self.value)]


@dataclass(frozen=True, slots=True)
class TimeoutEvent(DashboardEvent):
    kind: ClassVar[str] = "timeout"
    device: str
    name: str
    tag: str


@dataclass(frozen=True, slots=True)
class WarningEvent(DashboardEvent):
    kind: ClassVar[str] = "warning"
    device: str
    message: str

    def legacy_lines(self) -> list[bytes]:
        return [legacy.dashboard_line(self.to_json()), self.message.encode("utf-8")]


@dataclass(frozen=True, slots=True)
class CriticalEvent(DashboardEvent):
    kind: ClassVar[str] = "critical"
    device: str
    message: str
    script: str

    def legacy_lines(self) -> list[bytes]:
        return [self.message.encode("utf-8"), legacy.dashboard_line(self.to_json()),
                legacy.line(legacy.ERROR_TAG, self.message)]


@dataclass(frozen=True, slots=True)
class ErrorEvent(DashboardEvent):
    kind: ClassVar[str] = "error"
    message: str


EVENT_KINDS: Final[dict[str, type[DashboardEvent]]] = {
    c.kind: c for c in (Heartbeat, ValueUpdate, TimeoutEvent, WarningEvent, CriticalEvent,
                       ErrorEvent)}


def event_from_json(obj: dict[str, Any]) -> DashboardEvent | None:
    """Rebuild an event from its JSON object (client side); None for unknown kinds/shapes."""
    cls = EVENT_KINDS.get(str(obj.get("kind")))
    if cls is None:
        return None
    try:
        fields = {n: obj[n] for n in cls.__slots__}
        return cls(ts=float(obj.get("ts", 0.0)), **fields)
    except (KeyError, TypeError, ValueError):
        return None


def event_topic(node: str, event: DashboardEvent) -> str:
    """Envelope topic of an event: ``<node>.dashboard.value.<Device>.<value>`` for value
    updates (one topic per signal, so history and gap counting work per value) and
    ``<node>.dashboard.event.<kind>`` for everything else."""
    if isinstance(event, ValueUpdate):
        return make_topic(node, "dashboard", "value", event.device, event.name)
    return make_topic(node, "dashboard", "event", event.kind)


def condition_message(device: str, value: str, teststr: str, v: Any) -> str:
    """Pychron's conditional message text: ``Dev.value.test is True. value=v``."""
    return f"{device}.{value}.{teststr} is True. value={v}"


class ConditionalTracker:
    """Consecutive-failure counting for one conditional (see the module docstring)."""

    __slots__ = ("config", "count", "test", "tripped")

    def __init__(self, config: ConditionalConfig) -> None:
        self.config = config
        self.test: Callable[[float], bool] = compile_test(config.teststr)
        self.count = 0
        self.tripped = False

    def update(self, value: float) -> bool:
        """Feed one sample; True exactly when the conditional fires on this sample."""
        if self.test(value):
            self.count += 1
            if not self.tripped and self.count >= self.config.nfail:
                self.tripped = True
                return True
            return False
        self.count = 0
        self.tripped = False
        return False


class ValueMonitor:
    """What one dashboard value publishes, given samples, failures and time."""

    def __init__(self, device: DeviceConfig, value: ValueConfig, now: float) -> None:
        self.device = device
        self.value = value
        self.conditionals = [ConditionalTracker(c) for c in value.conditionals]
        self.last_value: Any = None
        self.last_published: float | None = None
        self.last_ok = now
        self.timed_out = False
        self.failing = False
        self.samples = 0

    def sample(self, raw: Any, now: float) -> list[DashboardEvent]:
        """A successful reading; returns the events to publish, in order."""
        self.samples += 1
        self.last_ok = now
        self.timed_out = False
        self.failing = False
        out: list[DashboardEvent] = []
        num = _as_number(raw)
        if self._changed(raw, num):
            self.last_value = raw
            self.last_published = now
            out.append(ValueUpdate(now, self.device.name, self.value.name, self.value.tag,
                                   raw, self.value.units))
        if num is not None:
            for tr in self.conditionals:
                if tr.update(num):
                    msg = condition_message(self.device.name, self.value.name,
                                            tr.config.teststr, raw)
                    if tr.config.severity is Severity.CRITICAL:
                        out.append(CriticalEvent(now, self.device.name, msg, tr.config.script))
                    else:
                        out.append(WarningEvent(now, self.device.name, msg))
        return out

    def _changed(self, raw: Any, num: float | None) -> bool:
        if self.last_published is None:
            return True
        last_num = _as_number(self.last_value)
        if num is None or last_num is None:
            return bool(raw != self.last_value)
        if math.isnan(num) or math.isnan(last_num):
            return not (math.isnan(num) and math.isnan(last_num))
        return abs(num - last_num) > self.value.threshold

    def failure(self, message: str, now: float) -> list[DashboardEvent]:
        """A reading raised or returned nothing; one error event per outage."""
        if self.failing:
            return []
        self.failing = True
        return [ErrorEvent(now, f"{self.device.name}.{self.value.name}: {message}")]

    def check_timeout(self, now: float) -> DashboardEvent | None:
        """A timeout event once ``timeout`` seconds pass without a good reading (0 = off)."""
        t = self.value.timeout
        if t <= 0 or self.timed_out or now - self.last_ok <= t:
            return None
        self.timed_out = True
        return TimeoutEvent(now, self.device.name, self.value.name, self.value.tag)


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float):
        return float(v)
    return None
