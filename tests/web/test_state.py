"""LabState classification, health and bounds, and the app's pure helpers (no sockets)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from labbridge.web.app import _coalesce, _decimate, png_gray
from labbridge.web.state import DISCONNECTED, LIVE, STALE, LabState, as_number


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
    assert st.on_message("fc.furnace.temperature", 512.5, 1.0) == [
        {"type": "point", "topic": "fc.furnace.temperature", "t": 1.0, "v": 512.5}]
    (p,) = st.on_message("dash.dashboard.value.Gauge.pressure",
                         {"kind": "value_update", "value": 2e-9, "ts": 2.0}, 2.0)
    assert p["v"] == 2e-9
    assert st.on_message("fc.notifier.heartbeat", {"kind": "heartbeat"}, 3.0) == []
    assert st.nodes["fc"].last_heartbeat == 3.0
    (ev,) = st.on_message("dash.dashboard.event.critical",
                          {"kind": "critical", "message": "Gauge.pressure.x>1 is True",
                           "device": "Gauge", "script": "", "ts": 4.0}, 4.0)
    assert ev["event"]["level"] == "critical"
    assert "is True" in ev["event"]["text"]
    assert st.on_message("dash.dashboard.event.value_update", {"kind": "x"}, 5.0) == []
    # Booleans are states, not trends; NaN is not plottable; bare names are ignored.
    assert st.on_message("fc.furnace.di.h2o", True, 5.0) == []
    assert st.on_message("fc.furnace.temperature", float("nan"), 5.0) == []
    assert st.on_message("", 1.0, 5.0) == []
    assert as_number({"value": 3}) == 3.0 and as_number({"state": 1}) is None


def test_a_two_d_array_is_a_camera_frame():
    st = LabState()
    (f,) = st.on_message("cam.camera.frame", np.zeros((4, 6), np.uint16), 1.0)
    assert f == {"type": "frame", "topic": "cam.camera.frame", "ts": 1.0, "count": 1,
                 "shape": [4, 6]}
    assert st.on_message("cam.camera.frame", np.ones((4, 6)), 2.0)[0]["count"] == 2
    assert st.on_message("spec.spectrometer.trace", np.ones(16), 2.0) == []


def test_health_live_stale_disconnected():
    st = LabState(started=0.0)
    st.on_message("n.notifier.heartbeat", {}, 100.0)
    st.node("quiet")  # expected but never heard

    def status(now: float) -> dict[str, str]:
        return {h["node"]: h["status"] for h in st.health(now, 10.0, 30.0)}

    assert status(105.0) == {"n": LIVE, "quiet": DISCONNECTED}
    assert status(111.0)["n"] == STALE
    assert status(131.0)["n"] == DISCONNECTED
    assert st.health(105.0, 10.0, 30.0)[0]["heartbeat_age"] == 5.0
    fresh = LabState(started=100.0)
    fresh.node("later")
    assert fresh.health(105.0, 10.0, 30.0)[0]["status"] == STALE  # not yet: wait stale_after


def test_every_collection_is_bounded():
    st = LabState(max_points=5, max_events=3, max_series=2, window=1000.0)
    for i in range(20):
        st.on_message("a.b.c", float(i), float(i))
    assert [p[1] for p in st.series["a.b.c"].points] == [15, 16, 17, 18, 19]
    st.on_message("a.b.d", 1.0, 1.0)
    assert st.on_message("a.b.e", 1.0, 1.0) == []  # beyond max_series
    assert st.dropped_series == 1
    for i in range(10):
        st.add_event("warning", "a", f"w{i}", float(i))
    assert [e["text"] for e in st.events] == ["w7", "w8", "w9"]
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
    assert sorted(it["topic"] for it in items) == [
        "spec.spectrometer.scan.AX", "spec.spectrometer.scan.H1", "spec.spectrometer.scan.L2"]
    assert st.series["spec.spectrometer.scan.H1"].last == (3.0, 1.5e-3)
    # Mixed or oversized records are not plotted.
    assert st.on_message("laser.laser.status", {"x": 1.0, "mode": "on"}, 4.0) == []
    assert st.on_message("a.b.c", {f"k{i}": 1.0 for i in range(40)}, 4.0) == []


def test_health_uses_the_receive_time_not_the_source_clock():
    st = LabState(started=0.0)
    # The node's clock is an hour behind; we received its heartbeat just now.
    st.on_message("n.notifier.heartbeat", {}, 1000.0 - 3600.0, received=1000.0)
    (h,) = st.health(1001.0, 10.0, 30.0)
    assert h["status"] == LIVE and h["heartbeat_age"] == 1.0
    (p,) = st.on_message("n.dev.x", 1.0, 1000.0 - 3600.0, received=1000.5)
    assert p["t"] == 1000.0 - 3600.0  # plots keep the source's time


def test_a_page_that_cannot_keep_up_is_dropped_not_buffered():
    from labbridge.web.app import WebConfig, WebDashboard, _Page

    class Transport:
        aborted = 0

        def get_extra_info(self, name: str) -> None:
            return None

        def abort(self) -> None:
            self.aborted += 1

    dash = WebDashboard(WebConfig(client_queue=3))
    transport = Transport()
    slow = _Page(ws=None, peer="10.0.0.9:5000", size=3,  # type: ignore[arg-type]
                 transport=transport)  # type: ignore[arg-type]
    fast = _Page(ws=None, peer="10.0.0.8:5000", size=100)  # type: ignore[arg-type]
    dash.pages.update({slow, fast})
    for i in range(10):
        dash._broadcast(f"m{i}")
    # The stale backlog is thrown away and the connection reset at once (ADR 0164); the
    # sender ends when it gets the None.
    assert slow.overflowed and transport.aborted == 1
    assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is None
    assert fast.queue.qsize() == 10 and not fast.overflowed
