"""What the web dashboard knows about the lab, built from bus messages (issues 8 and 17).

This module is pure: no sockets, no tasks, no clock of its own. The app feeds it every bus
message (:meth:`LabState.on_message`) and asks it what to push to the pages; every method that
depends on time takes ``now``. That keeps the classification rules testable without a bus.

Classification of a message on topic ``<node>.<device>.<signal>`` (docs/web.md, ADR 0071,
0130):

* ``<node>.notifier.heartbeat`` and ``<node>.dashboard.event.heartbeat``: the node's
  heartbeat (health only);
* ``<node>.dashboard.event.{warning,critical,timeout,error}``: an entry of the event log;
* ``<node>.<device>.meta``: the device's metadata (units, held or sampled, description,
  snapshot of its scalar values; ``DevicePublisher.publish_meta``);
* a JSON object with ``state`` and ``locked``: a valve (``ValveBank`` changes, seed 002
  "the valve state change is published on ZMQ");
* ``<device>.event.refused`` (a refused valve actuation) and a furnace ``watchdog`` trip:
  events with a severity;
* a number (or a ``value_update`` / ``{"value": n}`` object holding one): a point of the
  trend series named by the topic; an object of up to 32 numbers (a spectrometer ``scan``
  of detector intensities): one series per field, ``<topic>.<field>``;
* a 2-D array: the latest frame of a camera (kept downsampled to at most
  :data:`MAX_FRAME_SIDE` pixels a side);
* a string, a bool or null: the current value of a status signal (a rotator's state);
* anything else is counted for health and otherwise ignored.

Every series carries what the page needs to show it honestly: its units (from the node
file's ``units``, the dashboard value's own ``units``, or the device metadata), its quantity
(pressures get a log axis), and whether it is *held* (announced on change, so the last value
stands while the node lives) or *sampled* (a reading whose age matters).

Health: a node is ``live`` while heartbeats arrive, ``stale`` after its ``stale_after``
without one, ``disconnected`` after ``disconnect_after`` without any message;
:meth:`LabState.check_health` turns each change into an event. "missed" counts only real
gaps in the sequence numbers after the dashboard joined, never the late join itself.

Every collection is bounded: nodes, valves, series (and points per series, by count and by
time window), status values, frames, device metadata and the event log.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np

#: Health states shown on the page.
LIVE = "live"
STALE = "stale"
DISCONNECTED = "disconnected"

#: Largest record of numbers split into one series per field.
MAX_FIELDS = 32
#: Frames are kept (and served) at most this many pixels a side.
MAX_FRAME_SIDE = 480
#: Longest event text kept (a message from the bus can be any length).
MAX_EVENT_TEXT = 500

#: Usable timestamps: finite and less than TS_MAX (the year 3000 in Unix seconds) from zero
#: either way. A NaN would reach the page as a bare ``NaN`` that JSON.parse rejects, and one
#: absurd time would push every other point of a series out of its window. (Negative times
#: are allowed: this module takes any clock, and tests feed it small made-up ones.)
TS_MAX = 32503680000.0

#: Units that make a series a pressure (log axis, engineering notation) when the metadata
#: names no quantity.
PRESSURE_UNITS = frozenset({"torr", "mbar", "bar", "pa", "hpa", "kpa", "psi", "atm",
                            "mtorr"})

#: Signals that are never plotted or shown as values.
META_SIGNAL = "meta"
REFUSED_SIGNAL = "event.refused"
#: ``<node>.audit``: one event of a node's audit trail (AuditEvent.to_json(), issue 12).
AUDIT_DEVICE = "audit"
#: Audit outcomes and the level of their event: refusals and failures are warnings.
AUDIT_LEVELS = {"done": "control", "failed": "warning", "refused": "warning"}


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
#: Event levels, least to most severe (the page colours by level).
LEVELS = ("info", "control", "warning", "refused", "error", "critical")


@dataclass(frozen=True)
class SignalInfo:
    """What a signal is (device metadata ``signals()``, or the node file's ``units``)."""

    units: str = ""
    quantity: str = ""
    on_change: bool = False
    event: bool = False
    #: False: a number shown as a value, not plotted (a frame count, an integration time).
    trend: bool = True

    @staticmethod
    def from_json(obj: Any) -> SignalInfo:
        if not isinstance(obj, dict):
            return SignalInfo()
        return SignalInfo(units=_text(obj.get("units")), quantity=_text(obj.get("quantity")),
                          on_change=obj.get("on_change") is True, event=obj.get("event") is True,
                          trend=obj.get("trend") is not False)

    def with_units(self, units: str) -> SignalInfo:
        return SignalInfo(units, self.quantity, self.on_change, self.event, self.trend)


def _text(v: Any, limit: int = 64) -> str:
    return v[:limit] if isinstance(v, str) else ""


def quantity_of(info: SignalInfo) -> str:
    if info.quantity:
        return info.quantity
    return "pressure" if info.units.strip().lower() in PRESSURE_UNITS else ""


def match_signal(signals: dict[str, SignalInfo], signal: str) -> SignalInfo | None:
    """The most specific entry for ``signal``: exact, then ``prefix.*`` (longest), then
    ``*``."""
    hit = signals.get(signal)
    if hit is not None:
        return hit
    parts = signal.split(".")
    for n in range(len(parts) - 1, 0, -1):
        hit = signals.get(".".join(parts[:n]) + ".*")
        if hit is not None:
            return hit
    return signals.get("*")


@dataclass
class AlarmRule:
    """``alarms:`` entry of the node file: a series above or below a limit is an alarm."""

    topic: str
    level: str = "warning"
    above: float | None = None
    below: float | None = None

    def matches(self, topic: str) -> bool:
        return topic == self.topic or (self.topic.endswith(".") and
                                       topic.startswith(self.topic))

    def violated(self, v: float) -> bool:
        return (self.above is not None and v > self.above) or (
            self.below is not None and v < self.below)


@dataclass
class NodeHealth:
    """One node as seen on the bus (or expected from the config and not heard yet)."""

    name: str
    source: str = ""
    first_seen: float | None = None
    last_message: float | None = None
    last_heartbeat: float | None = None
    messages: int = 0
    #: Real gaps after the dashboard joined (a late join is not a loss).
    gaps: int = 0
    missed: int = 0
    late_joins: int = 0
    #: Status at the last :meth:`LabState.check_health` (None: not checked yet).
    reported: str | None = None
    #: The warning given and not yet cleared: "" (none), "quiet" (stale or disconnected) or
    #: "never" (not heard since the dashboard started).
    warned: str = ""

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
    node: str
    device: str
    group: str
    title: str
    label: str
    info: SignalInfo = field(default_factory=SignalInfo)
    points: deque[tuple[float, float]] = field(default_factory=deque)
    alarm: str = ""
    #: Topics merged into this one (the same reading under another name).
    aliases: list[str] = field(default_factory=list)

    @property
    def last(self) -> tuple[float, float] | None:
        return self.points[-1] if self.points else None

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "node": self.node, "device": self.device,
                "group": self.group, "title": self.title, "label": self.label,
                "units": self.info.units, "quantity": quantity_of(self.info),
                "held": self.info.on_change, "alarm": self.alarm, "aliases": self.aliases,
                "last": list(self.last) if self.last else None}


