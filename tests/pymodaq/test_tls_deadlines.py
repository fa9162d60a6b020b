"""The PyMoDAQ server's TLS handshake is the transport's (``TcpServer(ssl=...)``, the same
``TlsAccept`` as the Pychron command server's), so it has the same guarantees, shown here on
the PyMoDAQ port: a handshake is cut at its deadline counted from its first byte however
slowly it trickles (audited), a connection that sends nothing is closed (not audited:
nothing was tried), stalled handshakes are the first connections evicted when the listener
is full, and none of them holds a slot afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from labbridge.access import Gate, Identity, Policy, Role
from labbridge.links.pymodaq import PyMoDAQServer
from labbridge.transport.tls import server_context
from tests.pymodaq.test_access import (  # noqa: F401  (site: the module's key fixture)
    DEADLINE,
    Audit,
    running,
    site,
    stage,
    tls_client,
)

#: The start of a TLS handshake record announcing 16 KiB: the server waits for the rest.
PARTIAL_HELLO = b"\x16\x03\x01\x40\x00\x01\x00\x3f\xfc\x03\x03"


@contextlib.asynccontextmanager
async def tls_server(keys: Path, **kwargs: Any) -> AsyncIterator[PyMoDAQServer]:
    policy = Policy(identities={"camera-pc": Identity("camera-pc", Role.OPERATOR,
                                                      cert="camera-pc")})
    server = PyMoDAQServer("127.0.0.1", 0, gate=Gate(policy), name="pmd-tls",
                           ssl=server_context(keys / "main.crt", keys / "main.pem",
                                              keys / "ca.crt"), **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def registers(server: PyMoDAQServer, keys: Path) -> None:
    """A real TLS client with the operator's certificate registers its actuator."""
    async with running(tls_client(keys, "camera-pc", server.port, stage())):
        await server.actuator.wait_connected(DEADLINE)


async def trickle_until_closed(port: int, head: bytes, body: bytes, interval: float) -> int:
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
                async with asyncio.timeout(interval):
                    await asyncio.shield(closed)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(DEADLINE):
                await closed
        return sent
    finally:
        closed.cancel()
        writer.transport.abort()


async def test_a_trickled_handshake_is_cut_at_its_deadline_from_the_first_byte(site):  # noqa: F811
    keys, _ = site
    async with tls_server(keys, hello_timeout=0.5) as server:
        audit = Audit(server.gate)
        assert server.port
        sent = await trickle_until_closed(server.port, PARTIAL_HELLO, b"\x00" * 1000, 0.05)
        assert sent < 1000  # the trickle did not extend the deadline (50 s at this pace)
        event = await audit.wait(outcome="refused")
        assert event.reason == ("TLS handshake failed: handshake not complete within 0.5 s "
                                "of the first byte")
        assert (event.via, event.transport, event.verb) == ("pmd-tls", "tls", "connect")
        assert server.tcp.connections == 0  # no slot held
        await registers(server, keys)


async def test_a_silent_connection_is_closed_without_an_audit_line(site, caplog):  # noqa: F811
    keys, _ = site
    caplog.set_level(logging.INFO)
    async with tls_server(keys, hello_timeout=0.3) as server:
        audit = Audit(server.gate)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            async with asyncio.timeout(DEADLINE):
                assert await reader.read() == b""
        finally:
            writer.close()
        assert server.tcp.connections == 0
        assert not audit.events  # no handshake was tried: nothing to refuse
        assert any("sent nothing for" in r.getMessage() for r in caplog.records)


async def test_stalled_handshakes_are_evicted_first_when_the_listener_is_full(site):  # noqa: F811
    keys, _ = site
    # max_connections=1: the listener's own limit is 2 * 1 + 16 = 18 connections.
    async with tls_server(keys, max_connections=1, hello_timeout=60) as server:
        audit = Audit(server.gate)
        limit = server.tcp.max_connections
        stalled = []
        try:
            for _ in range(limit):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(PARTIAL_HELLO)
                stalled.append((r, w))
            # The listener is full of handshakes going nowhere; a real client still gets in...
            await registers(server, keys)
            # ...because the stalled one idle longest was closed for it.
            with contextlib.suppress(ConnectionError):
                async with asyncio.timeout(DEADLINE):
                    assert await stalled[0][0].read() == b""
            assert server.tcp.evicted >= 1
            assert server.tcp.connections <= limit
        finally:
            for _, w in stalled:
                w.transport.abort()
        # An eviction is the slots' business (logged by them), not a refused handshake.
        assert not [e for e in audit.events if e.outcome == "refused"]
