"""The braced channel over TLS with client certificates (issue 12 item 3), on real sockets.

A node whose command server has ``tls: {cert, key, ca}`` speaks only TLS on its TCP port and
requires a client certificate signed by the site CA; the certificate's common name names an
identity of the node's security section, whose role the gate applies. The certificates are
made by ``labbridge keys tls-ca`` / ``tls-cert`` as a user would.

* a certificate mapped to operator opens a valve and the audit trail names the identity;
* one mapped to observer reads, and is refused an actuation with ERROR 012 (nothing moves);
* a site certificate that names no identity gets ERROR 013;
* no certificate, or another CA's: the handshake is refused (one audited line, no traceback),
  nothing changes, and the server serves the next client;
* a plain-text client on the TLS port gets nothing useful and the server is not held;
* a stalled handshake holds no slot past its deadline (counted from its first byte) and is
  the first to be evicted when the server is full;
* every framing works inside TLS; UDP stays plain and read-only;
* node-file errors are one line naming the node file's line and field, and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import ssl
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from labbridge.access import DONE, REFUSED
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.client import ErrorReply, PychronClient, TlsRefused
from labbridge.links.pychron.remote import RemoteValves
from labbridge.links.pychron.server import PychronCommandServer
from labbridge.node.config import ConfigError
from labbridge.node.node import Node, build_node
from labbridge.protocol.pychron.braced import encode_braced
from labbridge.transport.tls import client_context
from tests.cli_helpers import run_cli
from tests.conftest import REPO

TIMEOUT = 10.0

SECURITY = """\
security:
  addresses:
    observer: [127.0.0.1]          # plain UDP from this machine may read
  udp_writers: []
  identities:
    alice: {role: operator, cert: alice}
    olivia: {role: observer, cert: olivia}
    ada: {role: admin, cert: ada-laptop}     # the certificate's name need not be the identity's
"""

DEVICES = """\
devices:
  - kind: valve_bank
    name: valves
    backend: {kind: sim, delay: 0.0}
    persist: false
    valves:
      - {name: A, address: 0}
      - {name: B, address: 1}
"""


def node_text(**settings: object) -> str:
    lines = [f"    {k}: {v}\n" for k, v in settings.items()]
    return ("node: tls-node\n" + SECURITY + DEVICES + "services:\n"
            "  - kind: pychron_command_server\n"
            "    name: command-server\n"
            "    port: 0\n"
            "    udp: true\n" + "".join(lines)
            + "    tls: {cert: keys/node.crt, key: keys/node.pem, ca: keys/ca.crt}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with keys/ (the site CA, the node's certificate, alice, olivia, ada-laptop
    and bob) and other/ (a stranger's CA and mallory's certificate), made by the CLI."""
    root = tmp_path_factory.mktemp("site")
    keys, other = root / "keys", root / "other"
    for args in (("tls-ca", "--dir", str(keys)),
                 ("tls-cert", "node", "--dir", str(keys), "--host", "127.0.0.1"),
                 ("tls-cert", "alice", "--dir", str(keys)),
                 ("tls-cert", "olivia", "--dir", str(keys)),
                 ("tls-cert", "ada-laptop", "--dir", str(keys)),
                 ("tls-cert", "bob", "--dir", str(keys)),
                 ("tls-ca", "--dir", str(other)),
                 ("tls-cert", "mallory", "--dir", str(other))):
        result = run_cli("keys", *args)
        assert result.returncode == 0, result.stderr
    return root


def ctx_for(site: Path, name: str | None, *, ca: str = "keys") -> ssl.SSLContext:
    """A client context trusting ``ca``'s CA, presenting ``name``'s certificate (found in
    keys/ or other/), or none."""
    if name is None:
        return client_context(site / ca / "ca.crt", check_hostname=True)
    d = site / "keys" if (site / "keys" / f"{name}.crt").exists() else site / "other"
    return client_context(site / ca / "ca.crt", d / f"{name}.crt", d / f"{name}.pem",
                          check_hostname=True)


@contextlib.asynccontextmanager
async def tls_node(site: Path, tmp_path: Path, **settings: object
                   ) -> AsyncIterator[tuple[Node, PychronCommandServer, ValveBank]]:
    # The node file sits next to keys/: its tls paths are relative to it.
    path = site / f"node-{tmp_path.name}.yaml"
    path.write_text(node_text(**settings))
    node = build_node(path, state_dir=tmp_path / "state")
    await node.start()
    try:
        server = next(s for s in node.services if isinstance(s, PychronCommandServer))
        bank = next(d for d in node.devices if isinstance(d, ValveBank))
        yield node, server, bank
    finally:
        await node.stop()


