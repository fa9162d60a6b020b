"""The dashboard's HTTP API and WebSocket against the simulated lab (no browser): JSON shapes,
history from the recorder, control off by default / on with the client's address logged, bad
requests answered clearly, and the pushed valve change on the WebSocket."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.remote import RemoteValves
from tests.web.lab import OPERATOR, http_session, login, start_lab


@pytest.fixture
async def lab(tmp_path):
    lab = await start_lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.stop()


@pytest.fixture
async def viewer(tmp_path):
    """The same lab with the dashboard's control left off."""
    lab = await start_lab(tmp_path, control=False)
    try:
        yield lab
    finally:
        await lab.stop()


async def _until(pred, timeout: float = 5.0) -> None:
    """Poll ``pred`` (an HTTP-visible condition: no event reaches the test) with a deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_nodes_devices_config(lab):
    async with aiohttp.ClientSession(lab.url) as http:
        cfg = await (await http.get("/api/config")).json()
        assert cfg["control"] is True and cfg["stale_after"] == 0.6
        assert cfg["command_nodes"] == ["furnace-controller", "valve-controller"]

        async def both_live() -> bool:
            nodes = (await (await http.get("/api/nodes")).json())["nodes"]
            return {n["node"]: n["status"] for n in nodes} == {
                "valve-controller": "live", "furnace-controller": "live"}

        await _until(both_live)

        async def valves_read() -> bool:
            d = await (await http.get("/api/devices")).json()
            return len(d["valves"]) == 4 and all(v["known"] and v["description"]
                                                 for v in d["valves"])

        await _until(valves_read)  # states from the command server, the rest from metadata
        d = await (await http.get("/api/devices")).json()
        a = next(v for v in d["valves"] if v["name"] == "A")
        assert a["state"] == "closed" and a["description"] == "sample inlet"
        assert a["layout"] == {"x": 0.0, "y": 0.0, "to": []}  # the valve node's own hint
        assert cfg["schematic"]["valve-controller"]["pipes"][0] == [
            "sample", "A", "B", "C", "pipette"]
        # every gauge, read or not, with its units
        series = {s["topic"]: s for s in d["series"]}
        assert series["valve-controller.gauges.CG1"]["units"] == "torr"
        page = await (await http.get("/")).text()
        assert "/static/app.js" in page and "http://" not in page.replace(
            "http://www.w3.org", "")  # every asset is local: no CDN
        for asset in ("app.js", "plot.js", "style.css"):
            assert (await http.get(f"/static/{asset}")).status == 200


async def test_history_comes_from_the_recorder(lab):
    topic = "valve-controller.gauges.IG"
    async with aiohttp.ClientSession(lab.url) as http:
        async def recorded() -> bool:
            h = await (await http.get("/api/history", params={"topic": topic})).json()
            return h["source"] == "recorder" and len(h["points"]) >= 3

        await _until(recorded)
        h = await (await http.get("/api/history", params={"topic": topic, "minutes": "1",
                                                          "max_points": "2"})).json()
        assert 1 <= len(h["points"]) <= 3 and 1e-9 < h["points"][-1][1] < 1e-7
        # every series at once, thinned, by the series' names
        every = await (await http.get("/api/history", params={"minutes": "1"})).json()
        assert every["source"] == "recorder" and topic in every["series"]
        # the dashboard server's copy of the reading is not a second series
        assert "valve-controller.dashboard.value.Line_gauges.IG" not in every["series"]
        # No recorder for the furnace's topics: the dashboard's own memory answers.
        h = await (await http.get("/api/history",
                                  params={"topic": "furnace-controller.furnace.temperature"})
                   ).json()
        assert h["source"] == "recorder" and h["points"] == []
        for bad in ({"minutes": "abc"}, {"topic": "x", "minutes": "abc"},
                    {"topic": "x", "minutes": "-1"}, {"max_points": "many"}):
            r = await http.get("/api/history", params=bad)
            assert r.status == 400 and "error" in await r.json()
        assert (await http.get("/api/frame", params={"topic": "nope"})).status == 404


async def test_websocket_hello_then_pushed_valve_change(lab):
    async with aiohttp.ClientSession(lab.url) as http, http.ws_connect("/ws") as ws:
        await ws.send_str('{"type": "hello"}')
        hello = json.loads((await ws.receive(timeout=5)).data)
        assert hello["type"] == "hello" and hello["config"]["title"] == "Test lab"
        async with PychronClient("127.0.0.1", lab.cmd_port(lab.valves_node)) as client:
            await RemoteValves(client).open("D")
        while True:
            msg = json.loads((await ws.receive(timeout=5)).data)
            if msg["type"] != "batch":
                continue
            valves = [it["valve"] for it in msg["items"] if it["type"] == "valve"]
            if any(v["name"] == "D" and v["state"] == "open" for v in valves):
                break


async def test_control_is_off_by_default_and_every_attempt_is_logged(viewer, caplog):
    caplog.set_level(logging.INFO, logger="labbridge.web.app")
    async with aiohttp.ClientSession(viewer.url) as http:
        r = await http.post("/api/control/valve",
                            json={"node": "valve-controller", "valve": "A", "action": "open"})
        assert r.status == 403
        body = await r.json()
        assert body["outcome"] == "refused" and "control is off" in body["reason"]
        r = await http.post("/api/control/setpoint",
                            json={"node": "furnace-controller", "value": 500})
        assert r.status == 403
    assert viewer.bank.is_open("A") is False
    assert viewer.furnace.setpoint != 500
    lines = [rec.getMessage() for rec in caplog.records if "control from" in rec.getMessage()]
    assert len(lines) == 2 and all("127.0.0.1:" in ln for ln in lines)
    assert viewer.web.dashboard.control_log[0]["client"].startswith("127.0.0.1:")


async def test_control_requests_bad_and_good(lab, caplog):
    caplog.set_level(logging.INFO, logger="labbridge.web.app")
    async with http_session(lab.url) as http:
        csrf = await login(http, *OPERATOR)
        url = "/api/control/valve"
        r = await http.post(url, data="node=x", headers={"Content-Type": "text/plain", **csrf})
        assert r.status == 415
        r = await http.post(url, data="{not json",
                            headers={"Content-Type": "application/json", **csrf})
        assert r.status == 400
        r = await http.post(url, json={"node": "valve-controller"}, headers=csrf)
        assert r.status == 400 and "action" in (await r.json())["error"]
        r = await http.post(url, json={"node": "valve-controller", "valve": "A",
                                       "action": "open"},
                            headers={"Origin": "http://evil.example", **csrf})
        assert r.status == 403 and lab.bank.is_open("A") is False
        r = await http.post(url, data="x" * 10_000,
                            headers={"Content-Type": "application/json", **csrf})
        assert r.status == 413
        r = await http.post(url, json={"node": "nowhere", "valve": "A", "action": "open"},
                            headers=csrf)
        body = await r.json()
        assert body["outcome"] == "refused" and "no command server" in body["reason"]
        r = await http.post(url, json={"node": "valve-controller", "valve": "Z",
                                       "action": "open"}, headers=csrf)
        body = await r.json()
        assert body["outcome"] == "refused" and "ERROR" in body["reason"]
        r = await http.post(url, json={"node": "valve-controller", "valve": "A",
                                       "action": "open"}, headers=csrf)
        assert (await r.json())["outcome"] == "done" and lab.bank.is_open("A") is True
        r = await http.post("/api/control/setpoint",
                            json={"node": "furnace-controller", "device": "furnace",
                                  "value": 99999}, headers=csrf)
        body = await r.json()
        assert body["outcome"] == "refused" and "ERROR" in body["reason"]
        r = await http.post("/api/control/setpoint",
                            json={"node": "furnace-controller", "device": "furnace",
                                  "value": "hot"}, headers=csrf)
        assert r.status == 400
    logged = [rec.getMessage() for rec in caplog.records if "control from" in rec.getMessage()]
    assert len(logged) == 4  # the four requests that reached a decision
    assert all("127.0.0.1:" in ln for ln in logged)
