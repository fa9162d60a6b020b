"""Access to the web dashboard (issue 12 item 4, "what it must show" for the web), over real
HTTP and WebSocket connections to the simulated lab (tests/web/lab.py: 127.0.0.1 admin,
127.0.0.2 observer, 127.0.0.3 nobody; olivia operator, oscar observer, robot an operator's
token): no session -> no control and nothing changes; an address with no role -> 401
everywhere; an observer session sees everything and changes nothing; an operator controls and
the gate audits it with her name; missing or wrong CSRF token, forged Host, foreign Origin on
POST and on the WebSocket -> refused; logout ends the session; failed logins are audited
without the password and limited per address."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from labbridge.web.app import CLOSE_SESSION
from tests.web.lab import OBSERVER, OPERATOR, TOKEN, login, start_lab

VALVE = "/api/control/valve"
SETPOINT = "/api/control/setpoint"
OPEN_A = {"node": "valve-controller", "valve": "A", "action": "open"}
SET_500 = {"node": "furnace-controller", "device": "furnace", "value": 500}


@pytest.fixture
async def lab(tmp_path):
    lab = await start_lab(tmp_path)
    try:
        yield lab
    finally:
        await lab.stop()


@asynccontextmanager
async def client(lab, address: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client from ``address`` that keeps the dashboard's cookie."""
    conn = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(lab.url, connector=conn,
                                     cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield http


def audit(lab, **want):
    """The dashboard node's audit events matching every ``want`` field."""
    return [e for e in lab.gate.recent if all(getattr(e, k) == v for k, v in want.items())]


def nothing_changed(lab) -> None:
    assert lab.bank.is_open("A") is False
    assert lab.furnace.setpoint != 500


async def hello(ws) -> dict:
    await ws.send_str('{"type": "hello"}')
    msg = json.loads((await ws.receive(timeout=10)).data)
    assert msg["type"] == "hello"
    return msg


async def test_no_session_reads_but_cannot_control_and_nothing_changes(lab):
    async with client(lab) as http:
        me = await (await http.get("/api/session")).json()
        # loopback is admin in the node file, but a browser without a login is an observer
        assert me["identity"] is None and me["role"] == "observer"
        assert me["can_control"] is False and me["csrf"] is None
        assert (await http.get("/api/devices")).status == 200
        async with http.ws_connect("/ws") as ws:
            assert (await hello(ws))["you"]["role"] == "observer"
        r = await http.post(VALVE, json=OPEN_A)
        body = await r.json()
        assert r.status == 403 and body["outcome"] == "refused" and "log in" in body["reason"]
        r = await http.post(SETPOINT, json=SET_500)
        assert r.status == 403
        # a wrong token is refused, never taken as "no token"
        r = await http.post(VALVE, json=OPEN_A, headers={"Authorization": "Bearer nope"})
        assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
    nothing_changed(lab)
    refused = audit(lab, outcome="refused", verb="open", target="valve-controller/A")
    assert refused and refused[0].who == "127.0.0.1" and refused[0].via == "web"
    assert refused[0].transport == "web" and "log in" in refused[0].reason
    assert audit(lab, outcome="refused", verb="setpoint")
    assert audit(lab, outcome="refused", verb="login", target="token",
                 reason="unknown token")
    assert not audit(lab, outcome="done")


async def test_an_address_without_a_role_gets_401_and_may_still_log_in(lab):
    async with client(lab, "127.0.0.3") as http:
        me = await (await http.get("/api/session")).json()
        assert me["role"] == "nobody" and me["login"] is True
        for path in ("/api/devices", "/api/config", "/api/events", "/api/nodes",
                     "/api/history"):
            r = await http.get(path)
            assert r.status == 401, path
            assert (await r.json())["login"] is True
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect("/ws")
        assert err.value.status == 401
        assert (await http.post(VALVE, json=OPEN_A)).status == 401
        nothing_changed(lab)
        assert audit(lab, outcome="refused", verb="read", who="127.0.0.3")
        # the page itself is served (it shows the login form), and a login works from here
        assert (await http.get("/")).status == 200
        csrf = await login(http, *OPERATOR)
        assert (await http.get("/api/devices")).status == 200
        r = await http.post(VALVE, json=OPEN_A, headers=csrf)
        assert (await r.json())["outcome"] == "done"
    assert lab.bank.is_open("A") is True
    assert audit(lab, outcome="done", verb="open", who="olivia@127.0.0.3")


async def test_observer_session_sees_everything_and_changes_nothing(lab):
    async with client(lab) as http:
        csrf = await login(http, *OBSERVER)
        me = await (await http.get("/api/session")).json()
        assert me["role"] == "observer" and me["can_control"] is False
        devices = await (await http.get("/api/devices")).json()
        assert "valves" in devices and "series" in devices
        async with http.ws_connect("/ws") as ws:
            you = (await hello(ws))["you"]
            assert you == {"identity": "oscar", "role": "observer", "can_control": False}
        r = await http.post(VALVE, json=OPEN_A, headers=csrf)
        body = await r.json()
        assert r.status == 403 and body["outcome"] == "refused"
        assert body["reason"] == "open needs the operator role; oscar@127.0.0.1 is observer"
        r = await http.post(SETPOINT, json=SET_500, headers=csrf)
        assert r.status == 403 and "operator" in (await r.json())["reason"]
    nothing_changed(lab)
    (ev,) = audit(lab, outcome="refused", verb="open")
    assert ev.who == "oscar@127.0.0.1" and ev.role == "observer"


async def test_operator_controls_and_the_gate_audits_her_name(lab):
    async with client(lab) as http:
        csrf = await login(http, *OPERATOR)
        me = await (await http.get("/api/session")).json()
        assert me["role"] == "operator" and me["can_control"] is True
        async with http.ws_connect("/ws") as ws:
            await hello(ws)
            r = await http.post(VALVE, json=OPEN_A, headers=csrf)
            assert (await r.json())["outcome"] == "done"
            # the audit event reaches the open page's events panel (so does the valve
            # node's own audit of the command, from its bus topic valve-controller.audit)
            events = []
            while not any(e["who"] == "olivia@127.0.0.1" for e in events):
                msg = json.loads((await ws.receive(timeout=10)).data)
                events += [it["event"] for it in msg.get("items", [])
                           if it["type"] == "event" and it["event"].get("kind") == "audit"]
            events = [e for e in events if e["who"] == "olivia@127.0.0.1"]
        assert events[0]["who"] == "olivia@127.0.0.1" and events[0]["outcome"] == "done"
        assert events[0]["level"] == "control"
        assert "open valve-controller/A by olivia@127.0.0.1 as operator" in events[0]["text"]
        r = await http.post(SETPOINT, json=SET_500, headers=csrf)
        assert (await r.json())["outcome"] == "done"
        listed = (await (await http.get("/api/events")).json())["events"]
        assert any(e.get("kind") == "audit" and e["verb"] == "setpoint" for e in listed)
    assert lab.bank.is_open("A") is True and lab.furnace.setpoint == 500
    (ev,) = audit(lab, outcome="done", verb="open")
    assert ev.who == "olivia@127.0.0.1" and ev.target == "valve-controller/A"
    assert ev.role == "operator" and ev.via == "web"
    (ev,) = audit(lab, outcome="done", verb="setpoint")
    assert ev.detail == "500" and ev.who == "olivia@127.0.0.1"


async def test_a_script_with_a_token_controls_without_a_cookie(lab):
    async with aiohttp.ClientSession(lab.url) as http:
        r = await http.post(VALVE, json=OPEN_A, headers={"Authorization": f"Bearer {TOKEN}"})
        assert (await r.json())["outcome"] == "done"
    assert lab.bank.is_open("A") is True
    assert audit(lab, outcome="done", verb="open", who="robot@127.0.0.1")


async def test_missing_or_wrong_csrf_token_is_refused(lab):
    async with client(lab) as http:
        csrf = await login(http, *OPERATOR)
        r = await http.post(VALVE, json=OPEN_A)
        assert r.status == 403 and "CSRF" in (await r.json())["error"]
        r = await http.post(VALVE, json=OPEN_A, headers={"X-CSRF-Token": "forged"})
        assert r.status == 403
        r = await http.post(SETPOINT, json=SET_500, headers={"X-CSRF-Token": ""})
        assert r.status == 403
        nothing_changed(lab)
        (ev,) = audit(lab, outcome="refused", reason="missing or wrong CSRF token")
        assert ev.who == "olivia@127.0.0.1"  # identical refusals are audited once
        # logging out needs it too
        assert (await http.post("/api/logout")).status == 403
        assert (await (await http.get("/api/session")).json())["identity"] == "olivia"
        r = await http.post(VALVE, json=OPEN_A, headers=csrf)
        assert (await r.json())["outcome"] == "done"


async def test_a_forged_host_is_refused_on_every_request(lab):
    port = lab.web.dashboard.port
    forged = {"Host": f"attacker.example:{port}"}  # what a DNS-rebinding page sends
    async with client(lab) as http:
        csrf = await login(http, *OPERATOR)
        for path in ("/", "/api/session", "/api/devices", "/static/app.js"):
            r = await http.get(path, headers=forged)
            assert r.status == 421, path
            assert "allowed_hosts" in (await r.json())["error"]
        r = await http.post(VALVE, json=OPEN_A, headers={**forged, **csrf})
        assert r.status == 421
        r = await http.post("/api/login", json={"user": OPERATOR[0], "password": OPERATOR[1]},
                            headers=forged)
        assert r.status == 421
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect("/ws", headers=forged)
        assert err.value.status == 421
        nothing_changed(lab)
        # the names of this machine are allowed
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
            assert (await http.get("/api/session", headers={"Host": host})).status == 200
    ev = audit(lab, outcome="refused", verb="request")
    assert ev and "attacker.example" in ev[0].reason


async def test_a_foreign_origin_is_refused_on_post_and_on_the_websocket(lab):
    port = lab.web.dashboard.port
    async with client(lab) as http:
        csrf = await login(http, *OPERATOR)
        for origin in ("http://evil.example", f"http://localhost:{port + 1}",
                       f"https://127.0.0.1:{port}.evil.example", "null"):
            r = await http.post(VALVE, json=OPEN_A, headers={"Origin": origin, **csrf})
            assert r.status == 403, origin
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect("/ws", origin=origin)
            assert err.value.status == 403, origin
        r = await http.post("/api/login", json={"user": OPERATOR[0], "password": OPERATOR[1]},
                            headers={"Origin": "http://evil.example"})
        assert r.status == 403 and "Set-Cookie" not in r.headers
        nothing_changed(lab)
        ev = audit(lab, outcome="refused", who="olivia@127.0.0.1")
        assert ev and "another site" in ev[0].reason
        # the page's own origin passes
        own = f"http://127.0.0.1:{port}"
        async with http.ws_connect("/ws", origin=own) as ws:
            assert (await hello(ws))["you"]["identity"] == "olivia"
        r = await http.post(VALVE, json=OPEN_A, headers={"Origin": own, **csrf})
        assert (await r.json())["outcome"] == "done"


async def test_logout_ends_the_session_and_its_pages(lab):
    async with client(lab) as http:
        csrf = await login(http, *OPERATOR)
        cookie = {c.key: c.value for c in http.cookie_jar}
        ws = await http.ws_connect("/ws")
        await hello(ws)
        r = await http.post("/api/logout", headers=csrf)
        assert r.status == 200
        while True:  # the page of the ended session is closed with the "session" code
            msg = await ws.receive(timeout=10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
        assert ws.close_code == CLOSE_SESSION
        me = await (await http.get("/api/session")).json()
        assert me["identity"] is None and me["role"] == "observer"
    # the old cookie, replayed, is nobody's session any more
    replayed = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookie.items())}
    async with aiohttp.ClientSession(lab.url) as replay:
        me = await (await replay.get("/api/session", headers=replayed)).json()
        assert me["identity"] is None and me["expired"] is True
        r = await replay.post(VALVE, json=OPEN_A, headers={**replayed, **csrf})
        assert r.status == 403 and "log in" in (await r.json())["reason"]
    nothing_changed(lab)


