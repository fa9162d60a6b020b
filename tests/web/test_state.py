"""LabState classification, units, staleness, alarms, dedupe, health and bounds, and the app's
pure helpers (no sockets)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import pytest

from labbridge.protocol.telemetry.sequence import Gap
from labbridge.web.app import _coalesce, _decimate, png_gray
from labbridge.web.pages import ADMIT, EVICT, REFUSE, Page, Slots
from labbridge.web.state import (
    DISCONNECTED,
    LIVE,
    MAX_FRAME_SIDE,
    STALE,
    AlarmRule,
    LabState,
    as_number,
)


def of(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [it for it in items if it["type"] == kind]


GAUGE_META = {"kind": "gauge_controller", "signals": {"*": {"units": "torr",
                                                           "quantity": "pressure"}},
              "describe": {"gauges": ["IG", "CG1"]}, "snapshot": {"IG": 1e-9, "CG1": None}}
FURNACE_META = {"kind": "furnace",
                "signals": {"temperature": {"units": "°C", "quantity": "temperature"},
                            "setpoint": {"units": "°C", "on_change": True},
                            "output": {"units": "%"}, "pid": {"on_change": True,
                                                             "trend": False},
                            "watchdog": {"event": True}},
                "snapshot": {"temperature": 400.0, "setpoint": 450.0, "output": 12.0,
                             "pid": "1,2,3"}}


def test_valve_change_becomes_a_valve_push_and_repeats_are_quiet():
    st = LabState(layout={"vc": {"A": {"x": 0, "y": 1}}})
    v = {"state": True, "locked": False, "owner": "bob"}
    (item,) = st.on_message("vc.valves.A", v, 10.0)
    assert item["type"] == "valve"
    assert item["valve"] == {"key": "vc/A", "node": "vc", "device": "valves", "name": "A",
                             "state": "open", "locked": False, "owner": "bob", "ts": 10.0,
                             "known": True, "description": "",
                             "layout": {"x": 0, "y": 1}}
    assert st.on_message("vc.valves.A", v, 11.0) == []  # nothing visible changed
    (item,) = st.on_message("vc.valves.A", {**v, "locked": True}, 12.0)
    assert item["valve"]["locked"] is True


def test_numbers_are_points_heartbeats_are_health_events_are_logged():
    st = LabState()
    items = st.on_message("fc.furnace.temperature", 512.5, 1.0)
    assert of(items, "point") == [
        {"type": "point", "topic": "fc.furnace.temperature", "t": 1.0, "v": 512.5}]
    (s,) = of(items, "series")  # a new series is announced with what it is
    assert s["series"]["group"] == "fc.furnace" and s["series"]["label"] == "temperature"
    (p,) = of(st.on_message("dash.dashboard.value.Gauge.pressure",
                            {"kind": "value_update", "value": 2e-9, "units": "torr",
                             "ts": 2.0}, 2.0), "point")
    assert p["v"] == 2e-9
    # the dashboard value's own units, and the quantity they imply
    assert st.series["dash.dashboard.value.Gauge.pressure"].to_json()["units"] == "torr"
    assert st.series["dash.dashboard.value.Gauge.pressure"].to_json()["quantity"] == \
        "pressure"
    assert st.on_message("fc.notifier.heartbeat", {"kind": "heartbeat"}, 3.0) == []
    assert st.nodes["fc"].last_heartbeat == 3.0
    (ev,) = st.on_message("dash.dashboard.event.critical",
                          {"kind": "critical", "message": "Gauge.pressure.x>1 is True",
                           "device": "Gauge", "script": "", "ts": 4.0}, 4.0)
    assert ev["event"]["level"] == "critical"
    assert "is True" in ev["event"]["text"]
    assert st.on_message("dash.dashboard.event.value_update", {"kind": "x"}, 5.0) == []
    # Booleans and strings are status values, not trends; NaN is not plottable.
    (v,) = st.on_message("fc.furnace.di.h2o", True, 5.0)
    assert v["type"] == "value" and v["value"]["v"] is True
    assert st.on_message("fc.furnace.temperature", float("nan"), 5.0) == []
    assert st.on_message("", 1.0, 5.0) == []
    assert as_number({"value": 3}) == 3.0 and as_number({"state": 1}) is None


def test_metadata_gives_units_held_values_and_every_gauge():
    st = LabState()
    st.on_message("vc.gauges.IG", 2e-9, 1.0)
    assert st.series["vc.gauges.IG"].info.units == ""  # not known yet
    items = st.on_message("vc.gauges.meta", GAUGE_META, 2.0)
    # the series already drawn gets its units; the gauge never read appears too
    updated = {it["series"]["topic"]: it["series"] for it in of(items, "series")}
    assert updated["vc.gauges.IG"]["units"] == "torr"
    assert updated["vc.gauges.IG"]["quantity"] == "pressure"
    assert updated["vc.gauges.CG1"]["last"] is None
    # a gauge's last reading is a sample: the snapshot does not make it current again
    assert of(items, "point") == []
    items = st.on_message("fc.furnace.meta", FURNACE_META, 3.0)
    # held values are current: the setpoint is plotted, the PID text is a value
    assert of(items, "point") == [{"type": "point", "topic": "fc.furnace.setpoint",
                                   "t": 3.0, "v": 450.0}]
    assert of(items, "value")[0]["value"]["v"] == "1,2,3"
    sp = st.series["fc.furnace.setpoint"].to_json()
    assert sp["units"] == "°C" and sp["held"] is True
    (_p,) = of(st.on_message("fc.furnace.output", 20.0, 4.0), "point")
    assert st.series["fc.furnace.output"].to_json()["units"] == "%"
    assert st.series["fc.furnace.output"].to_json()["held"] is False
    # a count announced before the metadata said so is moved from the plots to the values
    st.on_message("cam.camera.frames", 3, 1.0)
    items = st.on_message("cam.camera.meta", {"signals": {"frames": {"on_change": True,
                                                                     "trend": False}}}, 2.0)
    assert of(items, "unseries") == [{"type": "unseries", "topic": "cam.camera.frames"}]
    assert "cam.camera.frames" not in st.series and st.values["cam.camera.frames"].value == 3
    assert of(st.on_message("cam.camera.frames", 4, 3.0), "value")
    # the node file's units win over anything else
    st2 = LabState(units={"old.": "mbar"})
    st2.on_message("old.gauge.p", 1e-3, 1.0)
    assert st2.series["old.gauge.p"].to_json()["quantity"] == "pressure"


def test_a_dashboard_value_of_a_device_reading_is_drawn_once():
    """The dashboard server reads the ion gauge: the gauge announces the reading and the
    dashboard publishes it again as a value. One series, under the gauge's name."""
    st = LabState()
    st.on_message("vc.gauges.IG", 2.5e-9, 1.0)
    items = st.on_message("vc.dashboard.value.Line_gauges.IG",
                          {"kind": "value_update", "value": 2.5e-9, "units": "torr"}, 1.01)
    (alias,) = of(items, "alias")
    assert alias == {"type": "alias", "topic": "vc.dashboard.value.Line_gauges.IG",
                     "into": "vc.gauges.IG"}
    assert set(st.series) == {"vc.gauges.IG"}
    assert st.series["vc.gauges.IG"].info.units == "torr"  # the value's units were kept
    assert st.on_message("vc.dashboard.value.Line_gauges.IG", {"value": 3e-9}, 2.0) == []
    # the other order (the dashboard's copy arrives first) ends the same way
    st = LabState()
    st.on_message("vc.dashboard.value.Line_gauges.IG", {"value": 2.5e-9}, 1.0)
    assert of(st.on_message("vc.gauges.IG", 2.5e-9, 1.0), "alias")
    assert set(st.series) == {"vc.gauges.IG"}
    # different readings are different quantities: both stay
    st = LabState()
    st.on_message("vc.gauges.IG", 2.5e-9, 1.0)
    st.on_message("vc.dashboard.value.Line_gauges.IG", {"value": 7.0}, 1.0)
    assert len(st.series) == 2


