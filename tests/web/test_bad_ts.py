"""One bus message with a broken timestamp (NaN, infinite, absurd) cannot break the dashboard
page: the state falls back to the receive time, and what goes to the page is strict JSON
(the browser's JSON.parse rejects a bare NaN or Infinity)."""

from __future__ import annotations

import json
import math
import time

import aiohttp
import numpy as np
import pytest

from labbridge.bus.publisher import Publisher
from labbridge.web.app import WebConfig, WebDashboard, _dumps
from labbridge.web.state import LabState
from tests.bus.helpers import until_joined

BAD = [math.nan, math.inf, -math.inf, 1e300, -1e300]


def _points(items: list[dict]) -> list[dict]:
    return [it for it in items if it["type"] == "point"]


def _strict(text: str):
    """json.loads as a browser does it: NaN, Infinity and -Infinity are errors."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("ts", BAD)
def test_state_uses_the_receive_time_for_a_bad_source_time(ts):
    st = LabState()
    (p,) = _points(st.on_message("fc.furnace.temperature", 512.5, ts, received=100.0))
    assert p == {"type": "point", "topic": "fc.furnace.temperature", "t": 100.0, "v": 512.5}
    (v,) = st.on_message("vc.valves.A", {"state": True, "locked": False}, ts, received=101.0)
    assert v["valve"]["ts"] == 101.0
    (ev,) = st.on_message("d.dashboard.event.warning", {"message": "hot", "ts": ts}, ts,
                          received=102.0)
    assert ev["event"]["ts"] == 102.0
    assert st.nodes["fc"].last_message == 100.0
    _strict(_dumps({"items": [p, v, ev], "events": list(st.events)}))


@pytest.mark.parametrize("event_ts", [math.nan, "nan", "soon", 10**400, [1], True, -1e20],
                         ids=["nan", "nan-text", "text", "huge-int", "list", "bool", "absurd"])
def test_a_bad_event_time_falls_back_to_the_message_time(event_ts):
    st = LabState()
    (ev,) = st.on_message("d.dashboard.event.critical", {"message": "x", "ts": event_ts},
                          50.0, received=60.0)
    assert ev["event"]["ts"] == 50.0


def test_a_message_without_any_usable_time_is_ignored():
    st = LabState()
    assert st.on_message("fc.furnace.temperature", 1.0, math.nan) == []
    assert st.ignored == 1 and st.series == {}


def test_good_times_are_kept():
    st = LabState()
    (p,) = _points(st.on_message("fc.furnace.t", 1.0, 1_700_000_000.0, received=5.0))
    assert p["t"] == 1_700_000_000.0
    (p,) = _points(st.on_message("fc.furnace.t", 2.0, -3600.0, received=5.0))  # made up
    assert p["t"] == -3600.0
    (ev,) = st.on_message("d.dashboard.event.warning", {"message": "m", "ts": "12.5"}, 13.0)
    assert ev["event"]["ts"] == 12.5


def test_dumps_is_strict_json():
    obj = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": np.float64("nan"),
           "d": np.array([1.0, np.nan]), "e": "NaN", "f": 3}
    assert _strict(_dumps(obj)) == {"a": None, "b": [1.0, None, [None, 2]], "c": None,
                                     "d": [1.0, None], "e": "NaN", "f": 3}
    assert _dumps({"x": 1.5}) == '{"x": 1.5}'


async def test_bad_timestamps_on_the_bus_keep_the_websocket_strict_json():
    pub = Publisher(port=0)
    pub.open()
    dash = WebDashboard(WebConfig(host="127.0.0.1", port=0, subscribe=[pub.url],
                                  push_interval=0.01))
    await dash.start()
    t0 = time.time()
    try:
        async with aiohttp.ClientSession(dash.url) as http, http.ws_connect("/ws") as ws:
            await ws.send_str('{"type": "hello"}')
            hello = _strict((await ws.receive(timeout=10)).data)
            assert hello["type"] == "hello"
            await until_joined(dash.subscribers[0], lambda: pub.publish("n.join.marker", 0))
            for i, ts in enumerate(BAD):
                pub.publish("n.dev.temp", float(i), ts=ts)
                pub.publish("n.valves.A", {"state": bool(i % 2), "locked": False}, ts=ts)
                pub.publish("n.dashboard.event.warning", {"message": f"w{i}", "ts": ts},
                            ts=ts)
            pub.publish("n.dev.done", 1.0, ts=1_700_000_000.0)

            items: list[dict] = []
            while not any(it.get("topic") == "n.dev.done" for it in items):
                msg = _strict((await ws.receive(timeout=10)).data)  # raises on NaN
                if msg["type"] == "batch":
                    items += msg["items"]
            t1 = time.time()
            times = [it["t"] for it in items if it.get("topic") == "n.dev.temp"]
            times += [it["valve"]["ts"] for it in items if it["type"] == "valve"]
            times += [it["event"]["ts"] for it in items if it["type"] == "event"]
            assert len(times) >= len(BAD) + 2  # points (coalesced at most) + valve + events
            assert all(t0 - 1 <= t <= t1 + 1 for t in times), times

            async with http.get("/api/events") as r:
                events = _strict(await r.text())["events"]
            assert [e["text"] for e in events] == [f"w{i}" for i in range(len(BAD))]
            async with http.get("/api/history", params={"topic": "n.dev.temp"}) as r:
                _strict(await r.text())
    finally:
        await dash.stop()
        pub.close()
