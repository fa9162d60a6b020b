"""Logging in and out of the dashboard in a real browser (issue 12 item 4): headless system
Chromium via Playwright against the simulated lab (tests/web/lab.py) or a dashboard whose
node gives loopback no role. The page's state is read from ``#who`` (``data-role``,
``data-identity``), ``#control-mode``, the valves' ``clickable`` class, the login dialog and
the events (``data-kind="audit"``, ``data-outcome``, ``data-who``)."""

from __future__ import annotations

import re

import pytest

from labbridge.access import Gate, Identity, Policy, Role, hash_secret
from labbridge.web.app import WebConfig, WebDashboard
from tests.web.browser import Console, artifact, chromium, log_in
from tests.web.lab import OBSERVER, OPERATOR, start_lab

pytestmark = pytest.mark.browser

TEMPERATURE = "furnace-controller.furnace.temperature"


@pytest.fixture
async def lab(tmp_path):
    lab = await start_lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.stop()


async def open_page(ctx, url):
    from playwright.async_api import expect

    console = Console()
    page = await ctx.new_page()
    console.attach(page)
    await page.goto(url)
    await expect(page.locator("#who")).to_have_attribute("data-role", "observer")
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "open")
    return page, console


def unexpected(console: Console, *statuses: int) -> list[str]:
    """Console errors other than the browser's note about a refusal the test asked for."""
    return [e for e in console.errors
            if not any(f"status of {s}" in e for s in statuses)]


async def test_an_observer_sees_everything_and_has_no_control(lab, tmp_path):
    from playwright.async_api import expect

    async with chromium(tmp_path / "profile") as ctx:
        page, console = await open_page(ctx, lab.url)
        # Not logged in: an observer on loopback, told how to get control.
        await expect(page.locator("#who")).to_have_attribute("data-identity", "")
        await expect(page.locator("#control-mode")).to_have_attribute("data-control", "off")
        await expect(page.locator("#control-mode")).to_contain_text(
            "log in as an operator")
        await log_in(page, *OBSERVER)
        await expect(page.locator("#who")).to_have_text("oscar (observer)")
        await expect(page.locator("#logout")).to_be_visible()
        # everything is shown...
        await expect(page.locator('.valve[data-key="valve-controller/A"]')
                     ).to_have_attribute("data-known", "true")
        await expect(page.locator(f'.legend-item[data-topic="{TEMPERATURE}"]')
                     ).to_have_attribute("data-last", re.compile(r"\d"))
        await expect(page.locator(".node")).to_have_count(2)
        # ...and nothing can be changed from the page
        await expect(page.locator("#control-mode")).to_have_attribute("data-control", "off")
        await expect(page.locator(".valve.clickable")).to_have_count(0)
        await expect(page.locator(".setpoint-form")).to_have_count(0)
        await page.locator('.valve[data-key="valve-controller/A"]').click()
        await expect(page.locator("#confirm")).to_be_hidden()
        # The server refuses anyway, even with the page's own session and CSRF token.
        status, body = await page.evaluate("""async () => {
            const me = await (await fetch('/api/session')).json();
            const r = await fetch('/api/control/valve', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': me.csrf},
                body: JSON.stringify({node: 'valve-controller', valve: 'A', action: 'open'})});
            return [r.status, await r.json()];
        }""")
        assert status == 403
        assert body["reason"] == "open needs the operator role; oscar@127.0.0.1 is observer"
        assert lab.bank.is_open("A") is False
        # the refusal is in the events: a warning saying who, what and why
        entry = page.locator('#events li[data-kind="audit"][data-outcome="refused"]').first
        await expect(entry).to_have_attribute("data-who", "oscar@127.0.0.1")
        await expect(entry).to_have_attribute("data-level", "warning")
        await expect(entry).to_contain_text("refused: open valve-controller/A by "
                                            "oscar@127.0.0.1 as observer")
        await expect(entry).to_contain_text("needs the operator role")
        await page.screenshot(path=artifact("observer-laptop.png"), full_page=True)
        await page.close()
        assert unexpected(console, 403) == [], "\n".join(console.errors)