def test_alarms_refusals_and_watchdog_trips_are_events_with_a_severity():
    st = LabState(alarms=[AlarmRule("vc.gauges.IG", "critical", above=1e-6)])
    st.on_message("vc.gauges.meta", GAUGE_META, 0.5)
    assert of(st.on_message("vc.gauges.IG", 1e-8, 1.0), "event") == []
    (ev,) = of(st.on_message("vc.gauges.IG", 5e-6, 2.0), "event")
    assert ev["event"]["level"] == "critical" and ev["event"]["kind"] == "alarm"
    assert "5e-06 torr" in ev["event"]["text"] and "above 1e-06 torr" in ev["event"]["text"]
    assert st.series["vc.gauges.IG"].alarm == "critical"
    assert of(st.on_message("vc.gauges.IG", 6e-6, 3.0), "event") == []  # still in alarm
    (ok,) = of(st.on_message("vc.gauges.IG", 1e-8, 4.0), "event")
    assert ok["event"]["level"] == "info" and st.series["vc.gauges.IG"].alarm == ""
    (ref,) = st.on_message("vc.valves.event.refused",
                           {"valve": "B", "action": "open", "reason": "interlock: A is open",
                            "requester": "10.0.0.7"}, 5.0)
    assert ref["event"]["level"] == "warning" and ref["event"]["kind"] == "refused"
    assert "open B refused by valves: interlock: A is open" in ref["event"]["text"]
    assert "vc/event.refused" not in st.valves  # never taken for a valve
    (wd,) = st.on_message("fc.furnace.watchdog",
                          {"tripped": True, "silence": 12.3, "previous_setpoint": 600.0,
                           "setpoint": 0.0}, 6.0)
    assert wd["event"]["level"] == "critical"
    assert wd["event"]["text"] == ("furnace watchdog tripped: no client for 12.3 s; "
                                   "setpoint 600 -> safe 0")


