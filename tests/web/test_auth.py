"""The web dashboard's access bookkeeping (labbridge.web.auth) and what it does on a real
dashboard: sessions bounded in number and time (an ended session closes its pages), the
login limiter bounded in memory, Host and Origin rules, one-time login links (once, also
across a restart), the audit trail of other nodes from the bus (``<node>.audit``) in the
events, optional TLS (Secure cookie), and node-file mistakes named with file and line."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from labbridge.access import (
    LOOPBACK,
    Action,
    AuditEvent,
    Gate,
    Identity,
    Policy,
    Principal,
    Role,
    hash_secret,
)
from labbridge.bus.publisher import Publisher
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from labbridge.web.app import CLOSE_SESSION, WebConfig, WebDashboard
from labbridge.web.auth import (
    HostRules,
    LoginLimiter,
    OneTimeLogins,
    Sessions,
    split_host,
    split_origin,
    tls_context,
)
from labbridge.web.state import LabState
from tests.bus.helpers import until_joined

PASSWORD = "a long enough password"


def gate(node: str = "dash", **identities: Identity) -> Gate:
    policy = Policy(addresses={Role.ADMIN: LOOPBACK}, identities=dict(identities),
                    configured=True)
    return Gate(policy, node=node)


@asynccontextmanager
async def dashboard(g: Gate | None = None, monotonic=None, **kw) -> AsyncIterator[WebDashboard]:
    cfg = WebConfig(host="127.0.0.1", port=0, node="dash", stale_after=0.2, **kw)
    extra = {"monotonic": monotonic} if monotonic is not None else {}
    dash = WebDashboard(cfg, gate=g or gate(), **extra)
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()


def client(url: str, **kw) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(url, cookie_jar=aiohttp.CookieJar(unsafe=True), **kw)


# -- pure bookkeeping ---------------------------------------------------------------------------
def test_sessions_are_bounded_and_end_when_idle_or_old():
    s = Sessions(max_sessions=3, idle=10.0, lifetime=100.0)
    made = [s.create(f"u{i}", "127.0.0.1", "password", 0.0)[0] for i in range(3)]
    assert s.get(made[0].id, 1.0, touch=True) is made[0]  # u0 used: u1 is now the oldest
    fourth, evicted = s.create("u3", "127.0.0.1", "password", 2.0)
    assert evicted == [made[1]] and len(s) == 3 and s.get(made[1].id, 2.0) is None
    assert made[0].id != fourth.id and made[0].csrf != fourth.csrf and len(fourth.id) >= 40
    # idle: reads do not keep it alive, a deliberate use does
    assert s.get(made[2].id, 11.0) is None
    for t in range(9, 100, 9):
        assert s.get(fourth.id, float(t), touch=True) is fourth
    assert s.get(fourth.id, 103.0, touch=True) is None  # too old, however busy
    assert [x.identity for x in s.expire(1000.0)] == ["u0"] and len(s) == 0
    assert s.get("", 0.0) is None and s.get("unknown", 0.0) is None


def test_the_login_limiter_counts_failures_per_address_in_bounded_memory():
    lim = LoginLimiter(attempts=3, window=60.0, max_keys=100)
    for t in range(3):
        assert lim.blocked("10.0.0.1", float(t)) == (0.0, False)
        lim.failed("10.0.0.1", float(t))
    wait, first = lim.blocked("10.0.0.1", 3.0)
    assert wait == pytest.approx(57.0) and first is True
    assert lim.blocked("10.0.0.1", 4.0)[1] is False  # audited once per episode
    assert lim.blocked("10.0.0.2", 4.0) == (0.0, False)
    assert lim.blocked("10.0.0.1", 60.5) == (0.0, False)  # the window has room again
    # one IPv6 host owns a /64: its addresses share one count
    for i in range(3):
        lim.failed(f"2001:db8::{i + 1}", 0.0)
    assert lim.blocked("2001:db8::ffff", 1.0)[0] > 0
    assert lim.blocked("2001:db8:0:1::1", 1.0)[0] == 0
    assert lim.key("::ffff:10.0.0.1") == "10.0.0.1"
    for i in range(1000):  # many addresses: memory stays bounded
        lim.failed(f"10.1.{i // 250}.{i % 250}", 5.0)
    assert len(lim) == 100


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("LocalHost", ("localhost", None)),
    ("[::1]:80", ("::1", 80)), ("lab.example.org.", ("lab.example.org", None)),
    ("::1", ("::1", None)), ("[0:0::1]", ("::1", None)),
    ("a:b", None), ("host:99999", None), ("", None), ("x/y", None), ("u@h", None),
    ("[::1", None), ("[::1]x", None),
])
def test_host_headers(text, want):
    assert split_host(text) == want


def test_host_and_origin_rules():
    rules = HostRules.build("0.0.0.0", ["Lab.Example.org", "192.168.1.30"],
                            ["https://proxy.example.org"])
    assert rules.hosts == {"127.0.0.1", "localhost", "::1", "lab.example.org",
                           "192.168.1.30"}
    for ok in ("127.0.0.1:8080", "localhost", "LAB.example.org:8080", "[::1]:1"):
        assert rules.host_allowed(ok), ok
    for bad in (None, "", "0.0.0.0:8080", "evil.example:8080", "127.0.0.1.evil.example"):
        assert not rules.host_allowed(bad), bad
    host = "lab.example.org:8080"
    assert rules.origin_allowed("http://lab.example.org:8080", host)
    assert rules.origin_allowed("https://proxy.example.org", host)
    for bad in ("http://lab.example.org:8081", "http://evil.example:8080", "null",
                "http://lab.example.org:8080/x", "file://", "http://u@lab.example.org:8080"):
        assert not rules.origin_allowed(bad, host), bad
    assert rules.origin_allowed("http://localhost", "localhost")  # both on port 80
    assert not rules.origin_allowed("https://localhost", "localhost:80")
    assert split_origin("HTTPS://Lab.Example.org") == ("https", "lab.example.org", 443)
    assert HostRules.build("lab-pc").host_allowed("lab-pc:8080")  # the bind name itself


def test_one_time_links_work_once_even_across_a_restart(tmp_path):
    used = tmp_path / "state" / "web.used-logins.json"
    links = OneTimeLogins({"demo": hash_secret("tok-1", kind="token"),
                           "other": hash_secret("tok-2", kind="token")}, used)
    assert links.take("wrong") is None
    assert links.take("tok-1") == "demo"
    assert links.take("tok-1") is None
    again = OneTimeLogins(links.hashes, used)  # a restarted dashboard, same node file
    assert again.take("tok-1") is None and again.take("tok-2") == "other"
    used.write_text("{broken")
    assert OneTimeLogins(links.hashes, used).take("tok-2") is None  # unreadable: none


def test_audit_events_become_warnings_with_who_what_and_why():
    state = LabState()
    ev = AuditEvent(node="valve-controller", outcome="refused", verb="Open", target="A",
                    who="10.0.0.7", address="10.0.0.7", via="command-server",
                    transport="tcp", role="observer",
                    reason="Open needs the operator role; 10.0.0.7 is observer", ts=1000.0)
    (item,) = state.on_message("valve-controller.audit", ev.to_json(), 1001.0)
    e = item["event"]
    assert e["level"] == "warning" and e["kind"] == "audit" and e["outcome"] == "refused"
    assert e["ts"] == 1000.0 and e["who"] == "10.0.0.7"
    assert e["text"] == ("refused: Open A by 10.0.0.7 as observer via command-server/tcp: "
                         "Open needs the operator role; 10.0.0.7 is observer")
    done = {**ev.to_json(), "outcome": "done", "reason": "", "detail": "600"}
    (item,) = state.on_message("valve-controller.audit", done, 1002.0)
    assert item["event"]["level"] == "control" and "Open A (600)" in item["event"]["text"]
    for junk in ("text", 3, {"outcome": "exploded"}, None):
        assert state.on_message("valve-controller.audit", junk, 1003.0) == []
    assert "valve-controller.audit" not in state.series


# -- on a running dashboard ---------------------------------------------------------------
async def test_an_ended_session_closes_its_pages_and_the_page_is_told():
    now = [1000.0]
    g = gate(olivia=Identity("olivia", Role.OPERATOR, password=hash_secret(PASSWORD)))
    async with dashboard(g, monotonic=lambda: now[0], session_idle=60.0) as dash, \
            client(dash.url) as http:
        r = await http.post("/api/login", json={"user": "olivia", "password": PASSWORD})
        assert r.status == 200
        ws = await http.ws_connect("/ws")
        await ws.send_str('{"type": "hello"}')
        assert json.loads((await ws.receive(timeout=10)).data)["you"]["identity"] == "olivia"
        # The server's hello comes unasked: wait until it has read the page's, or the jump
        # of the clock below also makes the page a silent newcomer (closed with 4002).
        await dash.wait_pages(lambda pages: any(p.proven for p in pages))
        now[0] += 61.0  # idle for longer than session_idle: the health loop ends it
        async with asyncio.timeout(10):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    break
        assert ws.close_code == CLOSE_SESSION and len(dash.sessions) == 0
        me = await (await http.get("/api/session")).json()
        assert me["identity"] is None and me["expired"] is True and me["role"] == "observer"


async def test_a_one_time_link_logs_in_once(tmp_path):
    token = "one-time-login-token-abcdefghijklmnop"
    g = gate(demo=Identity("demo", Role.OPERATOR))
    async with dashboard(g, one_time_logins={"demo": hash_secret(token, kind="token")},
                         used_logins_file=tmp_path / "used.json") as dash:
        async with client(dash.url) as http:
            r = await http.get("/login", params={"once": token}, allow_redirects=False)
            assert r.status == 303 and r.headers["Location"] == "/"
            assert "HttpOnly" in r.headers["Set-Cookie"]
            me = await (await http.get("/api/session")).json()
            assert me["identity"] == "demo" and me["can_control"] is False  # control off
        async with client(dash.url) as http:
            r = await http.get("/login", params={"once": token}, allow_redirects=False)
            assert r.status == 303 and r.headers["Location"] == "/login#used"
            assert "Set-Cookie" not in r.headers
            assert (await (await http.get("/api/session")).json())["identity"] is None
            page = await http.get("/login")  # where the page shows its login form
            assert page.status == 200 and "login-form" in await page.text()
    (ok,) = [e for e in g.recent if e.verb == "login" and e.outcome == "done"]
    assert ok.who.startswith("demo@")  # the first use logged in, audited
    (ev,) = [e for e in g.recent if e.verb == "login" and e.outcome != "done"]
    assert ev.outcome == "refused" and ev.target == "one-time link" and token not in ev.line()


async def test_other_nodes_audit_trails_come_from_the_bus():
    pub = Publisher(port=0)
    pub.open()
    g = gate()
    try:
        async with dashboard(g, subscribe=[pub.url], push_interval=0.01) as dash, \
                aiohttp.ClientSession(dash.url) as http:
            await until_joined(dash.subscribers[0], lambda: pub.publish("n.join.marker", 0))
            ev = AuditEvent(node="valve-controller", outcome="refused", verb="Open",
                            target="A", who="10.0.0.7", address="10.0.0.7",
                            via="command-server", transport="tcp", role="observer",
                            reason="Open needs the operator role; 10.0.0.7 is observer")
            pub.publish("valve-controller.audit", ev.to_json())
            # this node's own trail comes in-process (the gate's sink), not twice
            own = AuditEvent(node="dash", outcome="done", verb="x", target="", who="a",
                             address="a", via="v", transport="web", role="admin")
            pub.publish("dash.audit", own.to_json())
            pub.publish("n.dev.done", 1.0)
            await dash.subscribers[0].wait_for(lambda t, v, m: t == "n.dev.done", timeout=10)
            events = (await (await http.get("/api/events")).json())["events"]
            audit = [e for e in events if e.get("kind") == "audit"]
            # the other node's event, once; this node's own from the bus, never (other
            # events of this node may come and go: only these two are counted)
            theirs = [e for e in audit if e["node"] == "valve-controller"]
            assert len(theirs) == 1 and theirs[0]["verb"] == "Open"
            assert theirs[0]["level"] == "warning" and theirs[0]["who"] == "10.0.0.7"
            assert "Open needs the operator role" in theirs[0]["text"]
            assert not [e for e in audit if e["node"] == "dash" and e["verb"] == "x"]
            # and this node's gate, in-process
            g.refuse(Principal("10.0.0.8", "pychron", "tcp"), Action(Role.OPERATOR, "Open", "B"),
                     "a test refusal")
            events = (await (await http.get("/api/events")).json())["events"]
            mine = [e for e in events if e.get("kind") == "audit" and e["node"] == "dash"
                    and e["reason"] == "a test refusal"]
            assert len(mine) == 1 and mine[0]["who"] == "10.0.0.8"  # in-process, once
            assert not [e for e in events if e.get("kind") == "audit" and e["verb"] == "x"]
    finally:
        pub.close()


# -- TLS ------------------------------------------------------------------------------------
def _certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    from labbridge.cli import _tls

    ca_pem, ca_key = _tls.make_ca("test CA", 1)
    cert_pem, key_pem = _tls.make_cert("web", ["127.0.0.1"], 1, ca_pem.encode(),
                                       ca_key.encode())
    paths = tmp_path / "ca.crt", tmp_path / "web.crt", tmp_path / "web.pem"
    for p, text in zip(paths, (ca_pem, cert_pem, key_pem), strict=True):
        p.write_text(text)
    return paths


async def test_tls_serves_the_page_over_https_with_a_secure_cookie(tmp_path):
    ca, cert, key = _certs(tmp_path)
    g = gate(olivia=Identity("olivia", Role.OPERATOR, password=hash_secret(PASSWORD)))
    async with dashboard(g, ssl_context=tls_context(cert, key)) as dash:
        assert dash.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(ca))  # checks the name, too
        async with client(dash.url, connector=aiohttp.TCPConnector(ssl=trust)) as http:
            r = await http.post("/api/login", json={"user": "olivia", "password": PASSWORD})
            cookie = r.headers["Set-Cookie"]
            assert cookie.startswith(f"__Host-labbridge-{dash.port}=") and "Secure" in cookie
            me = await (await http.get("/api/session")).json()
            assert me["identity"] == "olivia" and me["tls"] is True
        async with aiohttp.ClientSession() as plain:  # plain HTTP gets no page
            with pytest.raises(aiohttp.ClientError):
                await plain.get(f"http://127.0.0.1:{dash.port}/api/session")


@pytest.mark.parametrize(("service", "expect"), [
    ("tls: {cert: missing.crt, key: missing.pem}", "missing.crt: no such file"),
    ("allowed_hosts: [\"evil.example:8080\"]", "without a port"),
    ("allowed_origins: [lab.example.org]", "https://lab.example.org"),
    ("one_time_logins: {nobody: \"sha256$" + "0" * 64 + "\"}", "not an identity"),
    ("one_time_logins: {demo: plain-token}", "never the token itself"),
])
def test_node_file_mistakes_name_file_line_and_field(tmp_path, service, expect):
    cfg = tmp_path / "web.yaml"
    cfg.write_text("node: n\nsecurity:\n  identities:\n    demo: {role: operator}\n"
                   f"services:\n  - kind: web_dashboard\n    {service}\n")
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    text = str(err.value)
    assert expect in text and "web.yaml" in text and ":7" in text, text


def test_node_file_settings_reach_the_dashboard(tmp_path):
    _ca, cert, key = _certs(tmp_path)
    cfg = tmp_path / "web.yaml"
    cfg.write_text(f"""
