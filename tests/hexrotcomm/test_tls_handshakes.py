"""TLS handshakes on the hexrotcomm one-client ports (``OneClientServer(ssl=...)``).

The handshake runs after the accept, through the transport's one TLS server path
(``transport.tls.tls_accept``), so on a hexrotcomm TLS port as on the Pychron and PyMoDAQ
ones: a failed handshake is a refusal in the node's audit trail (with a hint naming the real
peer that may have been pointed at the TLS port by mistake), the handshake has a deadline
from its first byte, a connection that sends nothing is closed, and a connection in its
handshake never holds, takes or replaces the one client slot. Real sockets on loopback;
certificates from ``labbridge keys`` (the ``site`` fixture of test_access).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labbridge.access import AuditEvent, Gate
from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.protocol.hexrotcomm.devices import RotatorCommandCode
from labbridge.protocol.hexrotcomm.framing import FrameKind
from labbridge.protocol.hexrotcomm.structs import CommandStatusCode
from labbridge.protocol.hexrotcomm.tai import current_tai
from labbridge.transport.one_client import OneClientServer
from labbridge.transport.tls import client_context, server_context
from tests.hexrotcomm.test_access import (
    ADMIN,
    OBSERVER,
    OPERATOR,
    ROT_A,
    ROT_D,
    STRANGER,
    RawCSC,
    T,
    fake_clock,
    refused,
    running,
    service,
    status,
    tls_field,
    tls_security,
)

R = RotatorCommandCode
#: The start of a TLS handshake record (a ClientHello announcing 16 KiB): the server's TLS
#: layer waits for the rest, which never comes.
PARTIAL_HELLO = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"


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

        async with asyncio.timeout(T):
            return await find()

    def refusals(self) -> list[tuple[str, str, str, str]]:
        return [(e.verb, e.address, e.transport, e.reason) for e in self.events
                if e.outcome == "refused"]


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    """Until the server closes (EOF or reset), whatever it sent before."""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(T):
            while await reader.read(65536):
                pass


async def stall(port: int, source: str, hello: bytes = PARTIAL_HELLO
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A peer from ``source`` that starts a TLS handshake and then sends nothing more."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0)), T)
    writer.write(hello)
    return reader, writer


def mock_node(d: Path) -> str:
    return tls_security(d) + textwrap.dedent(f"""\
        node: tlsmock
        devices:
          - kind: hexrot_rotator_mock
            name: rotator
        services:
          - kind: hexrot_mock_controller
            device: rotator
            port: 0
            tls: {tls_field(d, "node")}
        """)


def alice(d: Path) -> ssl.SSLContext:
    return client_context(d / "ca.crt", d / "alice.crt", d / "alice.pem")


# -- the audit of a failed handshake ----------------------------------------------------------
async def test_failed_handshakes_on_a_mock_controller_are_audited(tmp_path, site, caplog):
    d, other = site
    caplog.set_level(logging.INFO, logger="labbridge.audit")
    async with running(tmp_path, mock_node(d), "mock.yaml") as node:
        server = service(node).side.server
        port = server.port
        audit = Audit(node.ctx.gate)
        server.handshake_timeout = 0.5  # the deadline case below; the others fail at once
        # A real CSC pointed at the TLS port by mistake sends a bare command.
        plain = ROT_D.encode_command(ROT_D.make_command(R.ENABLE_DRIVES, 1, (1.0,)))
        assert await refused(port, OBSERVER, send=plain) == b""
        await audit.wait(address=OBSERVER)
        # No client certificate; another CA's; a handshake begun and never finished.
        assert await refused(port, OPERATOR, client_context(d / "ca.crt")) == b""
        await audit.wait(address=OPERATOR)
        assert await refused(port, STRANGER, client_context(
            d / "ca.crt", other / "mallory.crt", other / "mallory.pem")) == b""
        await audit.wait(address=STRANGER)
        reader, writer = await stall(port, ADMIN)
        try:
            await closed_by_server(reader)
        finally:
            writer.transport.abort()
        await audit.wait(address=ADMIN)
        refusals = audit.refusals()
        assert ("connect", OBSERVER, "tls", "TLS handshake failed: it does not speak TLS (a plain "
                "TCP client, e.g. a real Rubin CSC, on this TLS-only port?)") in refusals
        assert ("connect", OPERATOR, "tls",
                "TLS handshake failed: it sent no client certificate") in refusals
        assert any(r[:3] == ("connect", STRANGER, "tls") and r[3].startswith(
            "TLS handshake failed: its certificate was refused") for r in refusals)
        assert ("connect", ADMIN, "tls", "TLS handshake failed: handshake not complete within "
                "0.5 s of the first byte") in refusals
        # Nobody got as far as the one client slot; nothing reached the controller.
        assert server.client_count == server.rejected_count == 0
        assert node.ctx.devices["rotator"].commands_received == 0
        assert len(server.handshakes) == 0
        # The audit line names the service, the transport and the action.
        lines = [r.getMessage() for r in caplog.records if r.name == "labbridge.audit"]
        assert any(line.startswith("refused: connect rotator (TLS handshake) by 127.0.0.3 ")
                   and "/tls: TLS handshake failed: it does not speak TLS" in line
                   for line in lines)


async def test_a_plain_controller_on_the_gen_a_tls_ports_is_audited(tmp_path, site):
    d, _ = site
    csc_node = tls_security(d) + textwrap.dedent(f"""\
        node: tlscsca
        devices:
          - kind: hexrot_controller
            name: rot
            device: rotator
            generation: A
            port: 0
            tls: {tls_field(d, "node")}
        """)
    async with running(tmp_path, csc_node, "csc.yaml") as node:
        link = node.ctx.devices["rot"].link
        audit = Audit(node.ctx.gate)
        mock = RotatorMockController("plain", "A")
        config = ROT_A.encode_frame(FrameKind.CONFIG, mock.config_record(), 0, current_tai())
        # A real controller, in plain TCP, writes CONFIG and telemetry on P...
        assert await refused(link.port, OPERATOR, send=config) == b""
        await audit.wait(address=OPERATOR)
        assert audit.refusals() == [("connect", OPERATOR, "tls", (
            "TLS handshake failed: it does not speak TLS (a plain TCP peer, e.g. a real Moog "
            "controller, on this TLS-only port?)"))]
        # ...and only reads on P+1: it sends nothing there, so it is closed at the first-byte
        # deadline (a log line; no audit line, nothing was tried) and never served.
        link.command_server.first_byte_timeout = 0.5
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", link.port + 1, local_addr=(OPERATOR, 0)), T)
        try:
            await closed_by_server(reader)
        finally:
            writer.transport.abort()
        assert len(audit.refusals()) == 1
        assert link.config is None and not link.connected
        assert link.telemetry_server.client_count == link.command_server.client_count == 0


# -- the one client slot ------------------------------------------------------------------------
async def test_a_stalled_handshake_cannot_displace_the_connected_csc(tmp_path, site, caplog):
    d, _ = site
    caplog.set_level(logging.INFO)
    async with running(tmp_path, mock_node(d), "mock.yaml") as node:
        server = service(node).side.server
        port = server.port
        now = fake_clock(server)
        audit = Audit(node.ctx.gate)
        csc = await RawCSC.open(ROT_D, port, OPERATOR, alice(d))
        try:
            await csc.served()
            now[0] += 60.0  # the CSC has been quiet for a minute: a newcomer could replace it
            server.handshake_timeout = 0.5
            server.first_byte_timeout = 0.5
            # One peer stalls in its handshake, another connects and never sends a byte.
            stalled = await stall(port, ADMIN)
            silent = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, local_addr=(ADMIN, 0)), T)
            try:
                await closed_by_server(stalled[0])
                await closed_by_server(silent[0])
            finally:
                stalled[1].transport.abort()
                silent[1].transport.abort()
            # Neither took, replaced or was even asked about the one client slot.
            assert server.peer is not None and server.peer.startswith(OPERATOR + ":")
            assert (server.client_count, server.replaced_count, server.rejected_count) == (
                1, 0, 0)
            assert len(server.handshakes) == 0
            # The CSC's link is untouched: telemetry flows, commands are answered.
            before = len(csc.frames)
            while len(csc.frames) < before + 3:
                await csc.next_frame()
            assert status(await csc.command(R.ENABLE_DRIVES, 1.0))[0] is (
                CommandStatusCode.ACK)
        finally:
            await csc.close()
        # The stalled handshake is one refusal; the silent connection tried nothing, so it
        # is one log line and no audit line.
        assert audit.refusals() == [("connect", ADMIN, "tls", "TLS handshake failed: "
                                     "handshake not complete within 0.5 s of the first byte")]
        assert any(r.getMessage().startswith(f"MockController-rotator: {ADMIN} sent nothing "
                                             "for ") for r in caplog.records)


async def test_a_stalled_handshake_does_not_hold_the_slot_and_is_aborted_on_close(
        tmp_path, site):
    d, _ = site
    async with running(tmp_path, mock_node(d), "mock.yaml") as node:
        server = service(node).side.server
        port = server.port
        audit = Audit(node.ctx.gate)
        server.handshake_timeout = server.first_byte_timeout = 10 * T  # never, in this test
        stalled = await stall(port, STRANGER)
        try:
            # No client yet: the stalled handshake does not stop the CSC from taking the
            # controller, and the served CSC's handshake slot is free again at once.
            csc = await RawCSC.open(ROT_D, port, OPERATOR, alice(d))
            try:
                await csc.served()
                assert server.peer is not None and server.peer.startswith(OPERATOR + ":")
                assert len(server.handshakes) == 1  # only the stalled one
                assert server.client_count == 1 and server.rejected_count == 0
            finally:
                await csc.close()
            async with asyncio.timeout(T):
                await server.wait_disconnected()
            # Stopping the node aborts the handshake still in progress, and waits for it.
            await service(node).side.close()
            await closed_by_server(stalled[0])
            assert len(server.handshakes) == 0 and not server._handshake_tasks
            assert not server._raw
        finally:
            stalled[1].transport.abort()
        # Our own abort on close is not the peer's failure: nothing audited for it.
        assert not [r for r in audit.refusals() if r[1] == STRANGER]


# -- OneClientServer on its own (both modes) ----------------------------------------------------
@contextlib.asynccontextmanager
async def one_tls_server(d: Path, mode: str, **kw: Any) -> AsyncIterator[
        tuple[OneClientServer, asyncio.Queue[bytes]]]:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            got.put_nowait(data)

    class Proto(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got.put_nowait(data)

    serve: dict[str, Any] = ({"handler": handler} if mode == "stream"
                             else {"protocol_factory": Proto})
    server = OneClientServer("one", "127.0.0.1", 0, ssl=server_context(
        d / "node.crt", d / "node.pem", d / "ca.crt"), **serve, **kw)
    await server.start()
    try:
        yield server, got
    finally:
        await server.close()


async def tls_connect(port: int, ctx: ssl.SSLContext
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), T)


@pytest.mark.parametrize("mode", ["stream", "protocol"])
async def test_one_client_server_tls_identity_and_failure_report(site, caplog, mode):
    d, _ = site
    seen: list[Any] = []

    def admit(transport: asyncio.BaseTransport, replacing: bool) -> str | None:
        seen.append(transport.get_extra_info("peercert"))
        return None

    caplog.set_level(logging.WARNING)
    async with one_tls_server(d, mode, admit=admit,
                              plain_peer="a plain TCP peer, e.g. a test,") as (server, got):
        # Without on_handshake_failed, a failure is one warning line with the hint.
        assert await refused(server.port, ADMIN, send=b"hello\n") == b""
        assert await refused(server.port, ADMIN, client_context(d / "ca.crt")) == b""
        warnings = [r.getMessage() for r in caplog.records if "TLS handshake" in r.getMessage()]
        assert warnings == [
            "one: TLS handshake with 127.0.0.1 failed: it does not speak TLS (a plain TCP "
            "peer, e.g. a test, on this TLS-only port?)",
            "one: TLS handshake with 127.0.0.1 failed: it sent no client certificate"]
        assert not seen and server.client_count == 0  # admit was never asked about them
        # A good certificate: admit sees the TLS transport (the certificate names the peer)
        # and the client is served over TLS.
        _, writer = await tls_connect(server.port, alice(d))
        try:
            writer.write(b"over tls")
            async with asyncio.timeout(T):
                assert await got.get() == b"over tls"
            assert server.connected and len(seen) == 1
            assert dict(x[0] for x in seen[0]["subject"])["commonName"] == "alice"
            assert len(server.handshakes) == 0  # served: its handshake slot is free
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


@pytest.mark.parametrize("mode", ["stream", "protocol"])
async def test_one_client_server_tls_handshakes_are_bounded(site, caplog, mode):
    d, _ = site
    caplog.set_level(logging.WARNING)
    failures: list[tuple[str, str]] = []
    # Four handshakes at most, one per address (a quarter): a newcomer from the same address
    # evicts the handshake stalled longest, a good client's included.
    async with one_tls_server(d, mode, max_handshakes=4,
                              on_handshake_failed=lambda host, reason: failures.append(
                                  (host, reason))) as (server, got):
        first = await stall(server.port, ADMIN)
        second = await stall(server.port, ADMIN)
        try:
            await closed_by_server(first[0])  # evicted for the second
            _, writer = await tls_connect(server.port, alice(d))
            await closed_by_server(second[0])  # evicted for the good client
            writer.write(b"in")
            async with asyncio.timeout(T):
                assert await got.get() == b"in"
            assert server.connected and server.client_count == 1
            assert server.handshakes.evicted == 2
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        finally:
            for _, w in (first, second):
                w.transport.abort()
    # An eviction is the table's business (logged by it), not a failed handshake.
    assert failures == []
    assert any("evicting 127.0.0.1" in r.getMessage() for r in caplog.records)