def test_a_two_d_array_is_a_camera_frame_kept_small():
    st = LabState()
    (f,) = st.on_message("cam.camera.frame", np.zeros((4, 6), np.uint16), 1.0)
    assert f == {"type": "frame", "topic": "cam.camera.frame", "node": "cam",
                 "device": "camera", "ts": 1.0, "count": 1, "shape": [4, 6]}
    assert st.on_message("cam.camera.frame", np.ones((4, 6)), 2.0)[0]["count"] == 2
    assert st.on_message("spec.spectrometer.trace", np.ones(16), 2.0) == []
    big = np.arange(2000 * 1500, dtype=np.uint16).reshape(1500, 2000)
    (f,) = st.on_message("cam.camera.frame", big, 3.0)
    kept = st.frames["cam.camera.frame"].array
    assert f["shape"] == [1500, 2000] and max(kept.shape) <= MAX_FRAME_SIDE
    assert kept.base is None  # its own copy: the received buffer is not kept alive


def test_health_live_stale_disconnected():
    st = LabState(started=0.0)
    st.on_message("n.notifier.heartbeat", {}, 100.0)
    st.node("quiet")  # expected but never heard

    def status(now: float) -> dict[str, str]:
        return {h["node"]: h["status"] for h in st.health(now)}

    assert status(105.0) == {"n": LIVE, "quiet": DISCONNECTED}
    assert status(111.0)["n"] == STALE
    assert status(131.0)["n"] == DISCONNECTED
    assert st.health(105.0)[0]["heartbeat_age"] == 5.0
    fresh = LabState(started=100.0)
    fresh.node("later")
    assert fresh.health(105.0)[0]["status"] == STALE  # not yet: wait stale_after
    per_node = LabState(started=0.0, node_limits={"slow": (60.0, 120.0)})
    per_node.on_message("slow.notifier.heartbeat", {}, 100.0)
    assert per_node.health(130.0)[0]["status"] == LIVE


def test_health_changes_are_events():
    st = LabState(started=10.0, stale_after=1.0, disconnect_after=3.0)
    st.expect("never")
    st.on_message("n.notifier.heartbeat", {}, 10.0)
    assert st.check_health(10.5) == []  # live; "never" is still within its grace
    evs = {e["event"]["node"]: e["event"] for e in of(st.check_health(11.6), "event")}
    assert evs["n"]["level"] == "warning"
    assert "stale" in evs["n"]["text"] and "limit 1 s" in evs["n"]["text"]
    assert "nothing heard since the dashboard started" in evs["never"]["text"]
    assert st.check_health(11.7) == []  # said once
    (ev,) = of(st.check_health(13.5), "event")
    assert ev["event"]["node"] == "n" and "disconnected" in ev["event"]["text"]
    st.on_message("n.notifier.heartbeat", {}, 14.0)
    (back,) = of(st.check_health(14.1), "event")
    assert back["event"]["level"] == "info" and "live again" in back["event"]["text"]


