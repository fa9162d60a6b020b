"""The web dashboard in a real browser against a running simulated lab (issues 8 and 17, "What
it must show"): headless system Chromium driven by Playwright.

Every wait is Playwright's ``expect`` on the page's DOM state with a timeout (no sleeps). The
page exposes its state as data attributes: valves ``data-state``/``data-locked``/
``data-stale``, nodes ``data-status``/``data-missed``, each plotted series' legend item
``data-last``/``data-units``/``data-color``/``data-stale``/``data-first``, readings
``data-topic``/``data-units``, the control result ``data-outcome``. Screenshots go to
test-artifacts/web/.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from labbridge.bus.recorder import RecordStore
from labbridge.devices.furnace import WatchdogConfig
from labbridge.links.pychron.client import ErrorReply, PychronClient
from labbridge.links.pychron.remote import ActuationError, RemoteValves
from labbridge.protocol.telemetry.envelope import Encoding
from tests.web.browser import LAPTOP, PHONE, Console, artifact, chromium, log_in
from tests.web.lab import OPERATOR, start_lab

pytestmark = pytest.mark.browser

SETPOINT = "furnace-controller.furnace.setpoint"
TEMPERATURE = "furnace-controller.furnace.temperature"
OUTPUT = "furnace-controller.furnace.output"
IG = "valve-controller.gauges.IG"
CG1 = "valve-controller.gauges.CG1"
CAMERA = "dashboard.cam.frame"


@pytest.fixture
async def lab(tmp_path):
    lab = await start_lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.stop()


@pytest.fixture
async def browser(lab, tmp_path):
    """A Chromium context; closed before the lab stops (the fixture order guarantees it)."""
    async with chromium(tmp_path / "profile") as ctx:
        yield ctx


async def open_page(ctx, url):
    from playwright.async_api import expect

    console = Console()
    page = await ctx.new_page()
    console.attach(page)
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "open", timeout=5000)
    return page, console


@pytest.fixture
async def page(browser, lab):
    """The dashboard loaded and live, its operator logged in through the page's form;
    asserts no console errors when the test ends."""
    page, console = await open_page(browser, lab.url)
    await log_in(page, *OPERATOR)
    yield page
    await page.close()
    assert console.errors == [], "\n".join(console.errors)


def valve(page, name: str):
    return page.locator(f'.valve[data-key="valve-controller/{name}"]')


def legend(page, topic: str):
    return page.locator(f'.legend-item[data-topic="{topic}"]')


def reading(page, topic: str):
    return page.locator(f'.reading[data-topic="{topic}"]')


def card(page, node: str, device: str):
    return page.locator(f'.card[data-node="{node}"][data-device="{device}"]')


async def test_page_loads_against_the_lab_at_laptop_and_phone_sizes(lab, browser, page):
    from playwright.async_api import expect

    await expect(page.locator("#title")).to_have_text("Test lab")
    await expect(page.locator("#control-mode")).to_have_attribute("data-control", "on")
    # Valves read from the command server at start: all four, closed, unlocked, all on the
    # schematic of the dashboard's node file.
    for name in "ABCD":
        await expect(valve(page, name)).to_have_attribute("data-state", "closed")
        await expect(valve(page, name)).to_have_attribute("data-locked", "false")
    await expect(page.locator("svg.schematic g.valve")).to_have_count(4)
    await expect(page.locator(".valve-grid .valve")).to_have_count(0)
    for node in ("valve-controller", "furnace-controller"):
        await expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
            "data-status", "live")
    # The furnace temperature is plotted live, the gauge too, and its warning is logged.
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-last", re.compile(r"\d"))
    await expect(legend(page, IG)).to_have_attribute("data-last", re.compile(r"\d"))
    await expect(page.locator('#events li[data-level="warning"]').first).to_contain_text(
        "Line gauges.IG.x>0 is True")
    # Every instrument of the lab has its card; the camera's frame is in its card.
    for node, device in (("valve-controller", "gauges"), ("furnace-controller", "furnace"),
                         ("dashboard", "cam")):
        await expect(card(page, node, device)).to_be_visible()
    await expect(page.locator(f'img.frame[data-topic="{CAMERA}"]')).to_have_attribute(
        "data-loaded", re.compile(r"\d"))
    await page.screenshot(path=artifact("laptop-1366x768.png"), full_page=True)

    phone, phone_console = await open_page(browser, lab.url)
    await phone.set_viewport_size(PHONE)
    await expect(legend(phone, TEMPERATURE)).to_have_attribute("data-last", re.compile(r"\d"))
    await expect(valve(phone, "A")).to_have_attribute("data-state", "closed")
    # Readable on a phone: nothing wider than the viewport (no sideways scrolling).
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width} px wide on a {PHONE['width']} px phone"
    await phone.screenshot(path=artifact("phone-390x844.png"), full_page=True)
    await phone.close()
    assert phone_console.errors == [], "\n".join(phone_console.errors)
    assert page.viewport_size == LAPTOP


async def test_every_value_shows_its_units(lab, page):
    """Units come from the devices' metadata: on every reading, legend and axis; one axis
    per unit; pressures on a log axis in engineering notation; the ion gauge once, every
    gauge (the convectron is listed although nothing has read it)."""
    from playwright.async_api import expect

    eng = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)? torr$")
    await expect(reading(page, IG)).to_have_text(eng)
    await expect(reading(page, CG1)).to_have_attribute("data-units", "torr")
    await expect(reading(page, TEMPERATURE)).to_have_text(re.compile(r"^-?\d+(\.\d+)? °C$"))
    await expect(reading(page, OUTPUT)).to_have_text(re.compile(r"^-?\d+(\.\d+)? %$"))
    await expect(reading(page, SETPOINT)).to_have_text("22 °C")  # held: from the metadata
    await expect(legend(page, IG).locator(".lval")).to_have_text(eng)
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-units", "°C")
    await expect(page.locator('.plot[data-group="furnace-controller.furnace"]')
                 ).to_have_attribute("data-axes", re.compile(r"^(°C:lin,%:lin|%:lin,°C:lin)$"))
    await expect(page.locator('.plot[data-group="valve-controller.gauges"]')
                 ).to_have_attribute("data-axes", "torr:log")
    # the dashboard server's copy of the ion gauge is not drawn a second time
    await expect(legend(page, "valve-controller.dashboard.value.Line_gauges.IG")
                 ).to_have_count(0)
    await expect(legend(page, CG1)).to_have_count(1)
    # a unit on every number the page shows
    shown = await page.evaluate("""() => [...document.querySelectorAll('.reading')]
        .filter(d => d.dataset.value !== '' && !isNaN(Number(d.dataset.value)))
        .map(d => [d.dataset.topic, d.textContent, d.dataset.units])""")
    assert len(shown) >= 4, shown  # IG, temperature, output, setpoint (CG1 unread)
    for topic, text, units in shown:
        assert units and text.endswith(f" {units}"), (topic, text, units)
    await page.screenshot(path=artifact("units-laptop.png"), full_page=True)


async def test_a_killed_node_greys_and_warns_within_its_stale_limit(lab, page):
    from playwright.async_api import expect

    node = page.locator('.node[data-node="valve-controller"]')
    await expect(node).to_have_attribute("data-status", "live")
    await expect(card(page, "valve-controller", "gauges")).to_have_attribute("data-stale",
                                                                             "false")
    await expect(legend(page, IG)).to_have_attribute("data-stale", "false")
    await lab.valves_node.stop()
    # stale_after is 0.6 s in the lab's dashboard file: the warning names it
    warning = page.locator('#events li[data-kind="health"][data-node="valve-controller"]')
    await expect(warning.first).to_contain_text("stale", timeout=5000)
    await expect(warning.first).to_contain_text("limit 0.6 s")
    await expect(warning.first).to_have_attribute("data-level", "warning")
    # every widget of the node greyed: its card, its line, its valves, its trend
    await expect(node).to_have_attribute("data-status", "stale")
    await expect(card(page, "valve-controller", "gauges")).to_have_attribute("data-stale",
                                                                             "true")
    await expect(page.locator('.valve-node[data-node="valve-controller"]')
                 ).to_have_attribute("data-stale", "true")
    for name in "ABCD":
        await expect(valve(page, name)).to_have_attribute("data-stale", "true")
    await expect(legend(page, IG)).to_have_attribute("data-stale", "true")
    await expect(reading(page, IG)).to_have_attribute("data-stale", "true")
    # the gauge's line ends at its last reading, not at "now"
    last_t = await legend(page, IG).get_attribute("data-last-t")
    await expect(legend(page, IG)).to_have_attribute("data-until", last_t)
    # the other node is untouched
    await expect(page.locator('.node[data-node="furnace-controller"]')).to_have_attribute(
        "data-status", "live")
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-stale", "false")
    await page.screenshot(path=artifact("stale-node-laptop.png"), full_page=True)
    # Nothing at all for disconnect_after (2 s): disconnected, said plainly, warned again.
    await expect(node).to_have_attribute("data-status", "disconnected", timeout=6000)
    await expect(node.locator(".status")).to_have_text("disconnected")
    await expect(warning.first).to_contain_text("disconnected")


async def test_a_lost_dashboard_greys_everything(lab, browser):
    """When the page loses its dashboard it knows nothing any more: every widget greys."""
    from playwright.async_api import expect

    page, console = await open_page(browser, lab.url)
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-stale", "false")
    await expect(valve(page, "A")).to_have_attribute("data-stale", "false")
    await lab.web_node.stop()
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "closed")
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-stale", "true")
    await expect(valve(page, "A")).to_have_attribute("data-stale", "true")
    await expect(card(page, "furnace-controller", "furnace")).to_have_attribute("data-stale",
                                                                                "true")
    await page.close()
    # the browser's own complaints about the reconnections it tries, nothing else
    assert all("WebSocket" in e or "ERR_CONNECTION_REFUSED" in e for e in console.errors), \
        console.errors


async def test_colours_are_identical_across_two_page_loads(lab, browser, page):
    from playwright.async_api import expect

    topics = [IG, CG1, TEMPERATURE, OUTPUT, SETPOINT]

    async def colours(p) -> dict[str, str]:
        for t in topics:
            await expect(legend(p, t)).to_have_attribute("data-color", re.compile("hsl"))
        return {t: await legend(p, t).get_attribute("data-color") for t in topics}

    first = await colours(page)
    # a second load, in which the series arrive in another order (history, then live)
    second_page, console = await open_page(browser, lab.url)
    second = await colours(second_page)
    await second_page.reload()
    third = await colours(second_page)
    await second_page.close()
    assert console.errors == []
    assert first == second == third
    assert len(set(first.values())) == len(first)  # and they tell the series apart


async def test_a_camera_frame_appears_and_changes(lab, page):
    """The camera's latest frame as an image, updated live, downsampled for the browser."""
    sel = f'img.frame[data-topic="{CAMERA}"]'
    pixels = """(sel) => {
        const i = document.querySelector(sel);
        const c = document.createElement('canvas');
        c.width = i.naturalWidth; c.height = i.naturalHeight;
        const x = c.getContext('2d'); x.drawImage(i, 0, 0);
        const d = x.getImageData(0, 0, c.width, c.height).data;
        let h = 0; for (let k = 0; k < d.length; k += 4) h = (h * 31 + d[k]) | 0;
        return [Number(i.dataset.loaded), c.width, c.height, h]; }"""
    ready = f"""() => {{ const i = document.querySelector('{sel}');
        return i && i.complete && i.naturalWidth > 0 && i.dataset.loaded; }}"""
    await page.wait_for_function(ready)
    n1, w, h, hash1 = await page.evaluate(pixels, sel)
    assert (w, h) == (480, 360)  # the camera's 960 x 720, halved for the browser
    await page.wait_for_function(f"""() => {{ const i = document.querySelector('{sel}');
        return i.complete && Number(i.dataset.loaded) > {n1}; }}""")
    n2, _, _, hash2 = await page.evaluate(pixels, sel)
    assert n2 > n1 and hash2 != hash1  # a newer frame, and the spot moved
    caption = page.locator('.card[data-device="cam"] figcaption')
    from playwright.async_api import expect

    await expect(caption).to_contain_text("960 x 720 px")


