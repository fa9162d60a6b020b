"""Who may use the bus (issue 12; ADR 0127), on real ZeroMQ sockets on loopback.

* With ``security.curve`` every bus socket of the node is a CurveZMQ server: a client whose
  public key is listed (observer) receives; a client with an unlisted key, with no key, or
  with a wrong server key receives nothing, and each refusal is audited once per peer.
* Without it the sockets speak plain ZeroMQ, and ZAP refuses source addresses with no role:
  Linux routes all of 127.0.0.0/8 to loopback, so a client bound to 127.0.0.2 is a distinct
  peer that the node file gives no role.
* The audit trail goes out on ``<node>.audit`` (payload ``AuditEvent.to_json()``), into the
  recorder's database, and out of ``labbridge history`` one event per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from labbridge.access import REFUSED, AuditEvent, Gate, Identity, Policy, Role
from labbridge.access.policy import LOOPBACK
from labbridge.bus.auth import ClientKeys, CurveKeyPair, read_public_key, read_secret_key
from labbridge.bus.dashboard import DashboardClient
from labbridge.bus.notifier import Notifier
from labbridge.bus.subscriber import Subscriber
from labbridge.cli.bus import history
from labbridge.cli.keys import keys as keys_cli
from labbridge.node.config import ConfigError
from labbridge.node.node import Node, build_node
from tests.cli_helpers import labbridge_cmd, run_cli
from tests.conftest import REPO

HEARTBEAT = "secure.notifier.heartbeat"


def make_keys(directory: Path, *names: str) -> dict[str, CurveKeyPair]:
    """Key pairs made by `labbridge keys curve NAME --dir DIR`, as a user makes them."""
    out = {}
    for name in names:
        res = CliRunner().invoke(keys_cli, ["curve", name, "--dir", str(directory)])
        assert res.exit_code == 0, res.output
        out[name] = read_secret_key(directory / f"{name}.key_secret")
        assert read_public_key(str(directory / f"{name}.key")) == out[name].public
    return out


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``cond()`` holds (checked every 10 ms), or fail after ``timeout``: for
    counters of the server side (ZAP decisions, retries) that have no event of their own."""
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 - a deadline-bounded condition wait
            await asyncio.sleep(0.01)


SECURE_NODE = """\
node: secure
security:
  addresses:
    admin: [127.0.0.1]
  curve:
    secret_key: keys/secure.key_secret
  identities:
    alice: {{role: observer, curve_key: "{alice}"}}
services:
  - {{kind: notifier, name: bus, port: 0, heartbeat: 0.05}}
  - {{kind: recorder, name: rec, connect: [bus], path: rec.sqlite, flush_interval: 0.05}}
"""


@contextlib.asynccontextmanager
async def secure_node(tmp_path: Path) -> AsyncIterator[tuple[Node, dict[str, CurveKeyPair]]]:
    keys = make_keys(tmp_path / "keys", "secure", "alice", "eve")
    cfg = tmp_path / "secure.yaml"
    cfg.write_text(SECURE_NODE.format(alice=keys["alice"].public.decode()))
    node = build_node(cfg, state_dir=tmp_path / "state")
    await node.start()
    try:
        yield node, keys
    finally:
        await node.stop()


def refusals(gate: Gate, text: str) -> list[AuditEvent]:
    return [e for e in gate.recent if e.outcome == REFUSED and text in e.reason]


