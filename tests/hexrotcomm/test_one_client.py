"""OneClientServer semantics (spec hexrotcomm.md §6.2) on loopback, port 0."""

from __future__ import annotations

import asyncio
import logging

import pytest

from labbridge.transport.one_client import OneClientServer

T = 5.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()


async def _connect(port: int):
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), T)


async def test_port_zero_and_start_twice():
    srv = OneClientServer("t", "127.0.0.1", 0)
    await srv.start()
    try:
        assert srv.port != 0 and srv.started
        with pytest.raises(RuntimeError, match="Start already called"):
            await srv.start()
    finally:
        await srv.close()
        await srv.close()  # idempotent
    assert srv.done_task.done()


async def test_second_client_refused_first_unaffected(caplog):
    events: list[bool] = []

    async def cb(server: OneClientServer) -> None:
        events.append(server.connected)

    srv = OneClientServer("t", handler=_echo, connect_callback=cb)
    await srv.start()
    r1, w1 = await _connect(srv.port)
    try:
        await asyncio.wait_for(srv.connected_task, T)
        caplog.set_level(logging.WARNING)
        r2, w2 = await _connect(srv.port)
        assert await asyncio.wait_for(r2.read(10), T) == b""  # rejected peer sees EOF
        w2.close()
        assert srv.rejected_count == 1
        assert "rejecting connection" in caplog.text
        # The first client still works.
        w1.write(b"ping")
        await w1.drain()
        assert await asyncio.wait_for(r1.readexactly(4), T) == b"ping"
        assert srv.connected and events == [True]
    finally:
        w1.close()
        await srv.close()


async def test_five_simultaneous_connects_one_stays():
    srv = OneClientServer("t", handler=_echo)
    await srv.start()
    conns = await asyncio.gather(*(_connect(srv.port) for _ in range(5)))
    try:
        await asyncio.wait_for(srv.connected_task, T)
        local = {f"127.0.0.1:{w.get_extra_info('sockname')[1]}": (r, w) for r, w in conns}
        accepted = local.pop(srv.peer)
        # The four others are closed at once: they read EOF.
        reads = await asyncio.gather(*(asyncio.wait_for(r.read(1), T)
                                       for r, _ in local.values()))
        assert reads == [b""] * 4
        assert srv.rejected_count == 4
        # The accepted one still works.
        accepted[1].write(b"ok")
        assert await asyncio.wait_for(accepted[0].readexactly(2), T) == b"ok"
    finally:
        for _, w in conns:
            w.close()
        await srv.close()


async def test_reconnect_after_client_leaves_and_close_client():
    srv = OneClientServer("t", handler=_echo)
    await srv.start()
    try:
        r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.wait_connected(), T)
        first = srv.connected_task
        w.close()
        await asyncio.wait_for(srv.wait_disconnected(), T)
        assert not srv.connected and srv.connected_task is not first
        r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        await srv.close_client()
        await srv.close_client()  # idempotent
        assert await asyncio.wait_for(r.read(10), T) == b""
        assert not srv.should_be_connected
        w.close()
        # Still listening.
        r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        assert srv.client_count == 3
        w.close()
    finally:
        await srv.close()


async def test_write_requires_connection_and_callback_must_be_async():
    with pytest.raises(TypeError):
        OneClientServer("t", connect_callback=lambda s: None)  # type: ignore[arg-type,return-value]
    srv = OneClientServer("t")
    await srv.start()
    try:
        with pytest.raises(ConnectionError):
            await srv.write(b"x")
        r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        await srv.write(b"hello")
        assert await asyncio.wait_for(r.readexactly(5), T) == b"hello"
        w.close()
    finally:
        await srv.close()


async def test_raising_callback_does_not_break_io(caplog):
    async def cb(server: OneClientServer) -> None:
        raise RuntimeError("boom")

    srv = OneClientServer("t", handler=_echo, connect_callback=cb)
    await srv.start()
    try:
        r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        w.write(b"ok")
        assert await asyncio.wait_for(r.readexactly(2), T) == b"ok"
        assert "connect_callback failed" in caplog.text
        w.close()
    finally:
        await srv.close()


async def test_default_handler_discards_and_logs(caplog):
    srv = OneClientServer("cmd")
    await srv.start()
    try:
        _r, w = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        w.write(b"junk")
        await w.drain()
        w.write_eof()
        await asyncio.wait_for(srv.wait_disconnected(), T)
        assert "unexpected data" in caplog.text
        w.close()
    finally:
        await srv.close()


class _EchoProto(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def test_protocol_mode_single_client_and_events():
    events: list[bool] = []

    async def cb(server: OneClientServer) -> None:
        events.append(server.connected)

    with pytest.raises(ValueError):
        OneClientServer("t", handler=_echo, protocol_factory=_EchoProto)
    srv = OneClientServer("t", protocol_factory=_EchoProto, connect_callback=cb)
    await srv.start()
    try:
        r1, w1 = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        r2, w2 = await _connect(srv.port)
        assert await asyncio.wait_for(r2.read(10), T) == b""  # refused
        w2.close()
        w1.write(b"abc")
        assert await asyncio.wait_for(r1.readexactly(3), T) == b"abc"
        await srv.write(b"xy")
        assert await asyncio.wait_for(r1.readexactly(2), T) == b"xy"
        assert srv.rejected_count == 1
        w1.close()
        await asyncio.wait_for(srv.wait_disconnected(), T)
        assert not srv.connected
        r3, w3 = await _connect(srv.port)
        await asyncio.wait_for(srv.connected_task, T)
        await srv.close_client()
        assert await asyncio.wait_for(r3.read(10), T) == b""
        w3.close()
    finally:
        await srv.close()
    assert events == [True, False, True, False]