def test_missed_counts_real_gaps_not_the_late_join():
    st = LabState()
    st.on_message("n.dev.x", 1.0, 1.0, gap=Gap(1, "n.dev.x", 1, 500, 499, True))
    (h,) = st.health(1.0)
    assert h["missed"] == 0 and h["gaps"] == 0 and h["late_joins"] == 1
    st.on_message("n.dev.x", 1.0, 2.0, gap=Gap(1, "n.dev.x", 501, 504, 3, False))
    (h,) = st.health(2.0)
    assert h["missed"] == 3 and h["gaps"] == 1


def test_every_collection_is_bounded():
    st = LabState(max_points=5, max_events=3, max_series=2, window=1000.0, max_nodes=3,
                  max_valves=2, max_values=2, max_frames=1, max_devices=1)
    for i in range(20):
        st.on_message("a.b.c", float(i), float(i))
    assert [p[1] for p in st.series["a.b.c"].points] == [15, 16, 17, 18, 19]
    st.on_message("a.b.d", 1.0, 1.0)
    assert st.on_message("a.b.e", 1.0, 1.0) == []  # beyond max_series
    assert st.dropped_series == 1
    for i in range(10):
        st.add_event("warning", "a", f"w{i}", float(i))
    assert [e["text"] for e in st.events] == ["w7", "w8", "w9"]
    for i in range(5):
        st.on_message(f"node{i}.notifier.heartbeat", {}, 1.0)
        st.on_message(f"a.valves.V{i}", {"state": 1, "locked": 0}, 1.0)
        st.on_message(f"a.rot.s{i}", "ENABLED", 1.0)
        st.on_message(f"a.cam{i}.frame", np.zeros((2, 2)), 1.0)
        st.on_message(f"a.dev{i}.meta", {"signals": {}}, 1.0)
    assert len(st.nodes) == 3 and len(st.valves) == 2 and len(st.values) == 2
    assert len(st.frames) == 1 and len(st.meta) == 1
    assert st.dropped["nodes"] and st.dropped["valves"] and st.dropped["frames"]
    st2 = LabState(window=10.0)
    for t in range(100):
        st2.on_message("a.b.c", 1.0, float(t))
    assert st2.series["a.b.c"].points[0][0] == 89.0  # older than the window: gone
    assert st2.history("a.b.c", 95.0) == [[float(t), 1.0] for t in range(95, 100)]


def test_png_gray_is_a_valid_png():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    png = png_gray(a)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert (length, kind) == (13, b"IHDR")
    w, h, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (w, h, depth, colour) == (4, 3, 8, 0)
    idat_len, idat = struct.unpack(">I4s", png[33:41])
    assert idat == b"IDAT"
    raw = zlib.decompress(png[41:41 + idat_len])
    rows = np.frombuffer(raw, np.uint8).reshape(3, 5)
    assert (rows[:, 0] == 0).all() and rows[0, 1] == 0 and rows[2, 4] == 255
    assert png_gray(np.full((2, 2), 7.0))[:8] == b"\x89PNG\r\n\x1a\n"  # flat: no div by 0
    with pytest.raises(ValueError):
        png_gray(np.zeros(5))


def test_decimate_and_coalesce():
    pts = [[float(i), float(i)] for i in range(1000)]
    d = _decimate(pts, 100)
    assert len(d) <= 100 and d[0] == [0.0, 0.0] and d[-1] == [999.0, 999.0]
    assert _decimate(pts[:10], 100) == pts[:10]
    items = [{"type": "point", "topic": "x", "t": float(i), "v": 0.0} for i in range(25)]
    items.insert(3, {"type": "valve", "valve": {}})
    out = _coalesce(items)
    assert [it["t"] for it in out if it["type"] == "point"] == [float(i) for i in range(15, 25)]
    assert sum(it["type"] == "valve" for it in out) == 1