async def test_curve_admits_listed_keys_only_and_audits_each_refused_peer_once(tmp_path):
    async with secure_node(tmp_path) as (node, keys):
        gate = node.ctx.gate
        url = node.ctx.services["bus"].pub_url
        rec = node.ctx.services["rec"].recorder
        # the recorder reaches its own node's bus with the node's own key pair
        await rec.subscriber.wait_for(lambda t, p, m: t == HEARTBEAT, timeout=10)
        server = keys["secure"].public
        alice = Subscriber(url, name="alice", curve=ClientKeys(server, keys["alice"]))
        strangers = {
            "unlisted key": Subscriber(url, name="eve", curve=ClientKeys(server, keys["eve"])),
            "no key": Subscriber(url, name="nokey"),
            "wrong server key": Subscriber(url, name="wrong-server",
                                           curve=ClientKeys(keys["eve"].public,
                                                            keys["alice"])),
        }
        seen_by_alice: list[dict] = []
        alice.add_listener(lambda t, p, m: seen_by_alice.append(p) if t == "secure.audit"
                           else None)
        await alice.start()
        try:
            # alice is in before the strangers try: she sees their refusals on the bus
            await alice.wait_for(lambda t, p, m: t == HEARTBEAT, timeout=10)
            for sub in strangers.values():
                await sub.start()
            auth = node.ctx.services["bus"].notifier.publisher.auth
            # each stranger is refused, audited, and keeps retrying (with backoff)
            await eventually(lambda: len(refusals(gate, "is not the curve_key")) == 1
                             and refusals(gate, "without a Curve key")
                             and refusals(gate, "did not decrypt") and auth.refused >= 4)
            eve = strangers["unlisted key"]
            await eventually(lambda: eve.links[eve.endpoints[0]].attempts >= 2)
            await eventually(lambda: auth.refused >= 6)
            # messages published after all that reach alice, none of the strangers
            t0 = node.ctx.services["bus"].notifier.clock()
            await alice.wait_for(lambda t, p, m: t == HEARTBEAT and m.ts > t0 + 0.1,
                                 timeout=10)
            for what, sub in strangers.items():
                assert sub.received == 0, what
                link = sub.links[sub.endpoints[0]]
                assert link.state == "down" and link.refused, (what, link.reason)
            # one audit line per refused peer and credential, not one per retry
            unlisted = refusals(gate, "is not the curve_key")
            assert len(unlisted) == 1, [e.line() for e in unlisted]
            ev = unlisted[0]
            assert ev.node == "secure" and ev.via == "bus" and ev.transport == "curve"
            assert ev.who == "127.0.0.1" and ev.verb == "subscribe"
            assert keys["eve"].public.decode()[:8] in ev.reason
            assert len(refusals(gate, "without a Curve key")) <= 2  # address known or not
            # the audit trail is on the bus: exactly the gate's events, as to_json()
            assert seen_by_alice == [e.to_json() for e in gate.recent], seen_by_alice
        finally:
            for sub in (alice, *strangers.values()):
                await sub.stop()
    # ... and in the recorder's database (it joined before any refusal), and in history
    res = CliRunner().invoke(history, ["secure.audit", "--db",
                                       str(tmp_path / "state" / "rec.sqlite")])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if " secure.audit " in ln]
    assert any(ln.endswith(f"refused: subscribe bus by 127.0.0.1 as nobody via bus/curve: "
                           f"{ev.reason}") for ln in lines), lines
    assert any("without a Curve key" in ln for ln in lines), lines
    assert all('"outcome"' not in ln for ln in lines), lines  # readable lines, not JSON


async def test_curve_rep_answers_listed_keys_only(tmp_path):
    async with secure_node(tmp_path) as (node, keys):
        notifier = node.ctx.services["bus"].notifier
        server = keys["secure"].public

        async def ping(pair: CurveKeyPair | None, server_key: bytes = server) -> bool:
            client = DashboardClient("127.0.0.1", port=notifier.port,
                                     rep_port=notifier.rep_port, request_timeout=1.0,
                                     curve=None if pair is None else ClientKeys(server_key,
                                                                                pair))
            try:
                return await client.ping(timeout=1.0)
            finally:
                await client.close()

        assert await ping(keys["alice"])
        assert not await ping(keys["eve"])
        assert not await ping(None)
        rep = [e for e in refusals(node.ctx.gate, "") if e.verb == "request"]
        assert {e.via for e in rep} == {"bus"} and len(rep) >= 2, [e.line() for e in rep]