def client(server: PychronCommandServer, ssl_ctx: ssl.SSLContext | None,
           **kw: object) -> PychronClient:
    assert server.port
    return PychronClient("127.0.0.1", server.port, ssl=ssl_ctx, timeout=5.0,
                         **kw)  # type: ignore[arg-type]


async def healthy(server: PychronCommandServer, site: Path) -> None:
    """The next client with a good certificate is served."""
    async with client(server, ctx_for(site, "olivia")) as c:
        assert await asyncio.wait_for(c.ask("GetValveState B"), TIMEOUT) == "False"


def events(node: Node, outcome: str) -> list:
    return [e for e in node.ctx.gate.recent if e.outcome == outcome]


# -- identities and roles -------------------------------------------------------------------

async def test_operator_certificate_opens_a_valve_and_the_audit_names_it(site, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="labbridge.audit")
    async with tls_node(site, tmp_path) as (node, server, bank):
        async with client(server, ctx_for(site, "alice")) as c:
            act = await asyncio.wait_for(RemoteValves(c).open("A"), TIMEOUT)
            assert act.state is True and act.reply == "OK"
        assert bank.is_open("A") is True
        done = events(node, DONE)
        assert [(e.verb, e.target, e.who, e.transport, e.role) for e in done] == [
            ("Open", "A", "alice@127.0.0.1", "tls", "operator")]
        assert any("done: Open A by alice@127.0.0.1 as operator" in r.getMessage()
                   for r in caplog.records)
        # ada's certificate is named ada-laptop; the identity is ada, an admin: she may lock.
        async with client(server, ctx_for(site, "ada-laptop")) as c:
            assert await asyncio.wait_for(c.call("Lock A"), TIMEOUT) == "OK"
        assert events(node, DONE)[-1].who == "ada@127.0.0.1"
        assert bank.is_locked("A") is True


async def test_observer_certificate_reads_but_is_refused_with_error_012(site, tmp_path):
    async with tls_node(site, tmp_path) as (node, server, bank):
        async with client(server, ctx_for(site, "olivia")) as c:
            assert await asyncio.wait_for(c.ask("GetValveState A"), TIMEOUT) == "False"
            reply = await asyncio.wait_for(c.ask("Open A"), TIMEOUT)
            assert reply.startswith("ERROR 012 : ")
            assert reply.endswith("the operator role (Open). You are olivia@127.0.0.1 (observer)")
            # The connection stays usable after a refusal.
            assert await asyncio.wait_for(c.ask("GetValveState A"), TIMEOUT) == "False"
        assert bank.is_open("A") is False
        refused = events(node, REFUSED)
        assert [(e.verb, e.who, e.transport) for e in refused] == [
            ("Open", "olivia@127.0.0.1", "tls")]
        assert not events(node, DONE)


async def test_site_certificate_naming_no_identity_gets_error_013(site, tmp_path):
    async with tls_node(site, tmp_path) as (node, server, bank):
        async with client(server, ctx_for(site, "bob")) as c:
            reply = await asyncio.wait_for(c.ask("Open A"), TIMEOUT)
        assert reply == "ERROR 013 : Not an approved ip address 127.0.0.1"
        assert bank.is_open("A") is False
        (event,) = events(node, REFUSED)
        assert "'bob' is the cert of no identity" in event.reason
        await healthy(server, site)


# -- refused handshakes --------------------------------------------------------------------

@pytest.mark.parametrize("who", [None, "mallory"], ids=["no-certificate", "other-ca"])
async def test_handshake_refused_without_a_site_certificate(site, tmp_path, caplog, who):
    caplog.set_level(logging.DEBUG)
    async with tls_node(site, tmp_path) as (node, server, bank):
        async with client(server, ctx_for(site, who), retries=0) as c:
            with pytest.raises(TlsRefused, match="refused our TLS client certificate"):
                await asyncio.wait_for(c.ask("Open A"), TIMEOUT)
        assert bank.is_open("A") is False
        (event,) = events(node, REFUSED)
        assert event.verb == "connect" and event.transport == "tls"
        assert event.reason.startswith("TLS handshake failed: ")
        assert ("no client certificate" if who is None else "site CA") in event.reason
        await healthy(server, site)
    # One line on the server's side, never a traceback (nor asyncio's "Fatal error").
    server_lines = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert len(server_lines) == 1, [r.getMessage() for r in server_lines]
    assert server_lines[0].name == "labbridge.audit"
    assert not [r for r in caplog.records if r.exc_info]
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]