async def test_the_schematic_shows_valve_states(lab, page):
    """The line as the node file draws it: valves on their pipes, gauges where they sit
    with their pressures, open and closed at a glance."""
    from playwright.async_api import expect

    line = page.locator('svg.schematic[data-node="valve-controller"]')
    await expect(line.locator("g.valve")).to_have_count(4)
    await expect(line.locator("path.pipe")).to_have_count(4)
    await expect(line.locator("g.part")).to_have_count(3)
    await expect(line.locator('g.gauge[data-name="IG"] .gvalue')).to_have_text(
        re.compile(r"e-\d+ torr$"))
    await expect(line.locator('g.gauge[data-name="CG1"] .gvalue')).to_have_text("no reading")
    # every valve of a pipe sits on it: its centre is a corner of the pipe's path
    off_pipe = await line.evaluate("""(svg) => {
        const bad = [];
        for (const p of svg.querySelectorAll('path.pipe')) {
          const d = p.getAttribute('d');
          for (const name of p.dataset.through.split(' ')) {
            const g = svg.querySelector(`g.valve[data-valve="${name}"]`);
            if (!g) continue;
            const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
            const r = g.querySelector('rect');
            const cx = Number(m[1]) + r.width.baseVal.value / 2;
            const cy = Number(m[2]) + r.height.baseVal.value / 2;
            if (!d.includes(`${cx} ${cy}`)) bad.push(name);
          }
        }
        return bad; }""")
    assert off_pipe == []
    a = line.locator('g.valve[data-key="valve-controller/A"]')
    await expect(a).to_have_attribute("data-state", "closed")
    closed_fill = await a.locator("rect").evaluate("r => getComputedStyle(r).fill")
    async with PychronClient("127.0.0.1", lab.cmd_port(lab.valves_node)) as client:
        await RemoteValves(client).open("A")
    await expect(a).to_have_attribute("data-state", "open", timeout=1000)
    await expect(a.locator(".vstate")).to_have_text("open")
    open_fill = await a.locator("rect").evaluate("r => getComputedStyle(r).fill")
    assert open_fill != closed_fill
    lab.bank.lock("C")
    await expect(line.locator('g.valve[data-key="valve-controller/C"]')).to_have_attribute(
        "data-locked", "true", timeout=10_000)
    await expect(line.locator('g.valve[data-key="valve-controller/C"] .vmeta')
                 ).to_have_text("locked")
    await line.screenshot(path=artifact("schematic.png"))