async def test_the_session_cookie_and_the_pages_headers(lab):
    port = lab.web.dashboard.port
    async with client(lab) as http:
        r = await http.post("/api/login", json={"user": OPERATOR[0], "password": OPERATOR[1]})
        cookie = r.headers["Set-Cookie"]
        assert cookie.startswith(f"labbridge-{port}=")
        flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
        assert "httponly" in flags and flags["samesite"] == "SameSite=Strict"
        assert flags["path"] == "Path=/" and "secure" not in flags  # no TLS here
        r = await http.get("/")
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
        r = await http.get("/api/session")
        assert r.headers["Cache-Control"] == "no-store"


async def test_failed_logins_are_audited_without_the_password_and_limited(lab, caplog):
    caplog.set_level(logging.INFO)
    secret = "not-her-password-but-a-secret"
    async with client(lab) as http:
        for _ in range(5):  # the lab allows 5 failures a minute per address
            r = await http.post("/api/login", json={"user": "olivia", "password": secret})
            assert r.status == 401 and (await r.json())["error"] == "wrong user name or password"
        r = await http.post("/api/login", json={"user": "nosuchuser", "password": secret})
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0
        # limited: even the right password is not looked at now
        r = await http.post("/api/login", json={"user": OPERATOR[0], "password": OPERATOR[1]})
        assert r.status == 429 and "Set-Cookie" not in r.headers
        r = await http.post(VALVE, json=OPEN_A, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 429  # tokens count as logins
    async with client(lab, "127.0.0.2") as other:  # another address is not held up
        await login(other, *OPERATOR)
    nothing_changed(lab)
    wrong = audit(lab, outcome="refused", verb="login", target="olivia",
                  reason="wrong user name or password")
    assert len(wrong) == 5  # each failure, once
    limited = [e for e in audit(lab, outcome="refused", verb="login")
               if "too many failed logins" in e.reason]
    assert len(limited) == 1  # once per episode, not per attempt
    everything = [rec.getMessage() for rec in caplog.records]
    everything += [json.dumps(e.to_json()) for e in lab.gate.recent]
    assert not any(secret in line for line in everything)
    assert not any(OPERATOR[1] in line for line in everything)