async def test_client_refuses_a_server_certificate_from_another_ca(site, tmp_path):
    async with tls_node(site, tmp_path) as (_node, server, bank):
        async with client(server, ctx_for(site, "mallory", ca="other"), retries=0) as c:
            with pytest.raises(TlsRefused, match="server's certificate was refused"):
                await asyncio.wait_for(c.ask("Open A"), TIMEOUT)
        assert bank.is_open("A") is False
        await healthy(server, site)


@pytest.mark.parametrize("request_bytes", [b"Open A\r", encode_braced("Open A")],
                         ids=["plain", "braced"])
async def test_plain_client_on_the_tls_port_gets_nothing_useful(site, tmp_path, request_bytes):
    async with tls_node(site, tmp_path) as (node, server, bank):
        assert server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request_bytes)
            got = b""
            with contextlib.suppress(ConnectionError):  # a reset is fine too
                got = await asyncio.wait_for(reader.read(), TIMEOUT)  # closed, not hung
        finally:
            writer.transport.abort()
        for useful in (b"OK", b"True", b"ERROR", b"False"):
            assert useful not in got
        assert bank.is_open("A") is False
        (event,) = events(node, REFUSED)
        assert "does not speak TLS" in event.reason
        await healthy(server, site)


async def trickle_until_closed(port: int, head: bytes, body: bytes,
                               interval: float) -> int:
    """Send ``head`` then ``body`` a byte per ``interval`` until the server closes; return
    the bytes of ``body`` sent by then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    closed = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        writer.write(head)
        for b in body:
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([b]))
            sent += 1
            # the trickle itself (the behaviour under test), not a synchronisation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), interval)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(closed, TIMEOUT)
        return sent
    finally:
        closed.cancel()
        writer.transport.abort()


#: The start of a TLS handshake record announcing 16 KiB: the server waits for the rest.
PARTIAL_HELLO = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"


async def test_a_trickled_handshake_is_cut_at_its_deadline_from_the_first_byte(site, tmp_path):
    async with tls_node(site, tmp_path, frame_timeout=0.5) as (node, server, _bank):
        assert server.port
        sent = await trickle_until_closed(server.port, PARTIAL_HELLO, b"\x00" * 1000, 0.05)
        assert sent < 1000  # the trickle did not extend the deadline (50 s at this pace)
        assert server.connections == 0  # no slot held
        (event,) = events(node, REFUSED)
        assert "not complete within 0.5 s of the first byte" in event.reason
        await healthy(server, site)


async def test_a_silent_connection_is_closed_without_an_audit_line(site, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with tls_node(site, tmp_path, first_request_timeout=0.3) as (node, server, _bank):
        assert server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        finally:
            writer.close()
        assert server.connections == 0
        assert not events(node, REFUSED)  # no handshake was tried: nothing to refuse
        assert any("sent nothing" in r.getMessage() for r in caplog.records)


async def test_stalled_handshakes_are_evicted_first_when_the_server_is_full(site, tmp_path):
    async with tls_node(site, tmp_path, max_connections=3, max_per_address=3,
                        frame_timeout=60) as (node, server, _bank):
        assert server.port
        stalled = []
        try:
            for _ in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(PARTIAL_HELLO)
                stalled.append((r, w))
            # The server is full of handshakes going nowhere; a real client still gets in.
            async with client(server, ctx_for(site, "alice")) as c:
                act = await asyncio.wait_for(RemoteValves(c).open("A"), TIMEOUT)
                assert act.state is True
            # ...because the stalled one idle longest was closed for it.
            first_reader = stalled[0][0]
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(first_reader.read(), TIMEOUT) == b""
            assert server._net.tcp.evicted >= 1
            assert server.connections <= 3
        finally:
            for _, w in stalled:
                w.transport.abort()
        # An eviction is the slots' business (logged by them), not a refused handshake.
        assert not events(node, REFUSED)


# -- framings and UDP -----------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["braced", "plain", "json"])
async def test_every_framing_works_inside_tls(site, tmp_path, framing):
    async with tls_node(site, tmp_path) as (node, server, bank):
        async with client(server, ctx_for(site, "alice"), framing=framing) as c:
            assert await asyncio.wait_for(c.call("Open B"), TIMEOUT) == "OK"
            assert await asyncio.wait_for(c.call("GetValveState B"), TIMEOUT) == "OK"
        assert bank.is_open("B") is True
        assert [e.who for e in events(node, DONE)] == ["alice@127.0.0.1"]


async def test_udp_stays_plain_and_read_only(site, tmp_path):
    async with tls_node(site, tmp_path) as (_node, server, bank):
        assert server.udp_port
        udp = PychronClient("127.0.0.1", server.udp_port, framing="plain", udp=True,
                            timeout=5.0)
        assert await asyncio.wait_for(udp.ask("GetValveState A"), TIMEOUT) == "False"
        with pytest.raises(ErrorReply, match="ERROR 012"):
            await asyncio.wait_for(udp.call("Open A"), TIMEOUT)
        assert bank.is_open("A") is False
    with pytest.raises(ValueError, match="UDP requests stay plain"):
        PychronClient("127.0.0.1", 1, udp=True, ssl=ctx_for(site, "alice"))


# -- clients built on PychronClient -----------------------------------------------------------

async def test_remote_manager_and_dashboard_targets_take_a_tls_section(site, tmp_path):
    import aiohttp  # noqa: F401  (the dev extra: missing means failing, not skipping)

    from labbridge.web.control import Controls

    async with tls_node(site, tmp_path) as (node, server, bank):
        acq = site / f"acq-{tmp_path.name}.yaml"
        acq.write_text(textwrap.dedent(f"""\
            node: acquisition
            services:
              - kind: remote_manager
                name: extraction-line
                host: 127.0.0.1
                port: {server.port}
                monitor: {{update_period: 0.05}}
                tls: {{ca: keys/ca.crt, cert: keys/alice.crt, key: keys/alice.pem}}
              - kind: web_dashboard
                port: 0
                control: true
                command_servers:
                  - node: tls-node
                    url: 127.0.0.1:{server.port}
                    tls: {{ca: keys/ca.crt, cert: keys/alice.crt, key: keys/alice.pem}}
            """))
        acq_node = build_node(acq, state_dir=tmp_path / "acq-state")
        manager, web = acq_node.services
        await manager.start()
        try:
            await asyncio.wait_for(manager.monitor.wait_synced(), TIMEOUT)
            assert set(manager.monitor.valves) == {"A", "B"}
            controls = Controls(web.dashboard.config.command_servers)
            try:
                result = await asyncio.wait_for(controls.valve("tls-node", "A", "open"),
                                                TIMEOUT)
            finally:
                await controls.close()
            assert result.ok, result
        finally:
            await manager.stop()
        assert bank.is_open("A") is True
        assert {e.who for e in events(node, DONE)} == {"alice@127.0.0.1"}


# -- node-file errors -----------------------------------------------------------------------

def write_node(site: Path, name: str, text: str) -> Path:
    path = site / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_missing_certificate_is_a_one_line_error_naming_the_file(site, tmp_path):
    text = node_text().replace("keys/node.crt", "keys/nope.crt")
    path = write_node(site, f"missing-{tmp_path.name}", text)
    with pytest.raises(ConfigError) as err:
        build_node(path, state_dir=tmp_path)
    line = text.splitlines().index(next(x for x in text.splitlines() if "nope.crt" in x)) + 1
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: services[0].tls.cert: cannot read "
                              f"{site / 'keys' / 'nope.crt'}: no such file")
    assert "\n" not in message


@pytest.mark.parametrize(("tls", "field", "says"), [
    ("{cert: keys/node.crt, key: keys/alice.pem, ca: keys/ca.crt}", "services[0].tls",
     "cannot use certificate"),
    ("{cert: keys/node.crt, key: keys/node.pem}", "services[0].tls.ca", "required field"),
    ("{cert: keys/node.crt, key: keys/node.pem, ca: keys/ca.crt, cipher: x}",
     "services[0].tls.cipher", "unknown"),
])
def test_tls_section_errors(site, tmp_path, tls, field, says):
    text = node_text().replace(
        "{cert: keys/node.crt, key: keys/node.pem, ca: keys/ca.crt}", tls)
    path = write_node(site, f"bad-{tmp_path.name}", text)
    with pytest.raises(ConfigError) as err:
        build_node(path, state_dir=tmp_path)
    assert f"{path}:" in str(err.value) and field in str(err.value)
    assert says in str(err.value).lower() or says in str(err.value)


@pytest.mark.parametrize(("settings", "field", "says"), [
    ({"max_per_address": 9, "max_connections": 8}, "max_per_address", "at most 8"),
    ({"max_connection_buffer": 1000}, "max_connection_buffer", "at least 65536"),
    ({"max_connection_buffer": 1048576, "max_server_buffer": 524288}, "max_server_buffer",
     "at least max_connection_buffer"),
    ({"max_per_address": "many"}, "max_per_address", "expected an integer"),
])
def test_limit_settings_are_validated(site, tmp_path, settings, field, says):
    path = write_node(site, f"limits-{tmp_path.name}", node_text(**settings))
    with pytest.raises(ConfigError, match=f"services\\[0\\].{field}: .*{says}"):
        build_node(path, state_dir=tmp_path)


def test_limit_settings_reach_the_server(site, tmp_path):
    path = write_node(site, f"limits-ok-{tmp_path.name}", node_text(
        max_connections=100, max_per_address=7, max_connection_buffer=131072,
        max_server_buffer=1048576))
    node = build_node(path, state_dir=tmp_path)
    server = next(s for s in node.services if isinstance(s, PychronCommandServer))
    s = server.settings
    assert (s.max_connections, s.max_per_address, s.max_connection_buffer,
            s.max_server_buffer) == (100, 7, 131072, 1048576)
    slots = server._net.tcp.slots
    assert (slots.max_connections, slots.max_per_address, slots.max_buffered) == (
        100, 7, 1048576)
    assert server.tls is not None
    assert "TLS" in server.endpoints()[0].purpose


def test_the_same_on_uvloop(site, tmp_path):
    """uvloop may read once more after ``pause_reading``: the first bytes must still reach
    the TLS layer in order (labbridge serve runs on uvloop when it is installed)."""
    import uvloop

    async def scenario() -> None:
        async with tls_node(site, tmp_path) as (node, server, bank):
            async with client(server, ctx_for(site, "alice")) as c:
                act = await asyncio.wait_for(RemoteValves(c).open("A"), TIMEOUT)
                assert act.state is True
            async with client(server, ctx_for(site, None), retries=0) as c:
                with pytest.raises(TlsRefused):
                    await asyncio.wait_for(c.ask("Open B"), TIMEOUT)
            for framing in ("plain", "json"):
                async with client(server, ctx_for(site, "olivia"), framing=framing) as c:
                    assert await asyncio.wait_for(c.ask("GetValveState A"), TIMEOUT) == "OK"
            assert (bank.is_open("A"), bank.is_open("B")) == (True, False)
            assert [e.outcome for e in node.ctx.gate.recent] == [DONE, REFUSED]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_the_tls_example_builds_with_keys_made_by_labbridge_keys(site, tmp_path):
    """examples/tls/valve-controller.yaml finds ../../keys (the keys directory at the top of
    a checkout, where docs/security.md makes them)."""
    dest = site / "examples" / "tls"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "tls" / "valve-controller.yaml", dest)
    node = build_node(dest / "valve-controller.yaml", state_dir=tmp_path)
    server = next(s for s in node.services if isinstance(s, PychronCommandServer))
    assert server.tls is not None and server.host == "127.0.0.1"
    assert set(node.ctx.gate.policy.identities) == {"alice", "olivia"}


async def test_the_blocking_facade_takes_the_ssl_context(site, tmp_path):
    from labbridge.links.pychron.blocking import BlockingRemoteValves

    async with tls_node(site, tmp_path) as (node, server, bank):
        def script() -> tuple[bool, dict[str, bool]]:
            with BlockingRemoteValves("127.0.0.1", server.port, timeout=5.0,
                                      ssl=ctx_for(site, "alice")) as line:
                return line.open("B").state, line.states()

        state, states = await asyncio.wait_for(asyncio.to_thread(script), TIMEOUT)
        assert state is True and states == {"A": False, "B": True}
        assert bank.is_open("B") is True
        assert [e.who for e in events(node, DONE)] == ["alice@127.0.0.1"]
