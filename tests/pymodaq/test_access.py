"""Access on the PyMoDAQ link (issue 12), on real loopback sockets.

Linux routes all of 127.0.0.0/8 to loopback, so a client bound to 127.0.0.2, .3 or .4 is a
distinct peer address: the node file below makes .2 an operator, .3 an observer and gives .4
nothing (127.0.0.1 is admin). Over TLS the client certificate's common name is the identity.

What each test shows: a peer that may not register a module changes nothing (the node's remote
actuator and detector keep their client, or stay without one), is dropped with a reset (what
stops a real PyMoDAQ client), and the refusal is in the audit trail with its reason; an
operator registers and replaces, audited with its address or identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labbridge.access import (
    AccessDenied,
    Action,
    AuditEvent,
    Gate,
    Identity,
    Policy,
    Principal,
    Role,
)
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient, PyMoDAQServer
from labbridge.node.config import ConfigError
from labbridge.node.node import Node, build_node
from labbridge.protocol.pymodaq.g3 import encode_message
from labbridge.protocol.pymodaq.messages import Generation, SetInfo
from labbridge.protocol.pymodaq.settings_xml import settings_to_xml
from labbridge.transport.tls import client_context, server_context
from tests.pymodaq.conftest import RecordingCamera, fast_backoff

ADMIN, OPERATOR, OBSERVER, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
DEADLINE = 10.0

NODE = """\
node: pmd-secured
security:
  addresses:
    admin: [127.0.0.1]
    operator: [127.0.0.2]
    observer: [127.0.0.3]
  identities:
    camera-pc: {role: operator, cert: camera-pc}
    viewer-pc: {role: observer, cert: viewer-pc}
services:
  - kind: pymodaq_server
    name: pmd
    port: 0
    actuator: remote_stage
    detector: remote_camera
    timeout: 5
  - kind: pymodaq_server
    name: pmd-tls
    port: 0
    actuator: tls_stage
    detector: tls_camera
    timeout: 5
    tls: {cert: keys/main.crt, key: keys/main.pem, ca: keys/ca.crt}
"""


def make_site(d: Path, *names: str, ca: bool = True) -> Path:
    """A site CA in ``d`` (as `labbridge keys tls-ca` makes it) and certificates for
    ``names`` (as `labbridge keys tls-cert NAME --host 127.0.0.1` does: each can serve on
    127.0.0.1 and act as a client)."""
    from labbridge.cli import _tls

    d.mkdir(parents=True, exist_ok=True)
    if ca:
        cert, key = _tls.make_ca("test site CA", 30)
        (d / "ca.crt").write_text(cert)
        (d / "ca.pem").write_text(key)
    for name in names:
        cert, key = _tls.make_cert(name, ["127.0.0.1"], 30, (d / "ca.crt").read_bytes(),
                                   (d / "ca.pem").read_bytes())
        (d / f"{name}.crt").write_text(cert)
        (d / f"{name}.pem").write_text(key)
    return d


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, Path]:
    import cryptography  # noqa: F401  (the dev extra: missing means failing, not skipping)
    root = tmp_path_factory.mktemp("site")
    keys = make_site(root / "keys", "main", "camera-pc", "viewer-pc", "unknown-pc")
    other = make_site(root / "other", "camera-pc")  # another CA, same common name
    return keys, other


@contextlib.asynccontextmanager
async def secured_node(tmp_path: Path, site: tuple[Path, Path]
                       ) -> AsyncIterator[tuple[Node, dict[str, int]]]:
    keys, _ = site
    (tmp_path / "keys").symlink_to(keys)
    path = tmp_path / "node.yaml"
    path.write_text(NODE)
    node = build_node(path, state_dir=tmp_path / "state")
    await node.start()
    try:
        yield node, {ep.service: int(ep.port) for ep in node.endpoints()
                     if ep.role == "listen" and ep.port}
    finally:
        await node.stop()


class Audit:
    """The gate's audit events as they come, with a way to wait for one."""

    def __init__(self, gate: Gate) -> None:
        self.events: list[AuditEvent] = []
        self._new = asyncio.Event()
        gate.add_sink(self._add)

    def _add(self, event: AuditEvent) -> None:
        self.events.append(event)
        self._new.set()

    async def wait(self, **match: Any) -> AuditEvent:
        async def find() -> AuditEvent:
            while True:
                for e in self.events:
                    if all(getattr(e, k) == v for k, v in match.items()):
                        return e
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(find(), DEADLINE)