async def test_an_operator_logs_in_controls_and_logs_out(lab, tmp_path):
    from playwright.async_api import expect

    async with chromium(tmp_path / "profile") as ctx:
        page, console = await open_page(ctx, lab.url)
        await log_in(page, *OPERATOR)
        await expect(page.locator("#who")).to_have_attribute("data-role", "operator")
        await expect(page.locator("#control-mode")).to_have_attribute("data-control", "on")
        await expect(page.locator(".setpoint-form")).to_have_count(1)
        other, other_console = await open_page_as(ctx, lab.url, "olivia")  # same browser
        a = page.locator('.valve[data-key="valve-controller/A"]')
        await expect(a).to_have_class(re.compile(r"\bclickable\b"))
        await a.click()
        await page.locator("#confirm-ok").click()
        await expect(page.locator("#control-result")).to_have_attribute("data-outcome", "done")
        await expect(a).to_have_attribute("data-state", "open")
        assert lab.bank.is_open("A") is True
        # the dashboard's own audit event; the valve node's (by the dashboard's address, from
        # the valve node's bus topic valve-controller.audit) is listed too
        done = page.locator('#events li[data-kind="audit"][data-outcome="done"]'
                            '[data-who="olivia@127.0.0.1"]').first
        await expect(done).to_have_attribute("data-who", "olivia@127.0.0.1")
        await expect(page.locator('#events li[data-kind="audit"][data-outcome="done"]'
                                  '[data-node="valve-controller"]').first
                     ).to_contain_text("done: Open A by 127.0.0.1 as admin")
        await expect(done).to_contain_text("done: open valve-controller/A by "
                                           "olivia@127.0.0.1 as operator via web/web")
        # (the valve node's own audit of the command, from its bus, is there too)
        await expect(other.locator('#events li[data-kind="audit"][data-outcome="done"]'
                                   '[data-who="olivia@127.0.0.1"]')).to_have_count(1)
        await page.screenshot(path=artifact("operator-laptop.png"), full_page=True)
        # Log out: this page and the other one of the same session lose control.
        await page.locator("#logout").click()
        await expect(page.locator("#who")).to_have_attribute("data-identity", "")
        await expect(page.locator("#login-open")).to_be_visible()
        await expect(page.locator(".valve.clickable")).to_have_count(0)
        await expect(other.locator("#who")).to_have_attribute("data-identity", "")
        await expect(other.locator(".valve.clickable")).to_have_count(0)
        await expect(other.locator("#conn")).to_have_attribute("data-conn", "open")
        assert len(lab.web.dashboard.sessions) == 0
        for p, c in ((page, console), (other, other_console)):
            await p.close()
            assert c.errors == [], "\n".join(c.errors)


async def open_page_as(ctx, url, identity):
    from playwright.async_api import expect

    console = Console()
    page = await ctx.new_page()
    console.attach(page)
    await page.goto(url)
    await expect(page.locator("#who")).to_have_attribute("data-identity", identity)
    await expect(page.locator("#conn")).to_have_attribute("data-conn", "open")
    return page, console


async def test_without_a_role_the_page_is_only_a_login_form(tmp_path):
    from playwright.async_api import expect

    password = "a long enough password"
    # No address has a role on this node: nothing without a login.
    gate = Gate(Policy(addresses={}, identities={"olivia": Identity(
        "olivia", Role.OPERATOR, password=hash_secret(password))}, configured=True),
        node="locked")
    dash = WebDashboard(WebConfig(host="127.0.0.1", port=0, node="locked",
                                  title="Locked lab"), gate=gate)
    await dash.start()
    try:
        async with chromium(tmp_path / "profile") as ctx:
            console = Console()
            page = await ctx.new_page()
            console.attach(page)
            await page.goto(dash.url)
            login = page.locator("#login")
            await expect(login).to_be_visible()
            await expect(login).to_have_attribute("data-required", "true")
            await expect(page.locator("#login-cancel")).to_be_hidden()
            await expect(page.locator("main")).to_be_hidden()
            await expect(page.locator("#who")).to_have_attribute("data-role", "nobody")
            await page.keyboard.press("Escape")  # cannot be dismissed
            await expect(login).to_be_visible()
            assert not dash.pages  # and no WebSocket was even tried
            await page.locator("#login-user").fill("olivia")
            await page.locator("#login-password").fill("not the password")
            await page.locator("#login-submit").click()
            await expect(page.locator("#login-error")).to_have_text(
                "wrong user name or password")
            await expect(page.locator("#login-password")).to_have_value("")
            await page.screenshot(path=artifact("login-required.png"), full_page=True)
            await log_in(page, "olivia", password)
            await expect(page.locator("main")).to_be_visible()
            await expect(page.locator("#title")).to_have_text("Locked lab")
            await expect(login).to_be_hidden()
            await page.close()
            assert unexpected(console, 401) == [], "\n".join(console.errors)
    finally:
        await dash.stop()