@dataclass
class Value:
    """The current value of a status signal (a string, bool or null: a rotator's state)."""

    topic: str
    node: str
    device: str
    signal: str
    value: Any
    ts: float
    held: bool = True
    units: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "node": self.node, "device": self.device,
                "signal": self.signal, "v": self.value, "t": self.ts, "held": self.held,
                "units": self.units}


@dataclass
class Frame:
    """Latest 2-D frame of one topic, downsampled to :data:`MAX_FRAME_SIDE`."""

    topic: str
    ts: float
    array: Any
    count: int = 0
    shape: tuple[int, ...] = ()  # the frame's shape as received

    def to_json(self) -> dict[str, Any]:
        node, device, _ = split_topic(self.topic)
        return {"type": "frame", "topic": self.topic, "node": node, "device": device,
                "ts": self.ts, "count": self.count, "shape": list(self.shape)}


@dataclass
class DeviceMeta:
    node: str
    device: str
    kind: str
    signals: dict[str, SignalInfo]
    describe: dict[str, Any]
    ts: float


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


def is_plain_signal(topic: str) -> bool:
    """False for topics that are never series: heartbeats, dashboard events, metadata and
    refusal events."""
    _, device, signal = split_topic(topic)
    if (device, signal) in (("notifier", "heartbeat"), ("dashboard", "event.heartbeat"),
                            (AUDIT_DEVICE, "")):
        return False
    if device == "dashboard" and signal.startswith("event."):
        return False
    return signal != META_SIGNAL and not signal.endswith(REFUSED_SIGNAL)


