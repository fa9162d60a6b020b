"""The web dashboard across a slow link and a partition (issue 16; ADR 0164).

* Slow link: a dashboard node (a fast stream of gauge values, its notifier and its
  ``web_dashboard``) runs in a namespace; a page's WebSocket (an aiohttp client here) gets a
  32 kbit/s link (tc tbf on the namespace's egress) while the stream needs far more. The
  dashboard must drop that page, not queue data for it without bound: the connection ends
  soon after the dashboard decides, and the page can connect again once the link is fine.
* Partition: a valve node (command server + notifier) runs in a namespace; the dashboard runs
  here and the page in headless Chromium. The page must show the node's outage, and recover
  by itself after the heal, including a valve changed on the node meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import time

import aiohttp
import pytest

from labbridge.web.app import WebConfig, WebDashboard
from labbridge.web.control import CommandTarget
from tests.faults.conftest import elapsed

pytestmark = pytest.mark.faults

GAUGES = ", ".join(f"G{i}" for i in range(12))
STREAM_NODE = f"""
node: dash-node
devices:
  - {{kind: gauge_controller, name: gauges, gauges: [{GAUGES}], backend: {{kind: sim}},
     poll_period: 0.01}}
services:
  - {{kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.2, legacy: false}}
  - {{kind: web_dashboard, name: web, host: "@HOST@", port: 0, subscribe: [bus],
     stale_after: 2}}
"""

#: WebConfig defaults of the dashboard under test: 256 queued batches, one per 0.05 s.
QUEUE_SECONDS = 256 * 0.05


@pytest.mark.timeout(120)
async def test_slow_link_page_is_dropped(netns, start_node, outcome):
    out = outcome("web-slow-link")
    node = await start_node(netns, STREAM_NODE)
    url = f"http://{netns.ns_ip}:{node.port('web', 'http')}/ws"
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, heartbeat=None)
        await ws.send_str(json.dumps({"type": "hello"}))  # what the page's script says
        first = json.loads((await ws.receive(timeout=10)).data)
        assert first["type"] == "hello"
        pinged = time.time()
        for _ in range(3):  # values flow
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.TEXT
        netns.slow("32kbit", burst="4kb", latency="200ms")
        t_fault = time.time()
        got = 0
        ended = ""
        bound = QUEUE_SECONDS + 30
        while time.time() - t_fault < bound:
            if time.time() - pinged > 5.0:  # the page's script pings every ping_interval
                pinged = time.time()
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(json.dumps({"type": "ping"}))
            try:
                msg = await ws.receive(timeout=1.0)
            except TimeoutError:
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                got += len(msg.data)
                continue
            ended = f"{msg.type.name} {msg.data!r}" if msg.data else msg.type.name
            break
        t_end = time.time()
        await ws.close()
        assert ended, f"the page was neither dropped nor closed within {bound:.0f} s"
        # When the dashboard decided, from its log (same machine, same clock).
        decided = node.line_time(await node.wait_log(r"too slow.*disconnecting", timeout=5))
        out.detected = round(decided - t_fault, 3)
        gone = round(t_end - decided, 3)
        assert gone < 5.0, f"dropped after {gone} s: the backlog was sent first"
        out.check(f"the page's connection ended {gone:.1f} s after the dashboard dropped it")

        netns.heal()
        t_heal = time.monotonic()
        ws = await http.ws_connect(url, heartbeat=None)
        await ws.send_str(json.dumps({"type": "hello"}))
        hello = json.loads((await ws.receive(timeout=10)).data)
        assert hello["type"] == "hello"
        out.recovered = elapsed(t_heal)
        await ws.close()
        out.check("a new connection after the heal gets a fresh hello")
    out.numbers = {"ended_after_decision": gone, "bytes_on_slow_link": got, "how": ended}
    out.happened = (f"the page's queue filled ({QUEUE_SECONDS:g} s of batches at the push "
                    f"rate); the dashboard logged 'too slow' and dropped the connection "
                    f"({ended}); the page reconnects to a fresh snapshot")


VALVE_NODE = """
node: vnode
devices:
  - kind: valve_bank
    name: valves
    persist: false
    backend: {kind: sim, delay: 0.0}
    valves:
      - {name: A, address: 0}
      - {name: B, address: 1}
services:
  - {kind: pychron_command_server, name: cmd, host: "@HOST@", port: 0}
  - {kind: notifier, name: bus, host: "@HOST@", port: 0, heartbeat: 0.2}
"""


@pytest.mark.browser
async def test_page_shows_the_outage_and_recovers(netns, start_node, outcome, tmp_path):
    from playwright.async_api import expect

    from tests.web.browser import Console, chromium

    out = outcome("web-page-outage")
    node = await start_node(netns, VALVE_NODE)
    dash = WebDashboard(WebConfig(
        host="127.0.0.1", port=0, title="Fault lab",
        subscribe=[f"tcp://{netns.ns_ip}:{node.port('bus', 'zmq-pub')}"],
        command_servers=[CommandTarget("vnode", netns.ns_ip, node.port("cmd"), timeout=1.0)],
        stale_after=1.0, disconnect_after=3.0))
    await dash.start()
    try:
        async with chromium(tmp_path / "profile") as browser:
            console = Console()
            page = browser.pages[0] if browser.pages else await browser.new_page()
            console.attach(page)
            await page.goto(dash.url)
            status = page.locator('.node[data-node="vnode"]')
            valve_b = page.locator('.valve[data-key="vnode/B"]')
            await expect(page.locator("#conn")).to_have_attribute("data-conn", "open",
                                                                  timeout=10_000)
            await expect(status).to_have_attribute("data-status", "live", timeout=10_000)
            await expect(valve_b).to_have_attribute("data-state", "closed", timeout=10_000)

            netns.partition()
            t_fault = time.monotonic()
            await expect(status).not_to_have_attribute("data-status", "live", timeout=15_000)
            out.detected = elapsed(t_fault)
            # Someone on the node's own network opens B while the dashboard is cut off.
            assert await node.call_inside("cmd", "Open", "B") == "OK"
            await expect(status).to_have_attribute("data-status", "disconnected",
                                                   timeout=15_000)
            shown = elapsed(t_fault)
            await expect(valve_b).to_have_attribute("data-state", "closed")  # last known

            netns.heal()
            t_heal = time.monotonic()
            await expect(status).to_have_attribute("data-status", "live", timeout=30_000)
            live_again = elapsed(t_heal)
            await expect(valve_b).to_have_attribute("data-state", "open", timeout=30_000)
            out.recovered = elapsed(t_heal)
            await expect(page.locator("#conn")).to_have_attribute("data-conn", "open")
            await page.close()
            assert console.errors == [], "\n".join(console.errors)
    finally:
        await dash.stop()
    out.numbers = {"disconnected_shown_after": shown, "live_again_after": live_again}
    out.happened = ("the page marked the node stale, then disconnected; after the heal it "
                    "showed it live again and valve B open (changed during the outage, "
                    "resynchronised after the bus gap), without a reload")
    out.check("no reload, no console errors")