async def test_rep_request_that_changes_state_needs_operator(tmp_path):
    """A notifier request registered with a role above observer is checked per request by
    the gate, and its outcome audited: an observer's key is refused, an operator's works."""
    keys = make_keys(tmp_path, "node", "alice", "bob")
    policy = Policy(addresses={Role.ADMIN: LOOPBACK}, configured=True, identities={
        "alice": Identity("alice", Role.OBSERVER, curve_key=keys["alice"].public.decode()),
        "bob": Identity("bob", Role.OPERATOR, curve_key=keys["bob"].public.decode())})
    gate = Gate(policy, node="n")
    calls: list[str] = []
    n = Notifier(port=0, node="n", heartbeat=None, gate=gate, curve=keys["node"], via="bus")
    n.add_request_handler("reset", lambda args: calls.append(args) or "done",
                          role=Role.OPERATOR)
    await n.start()
    try:
        async def ask(who: str) -> bytes:
            client = DashboardClient("127.0.0.1", port=n.port, rep_port=n.rep_port,
                                     curve=ClientKeys(keys["node"].public, keys[who]))
            try:
                return await client.request("reset counters", timeout=5)
            finally:
                await client.close()

        assert await ask("alice") == (b"error access denied: reset needs the operator role; "
                                      b"alice@127.0.0.1 is observer")
        assert calls == []
        assert await ask("bob") == b"done"
        assert calls == ["counters"]
    finally:
        await n.stop()
    lines = [e.line() for e in gate.recent]
    assert lines == [
        "refused: reset bus (counters) by alice@127.0.0.1 as observer via bus/curve: reset "
        "needs the operator role; alice@127.0.0.1 is observer",
        "done: reset bus (counters) by bob@127.0.0.1 as operator via bus/curve"], lines


NULL_NODE = """\
node: plain
security:
  addresses:
    admin: [127.0.0.1]
services:
  - {kind: notifier, name: bus, port: 0, heartbeat: 0.05}
"""


async def test_plain_bus_refuses_addresses_with_no_role(tmp_path):
    cfg = tmp_path / "plain.yaml"
    cfg.write_text(NULL_NODE)
    node = build_node(cfg, state_dir=tmp_path / "state")
    await node.start()
    try:
        bus = node.ctx.services["bus"]
        port = bus.notifier.port
        heartbeat = "plain.notifier.heartbeat"
        admitted = Subscriber(f"tcp://127.0.0.1:{port}", name="admitted")
        # ZeroMQ's "source;destination" form: connect from 127.0.0.2
        stranger = Subscriber(f"tcp://127.0.0.2:0;127.0.0.1:{port}", name="stranger")
        audit: list[dict] = []
        admitted.add_listener(lambda t, p, m: audit.append(p) if t == "plain.audit" else None)
        await admitted.start()
        try:
            await admitted.wait_for(lambda t, p, m: t == heartbeat, timeout=10)
            await stranger.start()
            gate = node.ctx.gate
            await eventually(lambda: bool(refusals(gate, "127.0.0.2 has no access")))
            t0 = bus.notifier.clock()
            await admitted.wait_for(lambda t, p, m: t == heartbeat and m.ts > t0 + 0.1,
                                    timeout=10)
            assert stranger.received == 0
            ev = refusals(gate, "127.0.0.2 has no access")[0]
            assert (ev.who, ev.via, ev.transport, ev.role) == ("127.0.0.2", "bus", "tcp",
                                                              "nobody")
            # the stranger's refusal went out on the bus to the admitted subscriber
            assert audit == [ev.to_json()]
        finally:
            await admitted.stop()
            await stranger.stop()
    finally:
        await node.stop()


# -- configuration errors ----------------------------------------------------------------------
def _node_with(tmp_path: Path, security: str, services: str = "") -> Path:
    cfg = tmp_path / "n.yaml"
    cfg.write_text("node: n\n" + security + "services:\n"
                   "  - {kind: notifier, name: bus, port: 0}\n" + services)
    return cfg


def test_curve_secret_key_must_exist_and_be_private(tmp_path):
    sec = "security:\n  curve:\n    secret_key: keys/n.key_secret\n"
    cfg = _node_with(tmp_path, sec)
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    missing = tmp_path / "keys" / "n.key_secret"
    assert str(err.value) == (f"{cfg}:4: security.curve.secret_key: {missing}: no such file; "
                              "make this computer's key pair with `labbridge keys curve n "
                              f"--dir {tmp_path / 'keys'}`")
    make_keys(tmp_path / "keys", "n")
    build_node(cfg)  # as made by `labbridge keys curve`: fine
    os.chmod(missing, 0o644)
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    assert str(err.value) == (f"{cfg}:4: security.curve.secret_key: {missing} can be read by "
                              f"other users (mode 644); a secret key must be private: chmod "
                              f"600 {missing}")
    os.chmod(missing, 0o600)
    (tmp_path / "keys" / "n.key").rename(tmp_path / "keys" / "pub")
    os.chmod(tmp_path / "keys" / "pub", 0o600)
    cfg.write_text(cfg.read_text().replace("n.key_secret", "pub"))
    with pytest.raises(ConfigError, match=r"security\.curve\.secret_key: .* holds no "
                                          r"secret-key line"):
        build_node(cfg)