def test_a_record_of_numbers_is_one_series_per_field():
    st = LabState()
    items = st.on_message("spec.spectrometer.scan", {"H1": 1.5e-3, "AX": 2.0, "L2": 0}, 3.0)
    assert sorted(it["topic"] for it in of(items, "point")) == [
        "spec.spectrometer.scan.AX", "spec.spectrometer.scan.H1", "spec.spectrometer.scan.L2"]
    assert st.series["spec.spectrometer.scan.H1"].last == (3.0, 1.5e-3)
    assert st.series["spec.spectrometer.scan.H1"].label == "scan.H1"
    # Mixed or oversized records are not plotted.
    assert st.on_message("laser.laser.status", {"x": 1.0, "mode": "on"}, 4.0) == []
    assert st.on_message("a.b.c", {f"k{i}": 1.0 for i in range(40)}, 4.0) == []


def test_health_uses_the_receive_time_not_the_source_clock():
    st = LabState(started=0.0)
    # The node's clock is an hour behind; we received its heartbeat just now.
    st.on_message("n.notifier.heartbeat", {}, 1000.0 - 3600.0, received=1000.0)
    (h,) = st.health(1001.0)
    assert h["status"] == LIVE and h["heartbeat_age"] == 1.0
    (p,) = of(st.on_message("n.dev.x", 1.0, 1000.0 - 3600.0, received=1000.5), "point")
    assert p["t"] == 1000.0 - 3600.0  # plots keep the source's time


def _page(peer: str, joined: float, *, proven: bool = True, heard: float | None = None,
          **kw: Any) -> Page:
    p = Page(peer, peer.split(":")[0], joined, **kw)
    p.proven = proven
    p.last_heard = heard if heard is not None else (joined if proven else None)
    return p


def test_a_page_that_cannot_keep_up_is_dropped_not_buffered():
    slow = Page("10.0.0.9:5000", "10.0.0.9", 0.0, max_bytes=100, max_messages=50)
    assert all(slow.offer("x" * 30) for _ in range(3))
    assert not slow.offer("x" * 30) and slow.overflowed  # 120 bytes > 100: dropped
    assert slow.queued_bytes == 90 and not slow.offer("y")
    few = Page("10.0.0.8:5000", "10.0.0.8", 0.0, max_messages=2)
    assert few.offer("a") and few.offer("b") and not few.offer("c")
    assert few.take() == "a" and few.queued_bytes == 1


def test_slots_evict_what_is_not_a_page_then_the_idle_never_an_active_one():
    slots = Slots(max_pages=3, max_per_address=2, idle_after=30.0, stall_after=2.0)
    a = _page("10.0.0.1:1", 0.0, heard=99.0)
    b = _page("10.0.0.2:1", 1.0, heard=99.0)
    c = _page("10.0.0.3:1", 2.0, heard=99.0)
    assert slots.choose([a, b], "10.0.0.4", 100.0) == (ADMIT, None, "")
    verdict, victim, why = slots.choose([a, b, c], "10.0.0.4", 100.0)
    assert verdict == REFUSE and victim is None and "active" in why  # every page active
    silent = _page("10.0.0.5:1", 3.0, proven=False)  # connected, never said hello
    verdict, victim, _ = slots.choose([a, b, silent], "10.0.0.4", 4.0)
    assert (verdict, victim) == (EVICT, silent)
    idle = _page("10.0.0.6:1", 0.0, heard=10.0)  # silent for 90 s > idle_after
    verdict, victim, why = slots.choose([a, b, idle], "10.0.0.4", 100.0)
    assert (verdict, victim) == (EVICT, idle) and "idle" in why
    stuck = _page("10.0.0.7:1", 0.0, heard=99.0)
    stuck.sending_since = 90.0  # a send blocked for 10 s: it does not read
    assert slots.choose([a, b, stuck], "10.0.0.4", 100.0)[1] is stuck
    # the per-address cap: a host pushes out its own most idle page, nobody else's
    own1 = _page("10.0.0.9:1", 0.0, heard=50.0)
    own2 = _page("10.0.0.9:2", 0.0, heard=90.0)
    assert slots.choose([own1, own2], "10.0.0.9", 100.0)[:2] == (EVICT, own1)