XML = settings_to_xml({"units": "mm"}, root=("move_settings", "Actuator Settings:"))


def hello(kind: str = "ACTUATOR") -> bytes:
    """What a G3 client sends first: its type, then Infos with its settings."""
    return encode_message(kind) + encode_message("Infos") + encode_message(XML.encode())


async def raw_peer(port: int, source: str, data: bytes) -> tuple[bytes, str]:
    """Connect from ``source``, send ``data``, read until the server ends the connection:
    (what it sent, how it ended: "reset" or "eof")."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), DEADLINE)
    except ConnectionResetError:  # loaded machine: the reset came before connect() returned
        return b"", "reset"
    got = b""
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), DEADLINE)
            except ConnectionResetError:
                return got, "reset"
            if not chunk:
                return got, "eof"
            got += chunk
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def stage(name: str = "stage", position: float = 0.0) -> Stage:
    return Stage(name, SimStageBackend(position=position), units="mm")


@contextlib.asynccontextmanager
async def running(client: PyMoDAQClient) -> AsyncIterator[PyMoDAQClient]:
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


# --- roles by source address (plain TCP: what real PyMoDAQ peers use) -------------------------

async def test_stranger_and_observer_are_reset_and_change_nothing(tmp_path, site, caplog):
    async with secured_node(tmp_path, site) as (node, ports):
        audit = Audit(node.ctx.gate)
        actuator, detector = node.ctx.devices["remote_stage"], node.ctx.devices["remote_camera"]
        with caplog.at_level(logging.INFO, logger="labbridge.audit"):
            for source in (STRANGER, OBSERVER):
                for kind in ("ACTUATOR", "GRABBER"):
                    got, end = await raw_peer(ports["pmd"], source, hello(kind))
                    # Nothing is sent (the protocol has no refusal message); a reset, not a
                    # clean close, which would make a real PyMoDAQ client spin for ever.
                    assert (got, end) == (b"", "reset")
        assert not actuator.connected and not detector.connected
        assert actuator.settings == {} and detector.settings == {}
        stranger = await audit.wait(outcome="refused", address=STRANGER)
        observer = await audit.wait(outcome="refused", address=OBSERVER)
    assert stranger.verb == "connect" and stranger.via == "pmd" and stranger.transport == "tcp"
    assert stranger.reason == "127.0.0.4 has no access to node pmd-secured"
    assert observer.reason == "connect needs the operator role; 127.0.0.3 is observer"
    assert not any(e.outcome == "done" for e in audit.events)
    assert node.ctx.services["pmd"].server.refused == 4
    assert any("refused: connect pmd" in r.getMessage() and "127.0.0.3 as observer via pmd/tcp"
               in r.getMessage() for r in caplog.records)


async def test_operator_registers_and_replaces_audited(tmp_path, site):
    async with secured_node(tmp_path, site) as (node, ports):
        audit = Audit(node.ctx.gate)
        actuator = node.ctx.devices["remote_stage"]
        first = PyMoDAQClient(stage(position=1.0), "127.0.0.1", ports["pmd"],
                              generation=Generation.G3, backoff=fast_backoff(), source=OPERATOR)
        async with running(first):
            await actuator.wait_connected(DEADLINE)
            assert await actuator.get_position() == 1.0
            reg = await audit.wait(outcome="done", verb="register")
            assert (reg.target, reg.who, reg.via, reg.transport, reg.role) == (
                "remote_stage", OPERATOR, "pmd", "tcp", "operator")
            assert reg.detail == "ACTUATOR (G3)"
            # An observer cannot take the actuator over: the operator's client stays.
            assert await raw_peer(ports["pmd"], OBSERVER, hello()) == (b"", "reset")
            assert actuator.connected and await actuator.get_position() == 1.0
            # An admin (this machine) can: a replacement is audited as such.
            second = PyMoDAQClient(stage("other", position=7.0), "127.0.0.1", ports["pmd"],
                                   generation=Generation.G3, backoff=fast_backoff(),
                                   source=ADMIN)
            async with running(second):
                rep = await audit.wait(outcome="done", verb="replace")
                assert rep.who == ADMIN and rep.role == "admin"
                assert rep.detail.startswith(f"ACTUATOR (G3), replacing {OPERATOR}:")
                await second.wait_connected(DEADLINE)
                assert await actuator.get_position() == 7.0
                await first.stop()  # or it would register again as soon as it reconnects


# --- TLS with client certificates (labbridge at both ends) -------------------------------------

def tls_client(keys: Path, name: str | None, port: int, device: Any, *,
               source: str = ADMIN, check_host: bool = True) -> PyMoDAQClient:
    ctx = client_context(keys / "ca.crt", None if name is None else keys / f"{name}.crt",
                         None if name is None else keys / f"{name}.pem",
                         check_hostname=check_host)
    return PyMoDAQClient(device, "127.0.0.1", port, generation=Generation.G3,
                         backoff=fast_backoff(), ssl=ctx, source=source)


async def test_tls_client_with_a_site_certificate_is_its_identity(tmp_path, site):
    keys, _ = site
    async with secured_node(tmp_path, site) as (node, ports):
        audit = Audit(node.ctx.gate)
        detector = node.ctx.devices["tls_camera"]
        cam = RecordingCamera(width=16, height=8)
        # From an address that has no role at all: over TLS the certificate decides.
        async with running(tls_client(keys, "camera-pc", ports["pmd-tls"], cam,
                                      source=STRANGER)):
            await detector.wait_connected(DEADLINE)
            frame = (await detector.grab())[0]
            assert frame.shape == (8, 16) and (frame == cam.sent[-1]).all()
        reg = await audit.wait(outcome="done", verb="register")
    assert (reg.target, reg.who, reg.address, reg.via, reg.transport, reg.role) == (
        "tls_camera", "camera-pc@127.0.0.4", STRANGER, "pmd-tls", "tls", "operator")
    assert not node.ctx.devices["remote_camera"].connected  # the plain port's is untouched


@pytest.mark.parametrize("who,reason", [
    ("viewer-pc", "connect needs the operator role; viewer-pc@127.0.0.1 is observer"),
    ("unknown-pc", "certificate 'unknown-pc' is the cert of no identity in "
                   "security.identities"),
])
async def test_tls_certificate_below_operator_is_refused(tmp_path, site, who, reason):
    keys, _ = site
    async with secured_node(tmp_path, site) as (node, ports):
        audit = Audit(node.ctx.gate)
        async with running(tls_client(keys, who, ports["pmd-tls"], stage())):
            event = await audit.wait(outcome="refused")
            assert not node.ctx.devices["tls_stage"].connected
    assert (event.verb, event.via, event.transport, event.reason) == (
        "connect", "pmd-tls", "tls", reason)
    assert not any(e.outcome == "done" for e in audit.events)


async def test_tls_without_a_site_certificate_fails_the_handshake_audited(tmp_path, site):
    keys, other = site
    async with secured_node(tmp_path, site) as (node, ports):
        audit = Audit(node.ctx.gate)
        port = ports["pmd-tls"]
        clients = {
            "no certificate": PyMoDAQClient(
                stage(), "127.0.0.1", port, generation=Generation.G3, backoff=fast_backoff(),
                ssl=client_context(keys / "ca.crt"), source=OPERATOR),
            # the same common name as the operator's, signed by another CA
            "another CA": PyMoDAQClient(
                stage(), "127.0.0.1", port, generation=Generation.G3, backoff=fast_backoff(),
                ssl=client_context(keys / "ca.crt", other / "camera-pc.crt",
                                   other / "camera-pc.pem"), source=OBSERVER),
        }
        for what, client in clients.items():
            async with running(client):
                source = client.source
                event = await audit.wait(outcome="refused", address=source)
                assert event.reason.startswith("TLS handshake failed"), (what, event.reason)
                assert event.via == "pmd-tls" and event.transport == "tls"
        # A plain PyMoDAQ peer on the TLS port: refused, and the log line says what it is.
        await raw_peer(port, STRANGER, hello())
        plain = await audit.wait(outcome="refused", address=STRANGER)
        assert "plain TCP peer" in plain.reason
        assert not node.ctx.devices["tls_stage"].connected
        server = node.ctx.services["pmd-tls"].server
        assert server.tcp.connections == 0  # no slot held by the failed handshakes
    assert not any(e.outcome == "done" for e in audit.events)


async def test_tls_client_checks_the_server_certificate_names_its_host(tmp_path, site):
    """The server's certificate is valid for 127.0.0.1 only; a client that reaches it at
    127.0.0.5 (its node file names that host) does not trust it: it never registers."""
    keys, _ = site
    server = PyMoDAQServer("127.0.0.5", 0, ssl=server_context(
        keys / "main.crt", keys / "main.pem", keys / "ca.crt"),
        gate=Gate(), name="elsewhere")
    await server.start()
    try:
        ctx = client_context(keys / "ca.crt", keys / "camera-pc.crt", keys / "camera-pc.pem",
                             check_hostname=True)
        client = PyMoDAQClient(stage(), "127.0.0.5", server.port, generation=Generation.G3,
                               backoff=fast_backoff(), ssl=ctx)
        audit = Audit(server.gate)
        async with running(client):
            event = await audit.wait(outcome="refused")  # the client gave up the handshake
            assert event.reason.startswith("TLS handshake failed")
            assert not server.actuator.connected and client.connections == 0
    finally:
        await server.stop()


# --- our client trusts only the server its node file names ------------------------------------

async def test_client_connects_only_to_its_configured_server(server):
    dev = stage()
    client = PyMoDAQClient(dev, "127.0.0.1", server.port, generation=Generation.G3,
                           backoff=fast_backoff())
    with pytest.raises(AttributeError):
        client.host = "10.0.0.1"  # type: ignore[misc]
    async with running(client):
        await server.actuator.wait_connected(DEADLINE)
        # A server that names another host or port in its settings changes nothing of where
        # the client connects (the real client's own ip/port settings are not remote-set).
        session = server.actuator.session
        assert session is not None
        for path, name, value in ((("ip_address",), "ip_address", "10.9.9.9"),
                                  (("port",), "port", 1)):
            xml = settings_to_xml({name: value}, root=("move_settings", "x"))
            session.stream.send(SetInfo(path, xml))
        server.actuator.disconnect()
        await asyncio.wait_for(server.wait_closed_connections(1), DEADLINE)
        await server.actuator.wait_connected(DEADLINE)
        assert (client.host, client.port, client.connections) == ("127.0.0.1", server.port, 2)


def test_config_tls_errors_name_the_file(tmp_path, site):
    keys, _ = site
    (tmp_path / "keys").symlink_to(keys)

    def build(tls: str, kind: str = "pymodaq_server") -> Node:
        extra = "    server: 127.0.0.1:1\n    device: st\n" if kind == "pymodaq_client" else ""
        p = tmp_path / "n.yaml"
        p.write_text(textwrap.dedent("""\
            node: n
            devices: [{kind: stage, name: st}]
            services:
              - kind: %s
            %s    tls: %s
            """) % (kind, extra, tls))
        return build_node(p, state_dir=tmp_path / "s")

    with pytest.raises(ConfigError) as err:
        build("{cert: keys/nope.crt, key: keys/main.pem, ca: keys/ca.crt}")
    assert str(err.value).startswith(f"{tmp_path / 'n.yaml'}:5: services[0].tls.cert: "
                                     f"cannot read {tmp_path / 'keys/nope.crt'}: no such file")
    with pytest.raises(ConfigError, match=r"n\.yaml:5: services\[0\]\.tls: cannot use "
                                          r"certificate .*main\.crt with key .*camera-pc\.pem"):
        build("{cert: keys/main.crt, key: keys/camera-pc.pem, ca: keys/ca.crt}")
    with pytest.raises(ConfigError, match=r"tls\.ca: required field is missing"):
        build("{cert: keys/main.crt, key: keys/main.pem}", "pymodaq_client")
    with pytest.raises(ConfigError, match=r"unknown field.*check_host"):
        build("{cert: keys/main.crt, key: keys/main.pem, ca: keys/ca.crt, check_host: no}")
    node = build("{cert: keys/camera-pc.crt, key: keys/camera-pc.pem, ca: keys/ca.crt, "
                 "check_host: false}", "pymodaq_client")
    client = node.ctx.services["pymodaq_client-0"].client
    assert client.tls is not None and client.tls.check_hostname is False


def test_source_address_is_checked(tmp_path):
    p = tmp_path / "n.yaml"
    p.write_text("node: n\ndevices: [{kind: stage, name: st}]\nservices:\n"
                 "  - {kind: pymodaq_client, device: st, server: '127.0.0.1:1', "
                 "source: lab-pc}\n")
    with pytest.raises(ConfigError, match=r"n\.yaml:4: services\[0\]\.source: expected an IP "
                                          r"address of this computer, got 'lab-pc'"):
        build_node(p)


async def test_reset_is_what_a_refused_peer_sees():
    """The refusal's reset, on a plain blocking socket as the real client has: ``recv``
    raises instead of returning b"" (a clean EOF, on which the real PyMoDAQ reader loops for
    ever: PyMoDAQ@5.0.0 src/pymodaq/utils/tcp_ip/mysocket.py, check_received_length)."""
    only_me = Policy(addresses={Role.ADMIN: (ipaddress.ip_network("127.0.0.1/32"),)})
    srv = PyMoDAQServer("127.0.0.1", 0, gate=Gate(only_me))
    await srv.start()
    try:
        audit = Audit(srv.gate)

        def peer() -> str:
            try:
                # (on a loaded machine the reset may even come before connect() returns)
                with socket.create_connection(("127.0.0.1", srv.port), timeout=DEADLINE,
                                              source_address=(STRANGER, 0)) as s:
                    with contextlib.suppress(BrokenPipeError):
                        s.sendall(hello())
                    return "eof" if s.recv(1) == b"" else "data"
            except ConnectionResetError:
                return "reset"

        how = await asyncio.get_running_loop().run_in_executor(None, peer)
        await audit.wait(outcome="refused", address=STRANGER)
    finally:
        await srv.stop()
    assert (how, srv.refused) == ("reset", 1)


def test_tls_under_uvloop(site):
    """The node runs on uvloop when it is installed: the same handshake-after-accept path
    (``start_tls`` into the stream's buffers) there, with a refusal and a frame."""
    import uvloop
    keys, other = site

    async def main() -> tuple[list[tuple[str, str]], tuple[int, ...]]:
        policy = Policy(identities={"camera-pc": Identity("camera-pc", Role.OPERATOR,
                                                          cert="camera-pc")})
        server = PyMoDAQServer("127.0.0.1", 0, gate=Gate(policy), ssl=server_context(
            keys / "main.crt", keys / "main.pem", keys / "ca.crt"))
        await server.start()
        audit = Audit(server.gate)
        try:
            cam = RecordingCamera(width=640, height=480)  # 600 KiB frames through TLS
            async with running(tls_client(keys, "camera-pc", server.port, cam)):
                await server.detector.wait_connected(DEADLINE)
                frames = [(await server.detector.grab())[0] for _ in range(3)]
                assert all((f == s).all() for f, s in zip(frames, cam.sent, strict=True))
            async with running(tls_client(other, "camera-pc", server.port, stage())):
                await audit.wait(outcome="refused")
            return ([(e.outcome, e.who) for e in audit.events if e.outcome == "done"],
                    frames[0].shape)
        finally:
            await server.stop()

    done, shape = uvloop.run(main())
    assert done == [("done", "camera-pc@127.0.0.1")] and shape == (480, 640)


def test_grab_lets_this_machine_and_the_allowed_networks_register(capsys):
    from labbridge.cli.pymodaq import _gate, _networks

    gate = _gate(_networks(("192.168.1.20", "10.1.2.0/24")))
    assert gate.role_of(Principal("127.0.0.1", "grab")) is Role.ADMIN
    assert gate.role_of(Principal("10.1.2.3", "grab")) is Role.OPERATOR
    assert gate.role_of(Principal("192.168.1.20", "grab")) is Role.OPERATOR
    with pytest.raises(AccessDenied):
        gate.check(Principal("192.168.1.77", "grab"), Action(Role.OPERATOR, "connect", "grab"))
    err = capsys.readouterr().err
    assert err == ("refused a connection from 192.168.1.77: 192.168.1.77 has no access to "
                   "node grab (--allow ADDRESS lets it in)\n")


def test_grab_allow_must_be_a_network(tmp_path):
    from tests.cli_helpers import run_cli

    res = run_cli("grab", "127.0.0.1:0", "--out", str(tmp_path / "f.png"), "--allow", "lab-pc")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "'lab-pc' is not an IP address or network (CIDR)" in res.stderr