async def test_no_missed_on_a_fresh_page_with_an_idle_bus(lab, page):
    """The dashboard joined the bus after the nodes (a late join on every topic): that is
    not a loss, and a fresh page says nothing is missed."""
    from playwright.async_api import expect

    for node in ("valve-controller", "furnace-controller"):
        await expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
            "data-status", "live")
    await page.wait_for_function(
        "() => Number(document.querySelector('#nodes').dataset.health || 0) >= 5")
    nodes = page.locator(".node")
    assert await nodes.count() >= 2
    for i in range(await nodes.count()):
        await expect(nodes.nth(i)).to_have_attribute("data-missed", "0")
        await expect(nodes.nth(i).locator(".nmeta")).not_to_contain_text("missed")
    health = {n["node"]: n for n in lab.web.dashboard.nodes_json()}
    assert health["valve-controller"]["late_joins"] > 0  # there was a late join
    assert health["valve-controller"]["missed"] == 0


async def test_the_window_is_filled_from_the_recorders_history(tmp_path):
    """A dashboard started after the data was recorded: the trend window (1 min here) is
    full from the page's first load, although the convectron was never read while the
    dashboard listened."""
    from playwright.async_api import expect

    start = time.time()

    def record_the_past(path: Path) -> None:
        # the 50 s before the dashboard starts, one reading every 0.5 s
        store = RecordStore(path)
        rows = [(start - 50 + i * 0.5, start - 50 + i * 0.5, CG1, 99, i + 1,
                 int(Encoding.JSON), json.dumps(1e-3 + i * 1e-6).encode(), None)
                for i in range(100)]
        store.write(rows, [])
        store.close()

    lab = await start_lab(tmp_path, before_web=record_the_past)
    try:
        async with chromium(tmp_path / "profile") as ctx:
            page, console = await open_page(ctx, lab.url)
            item = legend(page, CG1)
            await expect(item).to_have_attribute("data-points", re.compile(r"^\d{2,3}$"))
            first = float(await item.get_attribute("data-first"))
            points = int(await item.get_attribute("data-points"))
            t0 = float(await page.locator('.plot[data-group="valve-controller.gauges"]')
                       .get_attribute("data-t0"))
            # The plot shows the whole window (not the few seconds the dashboard has been
            # up) and the recording fills it from its start: every reading still inside
            # the window is there.
            assert t0 == pytest.approx(time.time() - 60, abs=10)
            assert first - t0 < 12 and first >= start - 50
            assert points == 100 - round((first - (start - 50)) / 0.5)
            await page.screenshot(path=artifact("history-window-laptop.png"), full_page=True)
            await page.close()
            assert console.errors == []
    finally:
        await lab.stop()