def numeric_items(topic: str, value: Any) -> list[tuple[str, float]] | None:
    """The trend points one message holds, ``[(series topic, number)]``, or None when it is
    not a numeric message. Shared by the live path and the recorder's history."""
    if is_valve_value(value):
        return None
    number = as_number(value)
    if number is not None:
        return [(topic, number)]
    if isinstance(value, dict) and 0 < len(value) <= MAX_FIELDS:
        # A record of numbers (a spectrometer scan: {"H1": 1.2e-3, "AX": ...}): one
        # series per field, ``<topic>.<field>``.
        out = []
        for k, v in value.items():
            n = as_number(v)
            if n is None or isinstance(v, dict):
                return None
            out.append((f"{topic}.{k}", n))
        return out
    return None


def group_of(topic: str) -> tuple[str, str, str, str]:
    """``(group key, title, label, device)`` of a series: one plot per device, dashboard
    values by their dashboard device."""
    p = topic.split(".")
    if len(p) >= 5 and p[1] == "dashboard" and p[2] == "value":
        return (f"{p[0]}.dashboard.{p[3]}", f"{p[0]} / {p[3]}", ".".join(p[4:]), p[3])
    if len(p) >= 3:
        return (".".join(p[:2]), f"{p[0]} / {p[1]}", ".".join(p[2:]), p[1])
    return (topic, topic, p[-1], p[1] if len(p) > 1 else "")


def downsample(array: Any, side: int = MAX_FRAME_SIDE) -> Any:
    """A 2-D array at most ``side`` pixels a side (every k-th pixel), as its own copy: the
    received buffer (up to the bus's message limit) is not kept alive."""
    a = np.asarray(array)
    k = max(1, math.ceil(max(a.shape) / side))
    return np.array(a[::k, ::k])



