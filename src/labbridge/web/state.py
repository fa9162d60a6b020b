"""What the web dashboard knows about the lab, built from bus messages (issue 8 item 2).

This module is pure: no sockets, no tasks, no clock of its own. The app feeds it every bus
message (:meth:`LabState.on_message`) and asks it what to push to the pages; every method that
depends on time takes ``now``. That keeps the classification rules testable without a bus.

Classification of a message on topic ``<node>.<device>.<signal>`` (docs/web.md, ADR 0071):

* ``<node>.notifier.heartbeat`` and ``<node>.dashboard.event.heartbeat``: the node's
  heartbeat (health only);
* ``<node>.dashboard.event.{warning,critical,timeout,error}``: an entry of the event log;
* a JSON object with ``state`` and ``locked``: a valve (``ValveBank`` changes, seed 002
  "the valve state change is published on ZMQ");
* a number (or a ``value_update`` / ``{"value": n}`` object holding one): a point of the
  trend series named by the topic; an object of up to 32 numbers (a spectrometer ``scan``
  of detector intensities): one series per field, ``<topic>.<field>``;
* a 2-D array: the latest frame of a camera;
* anything else is counted for health and otherwise ignored.

Every collection is bounded: series keep at most ``max_points`` points, the event log
``max_events`` entries, and topics beyond ``max_series`` are not plotted (counted instead).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, overload

#: Health states shown on the page.
LIVE = "live"
STALE = "stale"
DISCONNECTED = "disconnected"

#: Largest record of numbers split into one series per field.
MAX_FIELDS = 32

#: Usable timestamps: finite and less than TS_MAX (the year 3000 in Unix seconds) from zero
#: either way. A NaN would reach the page as a bare ``NaN`` that JSON.parse rejects, and one
#: absurd time would push every other point of a series out of its window. (Negative times
#: are allowed: this module takes any clock, and tests feed it small made-up ones.)
TS_MAX = 32503680000.0


@overload
def timestamp(value: Any, fallback: float) -> float: ...
@overload
def timestamp(value: Any, fallback: float | None = None) -> float | None: ...
def timestamp(value: Any, fallback: float | None = None) -> float | None:
    """``value`` as a plausible Unix time (a number or numeric string), else ``fallback``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return fallback
    try:
        f = float(value)
    except (ValueError, OverflowError):
        return fallback
    return f if math.isfinite(f) and -TS_MAX < f < TS_MAX else fallback


#: Dashboard event kinds that go to the event log, with their level.
EVENT_LEVELS = {"warning": "warning", "critical": "critical", "timeout": "warning",
                "error": "error"}


@dataclass
class NodeHealth:
    """One node as seen on the bus (or expected from the config and not heard yet)."""

    name: str
    source: str = ""
    first_seen: float | None = None
    last_message: float | None = None
    last_heartbeat: float | None = None
    messages: int = 0
    gaps: int = 0
    missed: int = 0

    def age(self, now: float) -> float | None:
        """Seconds since the last heartbeat (or, with none yet, the last message)."""
        ref = self.last_heartbeat if self.last_heartbeat is not None else self.last_message
        return None if ref is None else max(0.0, now - ref)

    def status(self, now: float, stale_after: float, disconnect_after: float,
               since: float) -> str:
        """``live``, ``stale`` (no heartbeat for ``stale_after``) or ``disconnected``
        (nothing at all for ``disconnect_after``, or never heard since ``since``)."""
        age = self.age(now)
        if age is None:
            return DISCONNECTED if now - since > stale_after else STALE
        if self.last_message is not None and now - self.last_message > disconnect_after:
            return DISCONNECTED
        return STALE if age > stale_after else LIVE

    def to_json(self, now: float, stale_after: float, disconnect_after: float,
                since: float) -> dict[str, Any]:
        age = self.age(now)
        return {"node": self.name, "source": self.source,
                "status": self.status(now, stale_after, disconnect_after, since),
                "heartbeat_age": None if age is None else round(age, 3),
                "last_message": self.last_message, "messages": self.messages,
                "gaps": self.gaps, "missed": self.missed}


