"""Slow, greedy and silent peers against the command server (issue 13), on real sockets.

* a trickle cannot extend a request's deadline (braced ERROR 902, plain ERROR 003);
* about a thousand connections holding a partial frame and trickling cannot lock a real client
  out: the connection idle longest is evicted, once logged;
* a client whose request is being served is never evicted;
* the bytes all connections hold stay within the server's budget;
* a peer that never reads pauses our reading from it (backpressure): what we hold for it stays
  bounded however much it sends;
* a finished connection leaves nothing behind (no reference cycles).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import weakref

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.server import CommandConnection, PychronCommandServer, ServerSettings
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.braced import encode_braced
from labbridge.protocol.pychron.crc import append_crc16
from tests.pychron.server_helpers import ask_like_pychron, running_server

TIMEOUT = 10.0
INITIAL = append_crc16("A0,B1,C0")


def make_bank(delay: float = 0.0) -> ValveBank:
    return ValveBank("valves", [ValveConfig("A"), ValveConfig("B", initially_open=True),
                                ValveConfig("C")], SimValveBackend(delay=delay))


async def trickle_until_answered(port: int, head: bytes, body: bytes,
                                 interval: float) -> tuple[bytes, int]:
    """Send ``head`` then ``body`` one byte per ``interval`` until the server answers and
    closes; return (what it answered, bytes of ``body`` sent by then)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(reader.read())  # until the server closes
    sent = 0
    try:
        writer.write(head)
        for b in body:
            if answer.done():
                break
            writer.write(bytes([b]))
            sent += 1
            # the trickle itself (the behaviour under test), not a synchronisation
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(answer), interval)
        return await asyncio.wait_for(answer, TIMEOUT), sent
    finally:
        answer.cancel()
        writer.transport.abort()


@pytest.mark.parametrize(("head", "body", "expected"), [
    # braced: a 1024-byte frame would take 50 s at this pace; the deadline is 0.5 s
    (b"{0400}", b"Open " + b"A" * 1017, encode_braced("ERROR 902 : frame timeout")),
    # plain: bytes closer together than the quiet gap, never a terminator
    (b"GetValve", b"S" * 1000,
     b"ERROR 003 : invalid command: request not complete within 0.5 s of its first byte"),
])
async def test_a_trickle_cannot_extend_the_request_deadline(head, body, expected):
    bank = make_bank()
    settings = ServerSettings(frame_timeout=0.5, quiet_gap=1.0)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        assert server.port
        reply, sent = await trickle_until_answered(server.port, head, body, 0.05)
        assert reply == expected
        assert sent < len(body)  # answered long before the trickle could have finished
        reply, _ = await ask_like_pychron(server.port, b"GetValveStates\r")
        assert reply.decode() == INITIAL


async def test_the_deadline_restarts_for_each_new_frame_not_for_each_byte():
    """Whole frames trickled slowly are served: only an incomplete one runs out of time."""
    bank = make_bank()
    settings = ServerSettings(frame_timeout=2.0)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            frame = encode_braced("GetValveState B")
            for _ in range(3):
                writer.write(frame[:10])
                await writer.drain()
                writer.write(frame[10:])
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
                assert line == encode_braced("OK")
        finally:
            writer.close()
            await writer.wait_closed()


class Hog(asyncio.Protocol):
    """Holds a partial braced frame and trickles (one byte per tick of the test)."""

    def __init__(self, pack: HogPack) -> None:
        self.transport: asyncio.Transport | None = None
        self.pack = pack

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"{0400}Open ")

    def connection_lost(self, exc: Exception | None) -> None:
        self.pack.gone += 1
        if self.pack.gone == self.pack.n:
            self.pack.all_gone.set()


class HogPack:
    def __init__(self, n: int) -> None:
        self.n = n
        self.gone = 0
        self.all_gone = asyncio.Event()
        self.hogs: list[Hog] = []


@contextlib.asynccontextmanager
async def hogs(port: int, n: int, tick: float = 0.2):
    """``n`` connections holding a partial frame, each trickling a byte every ``tick``."""
    loop = asyncio.get_running_loop()
    pack = HogPack(n)
    for _ in range(n):
        _, proto = await loop.create_connection(lambda: Hog(pack), "127.0.0.1", port)
        pack.hogs.append(proto)

    async def trickle() -> None:
        while True:
            for h in pack.hogs:
                if h.transport is not None and not h.transport.is_closing():
                    h.transport.write(b"A")
            await asyncio.sleep(tick)  # the trickle's pace

    task = asyncio.ensure_future(trickle())
    try:
        yield pack
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for h in pack.hogs:
            if h.transport is not None:
                h.transport.abort()


async def test_a_thousand_trickling_connections_do_not_lock_out_a_client(caplog):
    """A full server evicts the connection idle longest for the newcomer, logged once."""
    bank = make_bank()
    settings = ServerSettings(max_connections=200, max_per_address=200)
    caplog.set_level(logging.INFO, logger="labbridge")
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        assert server.port
        async with hogs(server.port, 1000) as pack:
            reply, _ = await asyncio.wait_for(
                ask_like_pychron(server.port, b"GetValveStates\r"), TIMEOUT)
            assert reply.decode() == INITIAL
            tcp = server._net.tcp
            assert tcp.refused == 0  # a newcomer is never refused while idle ones hold slots
            assert tcp.evicted >= 800
            assert server.connections <= 200
            evictions = [r for r in caplog.records if "evicting" in r.getMessage()]
            assert len(evictions) == 1, [r.getMessage() for r in evictions]
            # The hogs were closed by the server, not by us.
            assert pack.gone >= 800
    assert bank.is_open("A") is False


