"""The page of ``labbridge demo`` (issue 17): every instrument of the demo lab is on it --
the extraction line with its valves and gauges, the furnace, the spectrometer's intensities
per detector, the rotator's position and state, the camera's live frame -- every node live
and nothing "missed". The demo's eight nodes run as their own processes, as
``labbridge demo`` starts them. Screenshots at laptop and phone size go to
test-artifacts/web/demo-*.png (the README's images in docs/img/ are taken from them)."""

from __future__ import annotations

import re

import pytest

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.remote import RemoteValves
from labbridge.node.demo import Lab
from tests.web.browser import LAPTOP, PHONE, Console, artifact, chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

DETECTORS = ("H2", "H1", "AX", "L1", "L2", "CDD")


@pytest.fixture
async def demo(tmp_path):
    lab = Lab(tmp_path / "demo")
    (tmp_path / "demo").mkdir()
    try:
        await lab.start()
        yield lab
    finally:
        await lab.stop()


async def test_the_demo_page_shows_every_instrument(demo, tmp_path):
    from playwright.async_api import expect

    host, port = demo.components["dashboard"].endpoint("http")
    url = f"http://{host}:{port}/"
    async with chromium(tmp_path / "profile", viewport=LAPTOP) as ctx:
        console = Console()
        page = await ctx.new_page()
        console.attach(page)
        await page.goto(url)
        await expect(page.locator("#conn")).to_have_attribute("data-conn", "open")
        nodes = ("valve-controller", "furnace-controller", "spectrometer", "rotator",
                 "pymodaq-camera")
        for node in nodes:
            await expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
                "data-status", "live", timeout=20_000)
        # the line: six valves on their pipes, both gauges with their pressures
        line = page.locator('svg.schematic[data-node="valve-controller"]')
        await expect(line.locator("g.valve")).to_have_count(6)
        await expect(line.locator("g.valve[data-known=true]")).to_have_count(6)
        for gauge in ("IG", "CG1"):
            await expect(line.locator(f'g.gauge[data-name="{gauge}"] .gvalue')
                         ).to_have_text(re.compile(r"e-\d+ torr$"), timeout=20_000)
        # the furnace, in °C and %
        furnace = page.locator('.card[data-node="furnace-controller"][data-device="furnace"]')
        await expect(furnace.locator('.reading[data-topic$=".temperature"]')
                     ).to_have_text(re.compile(r" °C$"))
        # the spectrometer's intensities, one per detector, in volts
        argus = page.locator('.card[data-node="spectrometer"][data-device="argus"]')
        for det in DETECTORS:
            await expect(argus.locator(f'.reading[data-topic="spectrometer.argus.scan.{det}"]')
                         ).to_have_text(re.compile(r" V$"), timeout=20_000)
        # the rotator's position and state
        rot = page.locator('.card[data-node="rotator"][data-device="rotator"]')
        await expect(rot.locator('.reading[data-topic="rotator.rotator.position"]')
                     ).to_have_text(re.compile(r" deg$"), timeout=20_000)
        await expect(rot.locator('.reading[data-topic="rotator.rotator.state"]')
                     ).to_have_text(re.compile(r"^[A-Z]+$"))
        # the camera's latest frame, live
        img = page.locator('img.frame[data-topic="pymodaq-camera.camera.frame"]')
        await expect(img).to_have_attribute("data-loaded", re.compile(r"\d"), timeout=20_000)
        first = int(await img.get_attribute("data-loaded"))
        await expect(img).not_to_have_attribute("data-loaded", str(first), timeout=10_000)
        # a fresh page on a quiet bus: nothing missed
        for node in nodes:
            await expect(page.locator(f'.node[data-node="{node}"]')).to_have_attribute(
                "data-missed", "0")
        # the lab at work, as an acquisition computer drives it: the line open from the
        # furnace to the spectrometer, the getter isolated, the furnace heating
        vhost, vport = demo.components["valve-controller"].endpoint("tcp")
        fhost, fport = demo.components["furnace-controller"].endpoint("tcp")
        async with PychronClient(vhost, vport) as client:
            valves = RemoteValves(client)
            for name in "ABCE":
                await valves.open(name)
            await client.call("Lock D")
        async with PychronClient(fhost, fport) as client:
            await client.call("SetSetpoint 600")
        for name in "ABCE":
            await expect(line.locator(f'g.valve[data-key="valve-controller/{name}"]')
                         ).to_have_attribute("data-state", "open")
        await expect(line.locator('g.valve[data-key="valve-controller/D"]')
                     ).to_have_attribute("data-locked", "true")
        await page.wait_for_function(
            """() => Number(document.querySelector('.legend-item[data-topic='
                + '"furnace-controller.furnace.temperature"]').dataset.last) > 100""",
            timeout=30_000)
        await page.screenshot(path=artifact("demo-laptop.png"), full_page=True)

        await page.set_viewport_size(PHONE)
        await page.reload()
        await expect(line.locator("g.valve[data-known=true]")).to_have_count(6)
        await expect(img).to_have_attribute("data-loaded", re.compile(r"\d"), timeout=20_000)
        await expect(argus.locator('.reading[data-topic="spectrometer.argus.scan.AX"]')
                     ).to_have_text(re.compile(r" V$"))
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"page is {width} px wide on a {PHONE['width']} px phone"
        await page.screenshot(path=artifact("demo-phone.png"), full_page=True)
        await page.close()
        assert console.errors == [], "\n".join(console.errors)