def test_client_keys_in_node_files_are_checked(tmp_path):
    keys = make_keys(tmp_path / "keys", "n", "rec")
    os.chmod(tmp_path / "keys" / "rec.key_secret", 0o640)
    entry = ("  - kind: recorder\n    connect:\n      - bus\n"
             "      - {url: 127.0.0.1:5999, server_key: keys/n.key, "
             "client_key: keys/rec.key_secret}\n")
    cfg = _node_with(tmp_path, "", entry)
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    assert str(err.value).startswith(f"{cfg}:7: services[1].connect[1].client_key: ")
    assert "can be read by other users (mode 640)" in str(err.value)
    os.chmod(tmp_path / "keys" / "rec.key_secret", 0o600)
    node = build_node(cfg)
    target = node.ctx.services["recorder-1"].targets[1]
    assert target.keys is not None and target.keys.server_key == keys["n"].public
    cfg.write_text(cfg.read_text().replace(", client_key: keys/rec.key_secret", ""))
    with pytest.raises(ConfigError, match=r"connect\[1\]\.server_key: server_key needs "
                                          "client_key too"):
        build_node(cfg)


def test_dashboard_client_and_remote_manager_take_keys(tmp_path):
    keys = make_keys(tmp_path / "keys", "n", "me")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "node: c\nservices:\n"
        "  - {kind: dashboard_client, name: dc, host: 127.0.0.1, port: 8100, "
        "server_key: keys/n.key, client_key: keys/me.key_secret}\n"
        "  - {kind: remote_manager, name: rm, host: 127.0.0.1, port: 1061, "
        f"bus: {{url: 'tcp://127.0.0.1:5555', server_key: '{keys['n'].public.decode()}', "
        "client_key: keys/me.key_secret}}\n")
    node = build_node(cfg)
    client = node.ctx.services["dc"].client
    assert client.curve == ClientKeys(keys["n"].public, keys["me"])
    manager = node.ctx.services["rm"]
    url = manager.bus_url()
    assert url == "tcp://127.0.0.1:5555" and url.curve == ClientKeys(keys["n"].public,
                                                                       keys["me"])