async def test_alarms_are_events_with_a_severity(lab, page):
    """A gauge above its limit, an interlock refusal and a furnace watchdog trip."""
    from playwright.async_api import expect

    await expect(legend(page, IG)).to_have_attribute("data-alarm", "")
    lab.valves_node.ctx.devices["gauges"].backend.scale("IG", 100.0)  # ~1e-6 > 1e-7 torr
    alarm = page.locator('#events li[data-kind="alarm"]').first
    await expect(alarm).to_have_attribute("data-level", "critical", timeout=5000)
    await expect(alarm).to_contain_text("above 1e-07 torr")
    await expect(legend(page, IG)).to_have_attribute("data-alarm", "critical")
    await expect(page.locator('svg.schematic g.gauge[data-name="IG"]')).to_have_attribute(
        "data-alarm", "critical")
    await expect(page.locator("#alarm-summary")).to_contain_text("1 in alarm")

    async with PychronClient("127.0.0.1", lab.cmd_port(lab.valves_node)) as client:
        rv = RemoteValves(client)
        await rv.open("A")
        with pytest.raises((ActuationError, ErrorReply)):
            await rv.open("D")  # D may not open while A is open
    refused = page.locator('#events li[data-kind="refused"]').first
    await expect(refused).to_have_attribute("data-level", "warning")
    await expect(refused).to_contain_text("open D refused by valves: interlock: A is open")

    lab.furnace.watchdog = WatchdogConfig(timeout=0.2, safe_setpoint=0.0)
    lab.furnace.heard()  # a client spoke, then nobody: the watchdog trips
    trip = page.locator('#events li[data-kind="watchdog"]').first
    await expect(trip).to_have_attribute("data-level", "critical", timeout=5000)
    await expect(trip).to_contain_text("furnace watchdog tripped")
    await expect(reading(page, SETPOINT)).to_have_text("0 °C")
    await page.screenshot(path=artifact("alarms-laptop.png"), full_page=True)