async def test_default_per_address_cap_keeps_one_host_to_a_quarter_of_the_slots():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:  # 1024 slots, 256 per host
        assert server.port
        async with hogs(server.port, 1000):
            reply, _ = await asyncio.wait_for(
                ask_like_pychron(server.port, b"GetValveStates\r"), TIMEOUT)
            assert reply.decode() == INITIAL
            assert server.connections <= 256
            assert server._net.tcp.refused == 0


async def test_a_client_being_served_is_never_evicted():
    bank = make_bank()
    backend = bank.backend
    assert isinstance(backend, SimValveBackend)
    settings = ServerSettings(max_connections=20, max_per_address=20)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        assert server.port
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            backend.block("A")
            writer.write(encode_braced("Open A"))
            await writer.drain()
            await asyncio.wait_for(backend.waiting.get(), TIMEOUT)  # the actuation is running
            async with hogs(server.port, 200):
                assert server._net.tcp.evicted >= 150
                backend.unblock("A")
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
            assert line == encode_braced("OK")
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    assert bank.is_open("A") is True


async def test_bytes_held_by_all_connections_stay_within_the_server_budget():
    bank = make_bank()
    budget = 256 * 1024
    settings = ServerSettings(max_server_buffer=budget)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        assert server.port
        writers = []
        try:
            for _ in range(20):  # 20 x 60 KiB partial frames: 1.2 MB offered
                _r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(b"{FFFF}" + b"x" * 60_000)
                await w.drain()
                writers.append(w)
            reply, _ = await asyncio.wait_for(
                ask_like_pychron(server.port, b"GetValveStates\r"), TIMEOUT)
            assert reply.decode() == INITIAL
            slots = server._net.tcp.slots
            assert slots.held <= budget
            assert server._net.tcp.evicted >= 10
        finally:
            for w in writers:
                w.transport.abort()


async def test_a_peer_that_never_reads_pauses_our_reading():
    bank = make_bank()
    settings = ServerSettings(max_connection_buffer=64 * 1024)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        assert server.port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # read nothing, hold little
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        request = encode_braced("GetValveStates")
        batch = request * 4096  # 88 KiB of requests per write
        offered = 0
        try:
            while offered < 64 * 1024 * 1024:
                writer.write(batch)
                offered += len(batch)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break  # the server stopped reading from us
            else:
                pytest.fail("the server read 64 MiB of requests from a peer that never reads")
            (transport,) = server._net.tcp._conns
            conn = transport.get_protocol()
            assert isinstance(conn, CommandConnection)
            assert conn._paused_by_us
            # What we hold for this peer: at most the budget plus one pass of replies.
            assert conn._held() <= 64 * 1024 + len(batch) * 2
        finally:
            writer.transport.abort()
        reply, _ = await asyncio.wait_for(
            ask_like_pychron(server.port, b"GetValveStates\r"), TIMEOUT)
        assert reply.decode() == INITIAL


async def test_finished_connections_are_freed_without_the_garbage_collector(monkeypatch):
    """No reference cycle keeps a connection's buffers once it ends (gc disabled)."""
    lost: asyncio.Queue[None] = asyncio.Queue()
    original = CommandConnection.connection_lost

    def connection_lost(self: CommandConnection, exc: Exception | None) -> None:
        original(self, exc)
        lost.put_nowait(None)

    monkeypatch.setattr(CommandConnection, "connection_lost", connection_lost)
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        assert server.port
        refs: list[weakref.ref[asyncio.Protocol]] = []
        factory = server._net.tcp._factory

        def tracking() -> asyncio.Protocol:
            proto = factory()
            refs.append(weakref.ref(proto))
            return proto

        server._net.tcp._factory = tracking
        requests = (b"GetValveStates\r", b"{\"command\": \"GetValveStates\"}",
                    encode_braced("GetValveStates"), b"{0400}partial", b"Open")
        gc.collect()
        gc.disable()
        try:
            for data in requests:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(data)
                await writer.drain()
                if data.startswith(b"{0"):
                    if data.endswith(b"\r\n"):
                        await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)
                    writer.transport.abort()
                else:
                    await asyncio.wait_for(reader.read(), TIMEOUT)
                    writer.close()
                    await writer.wait_closed()
                await asyncio.wait_for(lost.get(), TIMEOUT)
            assert server.connections == 0
            assert len(refs) == len(requests)
            # The transports' own last callbacks run after connection_lost; on a loaded
            # machine they may take more than one loop turn. Yield (no clock) until they ran.
            alive = [r for r in refs if r() is not None]
            for _ in range(1000):
                if not alive:
                    break
                await asyncio.sleep(0)
                alive = [r for r in refs if r() is not None]
            assert not alive, f"{len(alive)} connection(s) kept alive by reference cycles"
        finally:
            gc.enable()


async def test_stop_closes_every_held_connection():
    bank = make_bank()
    server = PychronCommandServer(Dispatcher([ValveCommands([bank])]), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port
        async with hogs(server.port, 50) as pack:
            await server.stop()
            await asyncio.wait_for(pack.all_gone.wait(), TIMEOUT)
    finally:
        await server.stop()
