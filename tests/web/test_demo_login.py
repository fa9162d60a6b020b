"""``labbridge demo``'s one-time login (issue 12): the line the demo prints logs the demo
operator in once, in a real browser, and never again; the dashboard's node file holds only
the token's hash and listens on loopback.

The demo's dashboard node runs as its own ``labbridge serve`` process exactly as in the demo
(node/demo.py builds its file, starts it, and the lines come from cli/demo.py's ``_where``,
which ``labbridge demo`` prints); the other seven nodes are left out to keep the test light
(the full lab's page is tests/web/test_demo_page.py)."""

from __future__ import annotations

import re

import aiohttp
import pytest
import yaml

from labbridge.cli.demo import _where
from labbridge.node import demo as demo_module
from tests.web.browser import Console, chromium

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
async def demo(tmp_path, monkeypatch):
    only_web = [c for c in demo_module.COMPONENTS if c.key == "dashboard"]
    monkeypatch.setattr(demo_module, "COMPONENTS", only_web)
    (tmp_path / "demo").mkdir()
    lab = demo_module.Lab(tmp_path / "demo")
    try:
        await lab.start()
        yield lab
    finally:
        await lab.stop()


async def test_the_printed_one_time_login_works_once(demo, tmp_path):
    from playwright.async_api import expect

    printed = "\n".join(_where(demo))
    page_url = re.search(r"web dashboard: (http://127\.0\.0\.1:\d+/)$", printed, re.M)
    link = re.search(r"log in once as operator: (http://127\.0\.0\.1:\d+/login\?once=\S+)$",
                     printed, re.M)
    assert page_url and link, printed
    token = link.group(1).split("once=", 1)[1]
    node_file = (demo.workdir / "dashboard.yaml").read_text()
    assert token not in node_file  # the node file keeps the hash only
    svc = yaml.safe_load(node_file)["services"][0]
    assert svc["host"] == "127.0.0.1" and svc["one_time_logins"]["demo"].startswith("sha256$")

    async with chromium(tmp_path / "profile") as ctx:
        console = Console()
        page = await ctx.new_page()
        console.attach(page)
        await page.goto(link.group(1))
        await expect(page.locator("#who")).to_have_attribute("data-identity", "demo")
        await expect(page.locator("#who")).to_have_attribute("data-role", "operator")
        await expect(page.locator("#control-mode")).to_have_attribute("data-control", "on")
        assert page.url == page_url.group(1)  # the token is gone from the address bar
        # Twice: a fresh browser (no cookie) gets the login form and is told why.
        await ctx.clear_cookies()
        await page.goto(link.group(1))
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#login-note")).to_contain_text("used already")
        await expect(page.locator("#who")).to_have_attribute("data-identity", "")
        await expect(page.locator("#who")).to_have_attribute("data-role", "observer")
        await page.close()
        assert console.errors == [], "\n".join(console.errors)
    async with aiohttp.ClientSession() as http:  # nor without a browser
        r = await http.get(link.group(1), allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/login#used"
        assert "Set-Cookie" not in r.headers