node: n
security:
  identities: {{demo: {{role: operator}}}}
services:
  - kind: web_dashboard
    allowed_hosts: [Lab-PC.example.org, 192.168.1.30]
    allowed_origins: [https://proxy.example.org]
    tls: {{cert: {cert}, key: {key}}}
    session_idle_minutes: 5
    session_hours: 2
    login_attempts_per_minute: 3
    one_time_logins: {{demo: "{hash_secret('t', kind='token')}"}}
""")
    node = build_node(cfg, state_dir=tmp_path / "state")
    dash = node.services[0].dashboard
    c = dash.config
    assert c.allowed_hosts == ["lab-pc.example.org", "192.168.1.30"]
    assert c.ssl_context is not None and c.session_idle == 300 and c.session_lifetime == 7200
    assert c.login_attempts == 3 and list(c.one_time_logins) == ["demo"]
    assert c.used_logins_file == tmp_path / "state" / "web.used-logins.json"
    assert dash.gate is node.ctx.gate
    assert "HTTPS" in node.services[0].endpoints()[0].purpose


async def test_a_burst_of_logins_from_one_address_queues_no_more_checks_than_allowed():
    g = gate(olivia=Identity("olivia", Role.OPERATOR, password=hash_secret(PASSWORD)))
    async with dashboard(g, login_attempts=3) as dash, client(dash.url) as http:
        async def attempt() -> int:
            r = await http.post("/api/login", json={"user": "olivia", "password": "wrong!!!"})
            return r.status

        statuses = await asyncio.gather(*(attempt() for _ in range(12)))
        assert sorted(statuses) == [401] * 3 + [429] * 9
        assert len([e for e in g.recent if e.reason == "wrong user name or password"]) == 3
    # a right password is not counted against its address
    async with dashboard(g, login_attempts=2) as dash, client(dash.url) as http:
        for _ in range(3):
            r = await http.post("/api/login", json={"user": "olivia", "password": PASSWORD})
            assert r.status == 200