class LabState:
    """See the module docstring. ``push`` items are plain JSON-able dicts with a ``type``."""

    def __init__(self, *, max_points: int = 5000, max_events: int = 500,
                 max_series: int = 200, max_nodes: int = 256, max_valves: int = 1024,
                 max_values: int = 2000, max_frames: int = 16, max_devices: int = 512,
                 window: float = 600.0,
                 layout: dict[str, dict[str, dict[str, Any]]] | None = None,
                 started: float = 0.0, stale_after: float = 10.0,
                 disconnect_after: float = 30.0,
                 node_limits: dict[str, tuple[float, float]] | None = None,
                 units: dict[str, str] | None = None, alarms: list[AlarmRule] | None = None,
                 hide: list[str] | None = None) -> None:
        self.max_points = max_points
        self.max_events = max_events
        self.max_series = max_series
        self.max_nodes = max_nodes
        self.max_valves = max_valves
        self.max_values = max_values
        self.max_frames = max_frames
        self.max_devices = max_devices
        self.window = window
        #: ``{node: {valve: {"x":.., "y":.., "to": [...]}}}`` (schematic hints).
        self.layout = layout or {}
        self.started = started
        self.stale_after = stale_after
        self.disconnect_after = disconnect_after
        #: ``{node: (stale_after, disconnect_after)}`` overrides.
        self.node_limits = node_limits or {}
        #: ``{topic or prefix ending in '.': units}`` from the node file.
        self.units = units or {}
        self.alarms = alarms or []
        self.hide = hide or []
        self.nodes: dict[str, NodeHealth] = {}
        self.valves: dict[str, Valve] = {}
        self.series: dict[str, Series] = {}
        self.values: dict[str, Value] = {}
        self.frames: dict[str, Frame] = {}
        self.meta: dict[tuple[str, str], DeviceMeta] = {}
        #: Units a dashboard value carried (``value_update.units``), by topic.
        self.value_units: dict[str, str] = {}
        #: Topic -> the series it was merged into (the same reading under two names).
        self.aliases: dict[str, str] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._alarmed: dict[tuple[int, str], bool] = {}
        self.dropped = {"series": 0, "nodes": 0, "valves": 0, "values": 0, "frames": 0,
                        "devices": 0}
        self.ignored = 0

    @property
    def dropped_series(self) -> int:
        return self.dropped["series"]

    # -- nodes ------------------------------------------------------------------------------
    def node(self, name: str, source: str = "") -> NodeHealth | None:
        """The node's health record (created on first sight), or None beyond ``max_nodes``."""
        n = self.nodes.get(name)
        if n is None:
            if len(self.nodes) >= self.max_nodes:
                self.dropped["nodes"] += 1
                return None
            n = self.nodes[name] = NodeHealth(name, source)
        elif source and not n.source:
            n.source = source
        return n

    def limits(self, node: str) -> tuple[float, float]:
        return self.node_limits.get(node, (self.stale_after, self.disconnect_after))

    def status(self, node: str, now: float) -> str:
        n = self.nodes.get(node)
        if n is None:
            return DISCONNECTED
        stale, disc = self.limits(node)
        return n.status(now, stale, disc, self.started)

    # -- valves -----------------------------------------------------------------------------
    def valve(self, node: str, name: str, device: str = "") -> Valve | None:
        key = f"{node}/{name}"
        v = self.valves.get(key)
        if v is None:
            if len(self.valves) >= self.max_valves:
                self.dropped["valves"] += 1
                return None
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
        if v is None:
            return None
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
                   source: str = "", gap: Any = None) -> list[dict[str, Any]]:
        """Fold one bus message in; returns what to push to the pages.

        ``ts`` is the source's timestamp (plots, valve times); ``received`` is the local receive
        time (health: a node whose clock is off must not look stale). Default: ``ts``. A ``ts``
        that is not a plausible time (NaN, infinite, absurd) is replaced by ``received``; with
        neither, the message is ignored. ``gap`` is the sequence gap detected just before this
        message (a :class:`~labbridge.protocol.telemetry.sequence.Gap`), if any.
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
        if n is None:
            return []
        if n.first_seen is None:
            n.first_seen = rx
        n.last_message = rx
        n.messages += 1
        if gap is not None:
            if getattr(gap, "late_join", False):
                n.late_joins += 1
            else:
                n.gaps += 1
                n.missed += int(getattr(gap, "missed", 0) or 0)
        if (device, signal) in (("notifier", "heartbeat"), ("dashboard", "event.heartbeat")):
            n.last_heartbeat = rx
            return []
        if device == AUDIT_DEVICE and not signal:
            return self.on_audit(node_name, value, ts)
        if device == "dashboard" and signal.startswith("event."):
            kind = signal[len("event."):]
            level = EVENT_LEVELS.get(kind)
            if level is None or not isinstance(value, dict):
                return []
            return [self.add_event(level, node_name, _event_text(kind, value),
                                   timestamp(value.get("ts") or ts, ts), kind=kind,
                                   device=str(value.get("device") or ""))]
        if signal == META_SIGNAL:
            return self.set_meta(node_name, device, value, ts)
        if is_valve_value(value):
            return [p for p in [self.set_valve(
                node_name, signal, device=device, state=bool(value["state"]),
                locked=bool(value["locked"]), owner=str(value.get("owner") or ""), ts=ts)]
                if p is not None]
        if signal == REFUSED_SIGNAL and isinstance(value, dict):
            return [self.add_event("warning", node_name, _refusal_text(device, value), ts,
                                   kind="refused", device=device)]
        info = self.signal_info(topic)
        if signal == "watchdog" and isinstance(value, dict) and value.get("tripped"):
            return [self.add_event("critical", node_name, _watchdog_text(device, value), ts,
                                   kind="watchdog", device=device)]
        if info.event:
            return [self.add_event("info", node_name, f"{device} {signal}: {_short(value)}",
                                   ts, kind="device", device=device)]
        if device == "dashboard" and signal.startswith("value.") and isinstance(value, dict):
            units = _text(value.get("units"))
            if units and self.value_units.get(topic) != units and (
                    topic in self.value_units or len(self.value_units) < 4 * self.max_series):
                self.value_units[topic] = units
        items = numeric_items(topic, value)
        if items is not None:
            out: list[dict[str, Any]] = []
            for t, v in items:
                if t == topic and not info.trend:
                    out += self.set_value(t, v, ts)
                else:
                    out += self.add_point(t, ts, v)
            return out
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) == 2 and 0 not in shape:
            return self.set_frame(topic, ts, value)
        if value is None or isinstance(value, str | bool):
            return self.set_value(topic, value, ts)
        self.ignored += 1
        return []

    # -- metadata ---------------------------------------------------------------------------
    def signal_info(self, topic: str) -> SignalInfo:
        """What a series or value topic is: node-file units first, then the dashboard
        value's own units, then the device's metadata."""
        node, device, signal = split_topic(topic)
        meta = self.meta.get((node, device))
        info = (match_signal(meta.signals, signal) if meta else None) or SignalInfo()
        units = self.value_units.get(topic) or info.units
        for key, u in self.units.items():
            if topic == key or (key.endswith(".") and topic.startswith(key)):
                units = u
                break
        return info.with_units(units) if units != info.units else info

    def set_meta(self, node: str, device: str, value: Any, ts: float) -> list[dict[str, Any]]:
        """A device's metadata: units and meaning of its signals; valves and gauges it has
        (so a gauge never read still appears); its held values now."""
        if not isinstance(value, dict) or not isinstance(value.get("signals", {}), dict):
            self.ignored += 1
            return []
        key = (node, device)
        if key not in self.meta and len(self.meta) >= self.max_devices:
            self.dropped["devices"] += 1
            return []
        describe = _dict(value.get("describe"))
        signals = {str(k): SignalInfo.from_json(v)
                   for k, v in list(_dict(value.get("signals")).items())[:256]}
        self.meta[key] = DeviceMeta(node, device, _text(value.get("kind")), signals,
                                    describe, ts)
        out: list[dict[str, Any]] = []
        prefix = f"{node}.{device}."
        for s in list(self.series.values()):  # units may have arrived after the points
            if s.topic.startswith(prefix) and not s.aliases and s.topic not in self.aliases:
                new = self.signal_info(s.topic)
                if not new.trend:  # a count, not a measurement: a value, not a plot
                    del self.series[s.topic]
                    out.append({"type": "unseries", "topic": s.topic})
                    if s.last is not None:
                        out += self.set_value(s.topic, s.last[1], s.last[0])
                elif new != s.info:
                    s.info = new
                    out.append({"type": "series", "series": s.to_json()})
        for v in _list(describe.get("valves")):
            if not isinstance(v, dict) or not isinstance(v.get("name"), str):
                continue
            valve = self.valve(node, v["name"], device)
            if valve is None:
                continue
            changed = False
            if isinstance(v.get("description"), str) and not valve.description:
                valve.description = v["description"][:200]
                changed = True
            if valve.layout is None and isinstance(v.get("layout"), dict):
                valve.layout = _layout_hint(v["layout"])
                changed = valve.layout is not None or changed
            if changed:
                out.append({"type": "valve", "valve": valve.to_json()})
        for g in _list(describe.get("gauges"))[:64]:
            if isinstance(g, str):
                out += self.ensure_series(f"{prefix}{g}")
        for d in _list(describe.get("detectors"))[:MAX_FIELDS]:
            if isinstance(d, str):
                out += self.ensure_series(f"{prefix}scan.{d}")
        for sig, v in list(_dict(value.get("snapshot")).items())[:256]:
            sig = str(sig)
            info = match_signal(signals, sig)
            if info is None or not info.on_change or info.event:
                continue  # a sample's last value is not current: only held values count
            topic = f"{prefix}{sig}"
            if not is_plain_signal(topic) or is_valve_value(v):
                continue
            number = as_number(v)
            if number is not None and not info.trend:
                cur = self.values.get(topic)
                if cur is None or cur.value != number:
                    out += self.set_value(topic, number, ts)
            elif number is not None:
                held = self.series.get(topic)
                if held is None or held.last is None or held.last[1] != number:
                    out += self.add_point(topic, ts, number)
            elif v is None or isinstance(v, str | bool):
                cur = self.values.get(topic)
                if cur is None or cur.value != v:
                    out += self.set_value(topic, v, ts)
        return out

    # -- series -----------------------------------------------------------------------------
    def hidden(self, topic: str) -> bool:
        return any(topic == h or (h.endswith(".") and topic.startswith(h)) for h in self.hide)

    def ensure_series(self, topic: str) -> list[dict[str, Any]]:
        """Create the series (no points yet) when allowed; returns its push item if new."""
        if topic in self.series or topic in self.aliases or self.hidden(topic):
            return []
        if len(self.series) >= self.max_series:
            self.dropped["series"] += 1
            return []
        node, device, _ = split_topic(topic)
        group, title, label, dev = group_of(topic)
        s = self.series[topic] = Series(topic, node, dev or device, group, title, label,
                                        self.signal_info(topic),
                                        deque(maxlen=self.max_points))
        return [{"type": "series", "series": s.to_json()}]

    def add_point(self, topic: str, t: float, v: float) -> list[dict[str, Any]]:
        target = self.aliases.get(topic)
        if target is not None:  # the same reading under another name: already drawn
            return []
        out = self.ensure_series(topic)
        s = self.series.get(topic)
        if s is None:
            return out
        s.points.append((t, v))
        # Keep the window bounded in time too (the deque bounds it in count).
        limit = t - self.window
        while s.points and s.points[0][0] < limit:
            s.points.popleft()
        out.append({"type": "point", "topic": topic, "t": t, "v": v})
        out += self._check_alarms(s, t, v)
        out += self._dedupe(s)
        return out

    def _dedupe(self, s: Series) -> list[dict[str, Any]]:
        """A dashboard value (``<node>.dashboard.value.<Dev>.<name>``) that reads a device
        of its own node publishes the same reading the device announced
        (``<node>.<device>.<name>``): draw it once, under the device's name. The two are
        taken for one when the names match and the last values are identical."""
        node, device, signal = split_topic(s.topic)
        value_series: Series | None
        device_series: Series | None
        if device == "dashboard" and signal.startswith("value."):
            name = signal.split(".")[-1]
            candidates = [o for o in self.series.values()
                          if o.node == node and not o.topic.startswith(f"{node}.dashboard.")
                          and o.label == name and o.last is not None]
            value_series, device_series = s, candidates[0] if len(candidates) == 1 else None
        else:
            suffix = f".{signal}"
            candidates = [o for o in self.series.values()
                          if o.node == node and o.topic.startswith(f"{node}.dashboard.value.")
                          and o.topic.endswith(suffix) and o.last is not None]
            value_series, device_series = (candidates[0] if len(candidates) == 1 else None), s
        if value_series is None or device_series is None or value_series is device_series:
            return []
        assert value_series.last is not None and device_series.last is not None
        if value_series.last[1] != device_series.last[1] or len(self.aliases) >= self.max_series:
            return []
        self.aliases[value_series.topic] = device_series.topic
        self.series.pop(value_series.topic, None)
        device_series.aliases.append(value_series.topic)
        if not device_series.info.units and value_series.info.units:
            device_series.info = device_series.info.with_units(value_series.info.units)
        return [{"type": "alias", "topic": value_series.topic, "into": device_series.topic},
                {"type": "series", "series": device_series.to_json()}]

    def _check_alarms(self, s: Series, t: float, v: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        level = ""
        for i, rule in enumerate(self.alarms):
            if not rule.matches(s.topic):
                continue
            bad = rule.violated(v)
            key = (i, s.topic)
            was = self._alarmed.get(key, False)
            if bad:
                level = _worse(level, rule.level)
            if bad != was:
                self._alarmed[key] = bad
                what = f"{s.title} {s.label} = {_fmt(v, s.info)}"
                limit = ", ".join(
                    x for x in (f"above {_fmt(rule.above, s.info)}" if rule.above is not None
                                else "",
                                f"below {_fmt(rule.below, s.info)}" if rule.below is not None
                                else "") if x)
                if bad:
                    text = f"{what}: alarm ({limit})"
                    out.append(self.add_event(rule.level, s.node, text, t, kind="alarm",
                                              topic=s.topic))
                else:
                    out.append(self.add_event("info", s.node, f"{what}: back within limits",
                                              t, kind="alarm", topic=s.topic))
        if level != s.alarm:
            s.alarm = level
            out.append({"type": "series", "series": s.to_json()})
        return out

    # -- values and frames ------------------------------------------------------------------
    def set_value(self, topic: str, value: Any, ts: float) -> list[dict[str, Any]]:
        if not is_plain_signal(topic) or self.hidden(topic):
            return []
        v = self.values.get(topic)
        if v is None:
            if len(self.values) >= self.max_values:
                self.dropped["values"] += 1
                return []
            node, device, signal = split_topic(topic)
            v = self.values[topic] = Value(topic, node, device, signal, None, ts)
        if isinstance(value, str):
            value = value[:200]
        info = self.signal_info(topic)
        v.value, v.ts, v.units = value, ts, info.units
        v.held = info.on_change or isinstance(value, str | bool)
        return [{"type": "value", "value": v.to_json()}]

    def set_frame(self, topic: str, ts: float, array: Any) -> list[dict[str, Any]]:
        """Keep the latest 2-D frame of ``topic``, downsampled (only the latest: bounded
        by topic and size)."""
        f = self.frames.get(topic)
        if f is None and len(self.frames) >= self.max_frames:
            self.dropped["frames"] += 1
            return []
        count = (f.count + 1) if f is not None else 1
        shape = tuple(int(x) for x in getattr(array, "shape", ()))
        self.frames[topic] = Frame(topic, ts, downsample(array), count, shape)
        return [self.frames[topic].to_json()]

    def on_audit(self, node: str, value: Any, ts: float) -> list[dict[str, Any]]:
        """One audit event (``AuditEvent.to_json()``) as an event of the log: who did or
        was refused what, and why. Anything else on an audit topic is ignored."""
        if not isinstance(value, dict) or value.get("outcome") not in AUDIT_LEVELS:
            self.ignored += 1
            return []
        outcome = str(value["outcome"])
        f = {k: _text(value.get(k), 200) for k in ("verb", "target", "detail", "who", "role",
                                                    "via", "transport", "reason")}
        what = f"{f['verb']} {f['target']}".strip() or "?"
        if f["detail"]:
            what += f" ({f['detail']})"
        text = f"{outcome}: {what} by {f['who'] or '?'}"
        if f["role"]:
            text += f" as {f['role']}"
        if f["via"] or f["transport"]:
            text += f" via {f['via'] or '?'}/{f['transport'] or '?'}"
        if f["reason"]:
            text += f": {f['reason']}"
        return [self.add_event(AUDIT_LEVELS[outcome], node, text,
                               timestamp(value.get("ts"), ts), kind="audit", outcome=outcome,
                               who=f["who"], verb=f["verb"], target=f["target"],
                               reason=f["reason"])]

    def add_event(self, level: str, node: str, text: str, ts: float,
                  **extra: Any) -> dict[str, Any]:
        if len(text) > MAX_EVENT_TEXT:
            text = text[:MAX_EVENT_TEXT - 3] + "..."
        ev = {"level": level, "node": node[:200], "text": text, "ts": ts, **extra}
        self.events.append(ev)
        return {"type": "event", "event": ev}

    # -- health -----------------------------------------------------------------------------
    def expect(self, node: str) -> None:
        """A node the dashboard knows from its config (a command server): shown and
        watched before it is heard."""
        self.node(node)

    def check_health(self, now: float) -> list[dict[str, Any]]:
        """An event for every node whose status changed since the last check: a node that
        goes quiet warns, one that comes back says so. A node never heard warns once it is
        overdue (not during the first ``stale_after`` after start)."""
        out: list[dict[str, Any]] = []
        for n in self.nodes.values():
            status = self.status(n.name, now)
            before, n.reported = n.reported, status
            if status == before:
                continue
            stale, disc = self.limits(n.name)
            age = n.age(now)
            if n.first_seen is None:
                if status == DISCONNECTED:
                    n.warned = "never"
                    out.append(self.add_event(
                        "warning", n.name, f"{n.name}: nothing heard since the dashboard "
                        f"started {now - self.started:.0f} s ago", now, kind="health",
                        status=status))
                continue
            if status in (STALE, DISCONNECTED):
                n.warned = "quiet"
            if status == STALE:
                out.append(self.add_event(
                    "warning", n.name, f"{n.name} is stale: no heartbeat for {age:.1f} s "
                    f"(limit {stale:g} s); its values are greyed", now, kind="health",
                    status=status))
            elif status == DISCONNECTED:
                quiet = now - (n.last_message or now)
                out.append(self.add_event(
                    "warning", n.name, f"{n.name} is disconnected: nothing heard for "
                    f"{quiet:.1f} s (limit {disc:g} s)", now, kind="health", status=status))
            elif n.warned:
                text = f"{n.name} is live" + (" again" if n.warned == "quiet" else "")
                n.warned = ""
                out.append(self.add_event("info", n.name, text, now, kind="health",
                                          status=status))
        return out

    # -- views ------------------------------------------------------------------------------
    def health(self, now: float) -> list[dict[str, Any]]:
        out = []
        for n in sorted(self.nodes.values(), key=lambda n: n.name):
            stale, disc = self.limits(n.name)
            age = n.age(now)
            out.append({"node": n.name, "source": n.source,
                        "status": n.status(now, stale, disc, self.started),
                        "heartbeat_age": None if age is None else round(age, 3),
                        "last_message": n.last_message, "messages": n.messages,
                        "gaps": n.gaps, "missed": n.missed, "late_joins": n.late_joins,
                        "stale_after": stale, "disconnect_after": disc})
        return out

    def devices(self) -> dict[str, Any]:
        return {
            "valves": [v.to_json() for v in sorted(self.valves.values(), key=lambda v: v.key)],
            "series": [s.to_json() for s in sorted(self.series.values(), key=lambda s: s.topic)],
            "values": [v.to_json() for v in sorted(self.values.values(), key=lambda v: v.topic)],
            "frames": [f.to_json() for f in self.frames.values()],
            "meta": [{"node": m.node, "device": m.device, "kind": m.kind}
                     for m in sorted(self.meta.values(), key=lambda m: (m.node, m.device))],
            "aliases": dict(self.aliases),
        }

    def history(self, topic: str, since: float) -> list[list[float]]:
        s = self.series.get(self.aliases.get(topic, topic))
        if s is None:
            return []
        return [[t, v] for t, v in s.points if t >= since]


def _worse(a: str, b: str) -> str:
    rank = {lv: i for i, lv in enumerate(LEVELS)}
    return a if rank.get(a, -1) >= rank.get(b, -1) else b


def _fmt(v: float | None, info: SignalInfo) -> str:
    if v is None:
        return "?"
    text = f"{v:.3g}"
    return f"{text} {info.units}" if info.units else text


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _layout_hint(raw: dict[str, Any]) -> dict[str, Any] | None:
    x, y = as_number(raw.get("x")), as_number(raw.get("y"))
    if x is None or y is None:
        return None
    return {"x": x, "y": y, "to": [str(t) for t in _list(raw.get("to"))[:16]]}


def _event_text(kind: str, value: dict[str, Any]) -> str:
    if kind in ("warning", "critical"):
        return str(value.get("message") or f"{value.get('device', '?')}: {kind}")
    if kind == "timeout":
        return f"{value.get('device', '?')}.{value.get('name', '?')}: no reading (timeout)"
    return str(value.get("message") or kind)


def _refusal_text(device: str, value: dict[str, Any]) -> str:
    text = (f"{value.get('action', '?')} {value.get('valve', '?')} refused by {device}: "
            f"{value.get('reason') or 'no reason given'}")
    if value.get("requester"):
        text += f" (asked by {value['requester']})"
    return text[:300]


def _watchdog_text(device: str, value: dict[str, Any]) -> str:
    silence = as_number(value.get("silence"))
    prev, safe = as_number(value.get("previous_setpoint")), as_number(value.get("setpoint"))
    text = f"{device} watchdog tripped"
    if silence is not None:
        text += f": no client for {silence:.1f} s"
    if safe is not None:
        text += f"; setpoint {'?' if prev is None else f'{prev:g}'} -> safe {safe:g}"
    return text