@dataclass
class Valve:
    node: str
    device: str
    name: str
    state: bool = False
    locked: bool = False
    owner: str = ""
    ts: float | None = None
    known: bool = False  # False until a change or a command-server read said so
    layout: dict[str, Any] | None = None
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.node}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "node": self.node, "device": self.device,
                               "name": self.name, "state": "open" if self.state else "closed",
                               "locked": self.locked, "owner": self.owner, "ts": self.ts,
                               "known": self.known, "description": self.description}
        if self.layout:
            out["layout"] = self.layout
        return out


@dataclass
class Series:
    topic: str
    points: deque[tuple[float, float]] = field(default_factory=deque)

    @property
    def last(self) -> tuple[float, float] | None:
        return self.points[-1] if self.points else None


@dataclass
class Frame:
    """Latest 2-D frame of one topic (the array itself; the app encodes PNG on request)."""

    topic: str
    ts: float
    array: Any
    count: int = 0


def split_topic(topic: str) -> tuple[str, str, str]:
    """``node.device.signal...`` -> (node, device, rest); missing parts are ""."""
    node, _, rest = topic.partition(".")
    device, _, signal = rest.partition(".")
    return node, device, signal


def as_number(value: Any) -> float | None:
    """The plottable number in a payload, or None (bools are states, not trends)."""
    if isinstance(value, dict):
        if "value" not in value:
            return None
        value = value["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def is_valve_value(value: Any) -> bool:
    return isinstance(value, dict) and "state" in value and "locked" in value


class LabState:
    """See the module docstring. ``push`` items are plain JSON-able dicts with a ``type``."""

    def __init__(self, *, max_points: int = 5000, max_events: int = 500,
                 max_series: int = 200, window: float = 600.0,
                 layout: dict[str, dict[str, dict[str, Any]]] | None = None,
                 started: float = 0.0) -> None:
        self.max_points = max_points
        self.max_events = max_events
        self.max_series = max_series
        self.window = window
        #: ``{node: {valve: {"x":.., "y":.., "to": [...]}}}`` (schematic hints).
        self.layout = layout or {}
        self.started = started
        self.nodes: dict[str, NodeHealth] = {}
        self.valves: dict[str, Valve] = {}
        self.series: dict[str, Series] = {}
        self.frames: dict[str, Frame] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.dropped_series = 0
        self.ignored = 0

    # -- nodes ------------------------------------------------------------------------------
    def node(self, name: str, source: str = "") -> NodeHealth:
        n = self.nodes.get(name)
        if n is None:
            n = self.nodes[name] = NodeHealth(name, source)
        elif source and not n.source:
            n.source = source
        return n

    # -- valves -----------------------------------------------------------------------------
    def valve(self, node: str, name: str, device: str = "") -> Valve:
        key = f"{node}/{name}"
        v = self.valves.get(key)
        if v is None:
            v = self.valves[key] = Valve(node, device, name,
                                         layout=self.layout.get(node, {}).get(name))
        if device and not v.device:
            v.device = device
        return v

    def set_valve(self, node: str, name: str, *, device: str = "", state: bool | None = None,
                  locked: bool | None = None, owner: str | None = None,
                  ts: float | None = None) -> dict[str, Any] | None:
        """Update one valve; returns the push item when something visible changed."""
        v = self.valve(node, name, device)
        before = (v.state, v.locked, v.owner, v.known)
        if state is not None:
            v.state = state
        if locked is not None:
            v.locked = locked
        if owner is not None:
            v.owner = owner
        v.known = True
        if ts is not None:
            v.ts = ts
        if (v.state, v.locked, v.owner, v.known) == before:
            return None
        return {"type": "valve", "valve": v.to_json()}

    # -- messages ---------------------------------------------------------------------------
    def on_message(self, topic: str, value: Any, ts: float, *, received: float | None = None,
                   source: str = "", gaps: int = 0, missed: int = 0) -> list[dict[str, Any]]:
        """Fold one bus message in; returns what to push to the pages.

        ``ts`` is the source's timestamp (plots, valve times); ``received`` is the local receive
        time (health: a node whose clock is off must not look stale). Default: ``ts``. A ``ts``
        that is not a plausible time (NaN, infinite, absurd) is replaced by ``received``; with
        neither, the message is ignored.
        """
        node_name, device, signal = split_topic(topic)
        rx_ok = timestamp(received)
        ts_ok = timestamp(ts, rx_ok)
        if not node_name or ts_ok is None:
            self.ignored += 1
            return []
        ts = ts_ok
        rx = ts if rx_ok is None else rx_ok
        n = self.node(node_name, source)
        if n.first_seen is None:
            n.first_seen = rx
        n.last_message = rx
        n.messages += 1
        n.gaps, n.missed = gaps, missed
        if (device, signal) in (("notifier", "heartbeat"), ("dashboard", "event.heartbeat")):
            n.last_heartbeat = rx
            return []
        if device == "dashboard" and signal.startswith("event."):
            kind = signal[len("event."):]
            level = EVENT_LEVELS.get(kind)
            if level is None or not isinstance(value, dict):
                return []
            return [self.add_event(level, node_name, _event_text(kind, value),
                                   timestamp(value.get("ts") or ts, ts), kind=kind)]
        if is_valve_value(value):
            return [p for p in [self.set_valve(
                node_name, signal, device=device, state=bool(value["state"]),
                locked=bool(value["locked"]), owner=str(value.get("owner") or ""), ts=ts)]
                if p is not None]
        number = as_number(value)
        if number is not None:
            return self.add_point(topic, ts, number)
        if isinstance(value, dict) and 0 < len(value) <= MAX_FIELDS:
            # A record of numbers (a spectrometer scan: {"H1": 1.2e-3, "AX": ...}): one
            # series per field, ``<topic>.<field>``.
            fields = {str(k): as_number(v) for k, v in value.items()}
            if all(v is not None for v in fields.values()):
                out: list[dict[str, Any]] = []
                for k, v in fields.items():
                    assert v is not None
                    out += self.add_point(f"{topic}.{k}", ts, v)
                return out
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) == 2:
            return [self.set_frame(topic, ts, value)]
        self.ignored += 1
        return []

    def set_frame(self, topic: str, ts: float, array: Any) -> dict[str, Any]:
        """Keep the latest 2-D frame of ``topic`` (only the latest: bounded by topic)."""
        f = self.frames.get(topic)
        count = (f.count + 1) if f is not None else 1
        self.frames[topic] = Frame(topic, ts, array, count)
        return {"type": "frame", "topic": topic, "ts": ts, "count": count,
                "shape": list(getattr(array, "shape", ()))}

    def add_point(self, topic: str, t: float, v: float) -> list[dict[str, Any]]:
        s = self.series.get(topic)
        if s is None:
            if len(self.series) >= self.max_series:
                self.dropped_series += 1
                return []
            s = self.series[topic] = Series(topic, deque(maxlen=self.max_points))
        s.points.append((t, v))
        # Keep the window bounded in time too (the deque bounds it in count).
        limit = t - self.window
        while s.points and s.points[0][0] < limit:
            s.points.popleft()
        return [{"type": "point", "topic": topic, "t": t, "v": v}]

    def add_event(self, level: str, node: str, text: str, ts: float,
                  **extra: Any) -> dict[str, Any]:
        ev = {"level": level, "node": node, "text": text, "ts": ts, **extra}
        self.events.append(ev)
        return {"type": "event", "event": ev}

    # -- views ------------------------------------------------------------------------------
    def health(self, now: float, stale_after: float, disconnect_after: float) -> list[
            dict[str, Any]]:
        return [n.to_json(now, stale_after, disconnect_after, self.started)
                for n in sorted(self.nodes.values(), key=lambda n: n.name)]

    def devices(self) -> dict[str, Any]:
        return {
            "valves": [v.to_json() for v in sorted(self.valves.values(), key=lambda v: v.key)],
            "series": [{"topic": s.topic, "last": list(s.last) if s.last else None}
                       for s in sorted(self.series.values(), key=lambda s: s.topic)],
            "frames": [{"topic": f.topic, "ts": f.ts, "count": f.count,
                        "shape": list(getattr(f.array, "shape", ()))}
                       for f in self.frames.values()],
        }

    def history(self, topic: str, since: float) -> list[list[float]]:
        s = self.series.get(topic)
        if s is None:
            return []
        return [[t, v] for t, v in s.points if t >= since]


def _event_text(kind: str, value: dict[str, Any]) -> str:
    if kind in ("warning", "critical"):
        return str(value.get("message") or f"{value.get('device', '?')}: {kind}")
    if kind == "timeout":
        return f"{value.get('device', '?')}.{value.get('name', '?')}: no reading (timeout)"
    return str(value.get("message") or kind)