async def test_valve_opened_through_command_server_turns_open_within_a_second(lab, page):
    from playwright.async_api import expect

    await expect(valve(page, "A")).to_have_attribute("data-state", "closed")
    async with PychronClient("127.0.0.1", lab.cmd_port(lab.valves_node)) as client:
        act = await RemoteValves(client).open("A")
        assert act.state is True
        # No reload: the pushed change must reach the page's DOM within one second.
        await expect(valve(page, "A")).to_have_attribute("data-state", "open", timeout=1000)
        await RemoteValves(client).close("A")
        await expect(valve(page, "A")).to_have_attribute("data-state", "closed", timeout=1000)
    await expect(valve(page, "B")).to_have_attribute("data-state", "closed")
    assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1


async def test_furnace_setpoint_change_moves_the_plotted_setpoint(lab, page):
    from playwright.async_api import expect

    async with PychronClient("127.0.0.1", lab.cmd_port(lab.furnace_node)) as client:
        assert await client.call("SetSetpoint 450") in ("OK", "True", "ok")
    await expect(legend(page, SETPOINT)).to_have_attribute("data-last", "450", timeout=2000)
    # From the page itself (control on): type, confirm, and the plot follows.
    form = page.locator('.setpoint-form[data-node="furnace-controller"]')
    await form.locator("input").fill("300")
    await form.locator("button").click()
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-text")).to_contain_text("300")
    await page.locator("#confirm-ok").click()
    await expect(page.locator("#control-result")).to_have_attribute("data-outcome", "done")
    await expect(legend(page, SETPOINT)).to_have_attribute("data-last", "300", timeout=2000)
    assert lab.furnace.setpoint == 300
    await page.screenshot(path=artifact("setpoint-laptop.png"), full_page=True)


