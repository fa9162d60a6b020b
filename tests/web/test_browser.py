"""The web dashboard in a real browser against a running simulated lab (issue 8, "What it must
show"): headless system Chromium driven by Playwright.

Every wait is Playwright's ``expect`` on the page's DOM state with a timeout (no sleeps). The
page exposes its state as data attributes: valves ``data-state``/``data-locked``, nodes
``data-status``, each plotted series' legend item ``data-last`` (the last value drawn), the
control result ``data-outcome``. Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.remote import RemoteValves
from tests.web.browser import LAPTOP, PHONE, Console, artifact, chromium
from tests.web.lab import start_lab

pytestmark = pytest.mark.browser

SETPOINT = "furnace-controller.furnace.setpoint"
TEMPERATURE = "furnace-controller.furnace.temperature"


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


@pytest.fixture
async def page(browser, lab):
    """The dashboard loaded and live; asserts no console errors when the test ends."""
    from playwright.async_api import expect

    console = Console()
    page = browser.pages[0] if browser.pages else await browser.new_page()
    console.attach(page)
    await page.goto(lab.url)
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "open", timeout=5000)
    yield page
    await page.close()
    assert console.errors == [], "\n".join(console.errors)


def valve(page, name: str):
    return page.locator(f'.valve[data-key="valve-controller/{name}"]')


def legend(page, topic: str):
    return page.locator(f'.legend-item[data-topic="{topic}"]')


async def test_page_loads_against_the_lab_at_laptop_and_phone_sizes(lab, browser, page):
    from playwright.async_api import expect

    await expect(page.locator("#title")).to_have_text("Test lab")
    await expect(page.locator("#control-mode")).to_have_attribute("data-control", "on")
    # Valves read from the command server at start: all four, closed, unlocked.
    for name in "ABCD":
        await expect(valve(page, name)).to_have_attribute("data-state", "closed")
        await expect(valve(page, name)).to_have_attribute("data-locked", "false")
    # A, B, C have layout hints: drawn in the SVG schematic; D (none) in the grid.
    await expect(page.locator("svg.schematic g.valve")).to_have_count(3)
    await expect(page.locator(".valve-grid .valve")).to_have_count(1)
    for node in ("valve-controller", "furnace-controller"):
        await expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
            "data-status", "live")
    # The furnace temperature is plotted live.
    await expect(legend(page, TEMPERATURE)).to_have_attribute("data-last", re.compile(r"\d"))
    # The dashboard server's gauge value is plotted and its warning is in the event log.
    await expect(legend(page, "valve-controller.dashboard.value.Line_gauges.IG")
                 ).to_have_attribute("data-last", re.compile(r"\d"))
    await expect(page.locator('#events li[data-level="warning"]').first).to_contain_text(
        "Line gauges.IG.x>0 is True")
    # The latest camera frame, served by the app as a PNG.
    await expect(page.locator("#camera-panel")).to_be_visible()
    await page.wait_for_function(
        "() => { const i = document.querySelector('#frames img[data-topic=\"dashboard.cam.frame\"]');"
        " return i && i.complete && i.naturalWidth === 64 && i.naturalHeight === 48; }")
    await page.screenshot(path=artifact("laptop-1366x768.png"), full_page=True)

    phone_console = Console()
    phone = await browser.new_page()
    phone_console.attach(phone)
    await phone.set_viewport_size(PHONE)
    await phone.goto(lab.url)
    await expect(phone.locator("#conn")).to_have_attribute("data-conn", "open")
    await expect(legend(phone, TEMPERATURE)).to_have_attribute("data-last", re.compile(r"\d"))
    await expect(valve(phone, "A")).to_have_attribute("data-state", "closed")
    # Readable on a phone: nothing wider than the viewport (no sideways scrolling).
    width = await phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width} px wide on a {PHONE['width']} px phone"
    await phone.screenshot(path=artifact("phone-390x844.png"), full_page=True)
    await phone.close()
    assert phone_console.errors == [], "\n".join(phone_console.errors)
    assert page.viewport_size == LAPTOP


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


async def test_stopping_a_node_shows_it_stale(lab, page):
    from playwright.async_api import expect

    node = page.locator('.node[data-node="valve-controller"]')
    await expect(node).to_have_attribute("data-status", "live")
    await lab.valves_node.stop()
    # stale_after is 0.6 s in the lab's dashboard file.
    await expect(node).to_have_attribute("data-status", "stale", timeout=5000)
    await expect(node.locator(".status")).to_have_text("stale")
    await expect(page.locator('.node[data-node="furnace-controller"]')).to_have_attribute(
        "data-status", "live")
    await page.screenshot(path=artifact("stale-node-laptop.png"), full_page=True)
    # Nothing at all for disconnect_after (2 s): disconnected, said plainly.
    await expect(node).to_have_attribute("data-status", "disconnected", timeout=6000)
    await expect(node.locator(".status")).to_have_text("disconnected")
    await expect(page.locator('.node[data-node="furnace-controller"]')).to_have_attribute(
        "data-status", "live")


async def test_trends_load_the_recorders_history_on_page_load(lab, browser):
    """Points recorded before the page opened are plotted: the gauge stops being sampled
    (its DashboardServer is stopped), so everything beyond the hello's last value can only
    come from /api/history (the recorder's SQLite file)."""
    import aiohttp
    from playwright.async_api import expect

    topic = "valve-controller.gauges.IG"
    async with aiohttp.ClientSession(lab.url) as http:
        async def history() -> list:
            h = await (await http.get("/api/history", params={"topic": topic})).json()
            assert h["source"] == "recorder"
            return h["points"]

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
    console = Console()
    page = browser.pages[0] if browser.pages else await browser.new_page()
    console.attach(page)
    await page.goto(lab.url)
    await expect(legend(page, topic)).to_have_attribute("data-points", str(n))
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
    # The refusal is in the event log with the client's address.
    entry = page.locator('#events li[data-level="refused"]').first
    await expect(entry).to_contain_text(re.compile(r"open valve-controller/B from 127\.0\.0\.1:\d+"))
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
            console = Console()
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            console.attach(page)
            await page.goto(lab.url)
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
