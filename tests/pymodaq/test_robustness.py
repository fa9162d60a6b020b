"""Malformed input closes only the offending connection, with a logged reason; no busy loop
after a peer closes; other clients carry on (spec pymodaq.md §9, issue 6 "What it must show")."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from labbridge.links.pymodaq import PyMoDAQClient
from labbridge.protocol.pymodaq.g1 import encode_string
from labbridge.protocol.pymodaq.g3 import encode_message
from labbridge.protocol.pymodaq.messages import Generation
from tests.pymodaq.conftest import fast_backoff

HELLO_G3 = encode_message("GRABBER")

BAD_INPUTS = {
    # a G3 object whose type tag is not in the table
    "unknown_type": HELLO_G3 + (15).to_bytes(4, "big") + b"\x00\x00\x00\x07Garbage"
                    + b"\x00" * 4,
    # a G3 frame announcing more than the server's maximum message length (16 MiB here)
    "too_large": HELLO_G3 + (0x7FFF_FFFF).to_bytes(4, "big"),
    # a truncated frame: the string inside claims more bytes than its frame holds
    "length_mismatch": HELLO_G3 + (11).to_bytes(4, "big") + b"\x00\x00\x00\x03str"
                       + b"\x00\x00\x00\x09",
    # a G1 peer that closes in the middle of a frame: Done, one array, half of its pixels
    "truncated": encode_string("GRABBER") + encode_string("Done") + b"\x00\x00\x00\x01"
                 + encode_string("<u2") + (614400).to_bytes(4, "big") + (480).to_bytes(4, "big")
                 + (640).to_bytes(4, "big") + b"\x00" * 300_000,
    # not PyMoDAQ at all
    "unknown_peer": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
async def test_bad_peer_is_dropped_with_reason_others_unaffected(server, stage, kind, caplog):
    good = PyMoDAQClient(stage, "127.0.0.1", server.port, generation=Generation.G3,
                         backoff=fast_backoff())
    await good.start()
    try:
        await server.actuator.wait_connected(5)
        caplog.set_level(logging.WARNING, logger="labbridge.links.pymodaq")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(BAD_INPUTS[kind])
        await writer.drain()
        if kind == "truncated":
            writer.close()  # the peer goes away mid-frame
        closed_before = server.closed_connections
        await asyncio.wait_for(server.wait_closed_connections(closed_before + 1), 10)
        reason = server.close_reasons[-1]
        assert reason is not None and reason.startswith(kind), reason
        assert any(kind in r.getMessage() for r in caplog.records)
        # the server closed our end: we read EOF (or a reset), not a hang
        if kind != "truncated":
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        # the well-behaved client is still served
        assert await server.actuator.move_abs(7.0) == 7.0
        assert server.actuator.connected
    finally:
        await good.stop()


async def test_no_busy_loop_after_peer_closes_mid_frame(server):
    """§9 #1: the real reader spins at 100 % CPU forever; ours gets one EOF callback.

    The window is closed by an event (a timeout on an event nobody sets); what is asserted is
    CPU time consumed by this process in it, not a wall-clock duration."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(BAD_INPUTS["truncated"])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(server.wait_closed_connections(1), 10)
    window = 0.5
    cpu0 = time.process_time()
    never = asyncio.Event()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(never.wait(), window)
    used = time.process_time() - cpu0
    assert used < window * 0.3, f"{used:.3f} s of CPU in a {window} s idle window"
    assert server.sessions == 0


async def test_connection_limit_evicts_the_idle_connection_for_a_newcomer(server):
    """Full server: the newcomer takes the slot of the connection idle longest (issue 13)."""
    server.max_connections = 1
    r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
    _r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        assert await asyncio.wait_for(r1.read(1), 5) == b""  # evicted: closed by the server
        await asyncio.wait_for(server.wait_closed_connections(1), 5)
        assert server.close_reasons[-1].startswith("evicted")
        assert server.sessions == 1 and server.evicted == 1
    finally:
        for w in (w1, w2):
            w.close()
            await w.wait_closed()


async def test_a_connection_that_never_identifies_is_dropped(server):
    server.hello_timeout = 0.05
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"\x00\x00")  # half a length, then silence
        await asyncio.wait_for(server.wait_closed_connections(1), 10)
        assert server.close_reasons[-1].startswith("timeout: no client type")
    finally:
        writer.close()
        await writer.wait_closed()