async def test_trends_load_the_recorders_history_on_page_load(lab, browser):
    """Points recorded before the page opened are plotted: the gauge stops being sampled
    (its DashboardServer is stopped), so everything beyond the hello's last value can only
    come from /api/history (the recorder's SQLite file)."""
    import aiohttp
    from playwright.async_api import expect

    async with aiohttp.ClientSession(lab.url) as http:
        async def history() -> list:
            # what the page asks for: every series of the window, thinned to 1000 points
            h = await (await http.get("/api/history", params={"minutes": "1",
                                                              "max_points": "1000"})).json()
            assert h["source"] == "recorder"
            return h["series"].get(IG, [])

        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        while len(await history()) < 5:  # the recorder gets them through the bus
            assert loop.time() < end, "the recorder did not store 5 gauge readings"
            await asyncio.sleep(0.05)
        await lab.valves_node.ctx.services["dash"].stop()  # no more readings
        # The last reading may still be in flight to the recorder: settle on a stable count.
        n = len(await history())
        end = loop.time() + 10
        while True:  # no event tells us the recorder has flushed the last one: poll
            await asyncio.sleep(0.3)
            m = len(await history())
            if m == n:
                break
            assert loop.time() < end, "the recording did not settle"
            n = m
    page, console = await open_page(browser, lab.url)
    await expect(legend(page, IG)).to_have_attribute("data-points", str(n))
    await page.close()
    assert console.errors == [], "\n".join(console.errors)


async def test_control_on_a_locked_valve_shows_the_refusal(lab, page):
    from playwright.async_api import expect

    lab.bank.lock("B")
    # Not a latency check (that is the valve test's 1 s): a loaded machine may take longer.
    await expect(valve(page, "B")).to_have_attribute("data-locked", "true", timeout=10_000)
    await valve(page, "B").click()
    await expect(page.locator("#confirm-text")).to_contain_text("Open valve B")
    await page.locator("#confirm-ok").click()
    result = page.locator("#control-result")
    await expect(result).to_have_attribute("data-outcome", "refused")
    await expect(result).to_contain_text("software-locked")
    await expect(valve(page, "B")).to_have_attribute("data-state", "closed")
    assert lab.bank.is_open("B") is False
    # The refusal is in the event log (the gate's audit trail) with the user's name.
    entry = page.locator('#events li[data-kind="audit"][data-outcome="failed"]').first
    await expect(entry).to_have_attribute("data-who", "olivia@127.0.0.1")
    await expect(entry).to_have_attribute("data-level", "warning")
    await expect(entry).to_contain_text("failed: open valve-controller/B by olivia@127.0.0.1 "
                                        "as operator via web/web: valve B is software-locked")
    await page.screenshot(path=artifact("locked-refusal-laptop.png"), full_page=True)

    # Cancelling the confirmation sends nothing.
    before = len(lab.web.dashboard.control_log)
    await valve(page, "A").click()
    await page.locator("#confirm-cancel").click()
    await expect(page.locator("#confirm")).to_be_hidden()
    assert len(lab.web.dashboard.control_log) == before
    assert lab.bank.is_open("A") is False

    # An unlocked valve opens from the page, and the bus brings the change back.
    await valve(page, "A").click()
    await page.locator("#confirm-ok").click()
    await expect(result).to_have_attribute("data-outcome", "done")
    await expect(valve(page, "A")).to_have_attribute("data-state", "open")
    assert lab.bank.is_open("A") is True


async def test_view_only_dashboard_offers_no_control(tmp_path):
    """control: false (the default): nothing is clickable, no setpoint field, and a click on a
    valve sends nothing."""
    from playwright.async_api import expect

    lab = await start_lab(tmp_path, control=False)
    try:
        async with chromium(tmp_path / "profile") as ctx:
            page, console = await open_page(ctx, lab.url)
            await expect(page.locator("#control-mode")).to_have_attribute("data-control", "off")
            await expect(page.locator("#control-mode")).to_contain_text("view only")
            await expect(valve(page, "A")).to_have_attribute("data-known", "true")
            await expect(legend(page, TEMPERATURE)).to_have_attribute("data-last",
                                                                      re.compile(r"\d"))
            await expect(page.locator(".valve.clickable")).to_have_count(0)
            await expect(page.locator(".setpoint-form")).to_have_count(0)
            await valve(page, "A").click()
            await expect(page.locator("#confirm")).to_be_hidden()
            await expect(page.locator("#control-result")).to_be_hidden()
            assert lab.web.dashboard.control_log == []
            await page.close()
            assert console.errors == [], "\n".join(console.errors)
    finally:
        await lab.stop()