# -- the commands ---------------------------------------------------------------------------------
async def test_watch_with_keys_and_one_line_key_errors(tmp_path):
    async with secure_node(tmp_path) as (node, _):
        url = node.ctx.services["bus"].pub_url
        kdir = tmp_path / "keys"
        proc = await asyncio.create_subprocess_exec(
            *labbridge_cmd("watch", url, HEARTBEAT, "--count", "1", "--server-key",
                  str(kdir / "secure.key"), "--client-key", str(kdir / "alice.key_secret")),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert f" {HEARTBEAT} #" in out.decode()
    os.chmod(kdir / "alice.key_secret", 0o644)
    res = run_cli("watch", url, "--server-key", str(kdir / "secure.key"), "--client-key",
                  str(kdir / "alice.key_secret"))
    assert res.returncode == 2
    errline = res.stderr.strip().splitlines()[-1]
    assert errline.startswith(
        f"Error: Invalid value for --client-key: {kdir / 'alice.key_secret'} can be read by "
        f"other users (mode 644); a secret key must be private: chmod 600 "
        f"{kdir / 'alice.key_secret'}"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = run_cli("record", url, "--server-key", str(kdir / "secure.key"))
    assert res.returncode == 2 and "--server-key needs --client-key too" in res.stderr
    assert "Traceback" not in res.stderr


def test_zap_refusal_is_not_one_audit_per_retry_even_across_many_peers():
    """The memory of refused peers is bounded: the oldest is forgotten first."""
    from labbridge.bus import auth

    guard = auth.server_auth(Gate(node="n"), "bus", "subscribe", None)
    for i in range(auth.MAX_REMEMBERED + 10):
        ok, _ = guard.authorize(f"10.0.{i // 250}.{i % 250}", b"NULL", [])
        assert not ok
    assert guard.refused == auth.MAX_REMEMBERED + 10
    assert len(guard._refused) == auth.MAX_REMEMBERED
    ok, user = guard.authorize("127.0.0.1", b"NULL", [])
    assert ok and user == b""
    ok, _ = guard.authorize("127.0.0.1", b"PLAIN", [b"u", b"p"])
    assert not ok


def test_zap_handler_answers_malformed_requests():
    from labbridge.bus import auth

    server = auth._ZapServer(zmq.Context.instance())
    assert server.answer([b"2.0", b"1"])[2] == b"500"
    assert server.answer([b"1.0", b"7", b"no-such-domain", b"127.0.0.1", b"", b"NULL"]) == [
        b"1.0", b"7", b"400", b"unknown domain", b"", b""]



CYCLES = textwrap.dedent("""
    import asyncio, sys
    from labbridge.access import LOOPBACK, Gate, Identity, Policy, Role
    from labbridge.bus.auth import ClientKeys, CurveKeyPair
    from labbridge.bus.dashboard import DashboardClient
    from labbridge.bus.notifier import Notifier
    from labbridge.bus.subscriber import Subscriber

    async def curve_node():
        node, alice = CurveKeyPair.generate(), CurveKeyPair.generate()
        policy = Policy(addresses={Role.ADMIN: LOOPBACK}, configured=True, identities={
            "alice": Identity("alice", Role.OBSERVER, curve_key=alice.public.decode())})
        n = Notifier(port=0, node="n", heartbeat=None, gate=Gate(policy), curve=node)
        await n.start()
        c = DashboardClient("127.0.0.1", port=n.port, rep_port=n.rep_port,
                            curve=ClientKeys(node.public, alice))
        assert await c.ping(timeout=5)
        await c.close()
        await n.stop()

    async def plain_node():
        n = Notifier(port=0, node="p", heartbeat=0.02)
        await n.start()
        s = Subscriber(n.pub_url)
        await s.start()
        await s.wait_for(timeout=5)
        await s.stop()
        await n.stop()

    for i in range(int(sys.argv[1])):
        asyncio.run(curve_node())   # each on its own loop, as tests and restarts do
        asyncio.run(plain_node())
    print("ok")
""")


def test_bus_sockets_come_and_go_across_event_loops():
    """Nodes with Curve started and stopped, each on a new event loop, then plain ones: the
    ZAP handler follows the running loop, and no monitor left on a closed socket freezes
    ZeroMQ's I/O thread (the REP socket's handshake monitor is closed before the socket).
    In a child process with a deadline: a regression fails instead of hanging the run."""
    proc = subprocess.run([sys.executable, "-c", CYCLES, "8"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_an_identity_curve_key_may_be_its_public_key_file(tmp_path):
    keys = make_keys(tmp_path / "keys", "n", "rec")
    cfg = _node_with(tmp_path, "security:\n  identities:\n"
                                "    rec: {role: observer, curve_key: keys/rec.key}\n")
    node = build_node(cfg)
    ident = node.ctx.gate.policy.identity_for_curve_key(keys["rec"].public.decode())
    assert ident is not None and ident.name == "rec"
    cfg.write_text(cfg.read_text().replace("keys/rec.key", "keys/nobody.key"))
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    # a file name (NAME.key): the file's trouble, and the command that makes its pair
    assert str(err.value) == (
        f"{cfg}:4: security.identities.rec.curve_key: {tmp_path / 'keys' / 'nobody.key'}: no "
        "such file; it is the public key of nobody: copy nobody.key from the computer that "
        "made it, or make the pair here with `labbridge keys curve nobody --dir "
        f"{tmp_path / 'keys'}`")
    cfg.write_text(cfg.read_text().replace("keys/nobody.key", "not-a-key"))
    with pytest.raises(ConfigError) as err:
        build_node(cfg)
    assert str(err.value).startswith(f"{cfg}:4: security.identities.rec.curve_key: a Curve "
                                     "public key is 40 Z85 characters or the NAME.key file")
