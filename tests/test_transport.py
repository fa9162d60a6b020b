"""Transport pieces on their own: UDP (including empty replies), ports in use, backoff,
the blocking portal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

import pytest

from labbridge.transport.backoff import Backoff
from labbridge.transport.blocking import BlockingPortal
from labbridge.transport.one_client import OneClientServer
from labbridge.transport.slots import SlotTable
from labbridge.transport.tcp import PortInUseError, TcpServer, TcpUdpServer, UdpServer


async def _udp_ask(port: int, payload: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result(data)

    tr, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    try:
        tr.sendto(payload)
        return await asyncio.wait_for(got, 5)
    finally:
        tr.close()


async def test_udp_echo_and_empty_reply_and_port_in_use():
    server = UdpServer(lambda data, addr, reply: reply(b"" if data == b"empty" else data))
    await server.start()
    try:
        assert await _udp_ask(server.port, b"hello") == b"hello"
        # asyncio's transport drops sendto(b""); the server must still answer.
        assert await _udp_ask(server.port, b"empty") == b""
        other = UdpServer(lambda d, a, r: None, port=server.port, name="second")
        with pytest.raises(PortInUseError, match=f"UDP port {server.port}"):
            await other.start()
    finally:
        await server.stop()


async def test_tcp_udp_pair_replies_fails_cleanly_and_cancels_on_stop():
    release = asyncio.Event()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow() -> bytes:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b"late"

    async def fails() -> bytes:
        raise RuntimeError("handler bug")

    def handle(data: bytes, host: str):
        if data == b"sync":
            return b"sync from " + host.encode()
        if data == b"async":
            return _later(b"async")
        if data == b"raise":
            raise ValueError("handler bug")
        if data == b"async-raise":
            return fails()
        if data == b"slow":
            return slow()
        return None

    pair = TcpUdpServer(asyncio.Protocol, handle, udp=True, name="pair", purpose="test",
                        failure_reply=b"ERROR")
    # Before start: the configured ports (0: any), so `labbridge ports` can list them.
    assert [(e.protocol, e.port) for e in pair.endpoints()] == [("tcp", 0), ("udp", 0)]
    await pair.start()
    try:
        assert pair.udp_port == pair.port and pair.port
        assert [(e.protocol, e.port) for e in pair.endpoints()] == [("tcp", pair.port),
                                                                    ("udp", pair.port)]
        assert await _udp_ask(pair.port, b"sync") == b"sync from 127.0.0.1"
        assert await _udp_ask(pair.port, b"async") == b"async"
        assert await _udp_ask(pair.port, b"raise") == b"ERROR"
        assert await _udp_ask(pair.port, b"async-raise") == b"ERROR"
        # The TCP side is a real listener on the same port.
        _, writer = await asyncio.open_connection("127.0.0.1", pair.port)
        writer.close()
        await writer.wait_closed()
        # A reply still running when the server stops is cancelled, not leaked.
        loop = asyncio.get_running_loop()
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    remote_addr=("127.0.0.1", pair.port))
        tr.sendto(b"slow")
        await asyncio.wait_for(started.wait(), 5)
        tr.close()
    finally:
        await pair.stop()
    assert cancelled.is_set() and pair.udp_port is None


async def test_tcp_udp_pair_on_port_0_picks_again_when_udp_twin_is_taken(monkeypatch):
    """Port 0: the kernel's free TCP port may be held for UDP by another program (another
    test run's client socket, an EPICS search port...). The pair picks both again instead of
    failing. The collision is real: a UDP socket takes the port right after TCP got it."""
    squatters: list[socket.socket] = []
    real_start = TcpServer.start

    async def start_then_squat(self: TcpServer) -> None:
        await real_start(self)
        if len(squatters) < 2:  # the first two picks collide
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", self.port))
            squatters.append(s)

    monkeypatch.setattr(TcpServer, "start", start_then_squat)
    pair = TcpUdpServer(asyncio.Protocol, lambda data, host: b"pong:" + data, udp=True)
    try:
        await pair.start()
        taken = {s.getsockname()[1] for s in squatters}
        assert len(squatters) == 2 and pair.port not in taken
        assert pair.udp_port == pair.port
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(
            Client, remote_addr=("127.0.0.1", pair.port))
        try:
            transport.sendto(b"ping")
            async with asyncio.timeout(10):
                assert await got == b"pong:ping"
        finally:
            transport.close()
    finally:
        await pair.stop()
        for s in squatters:
            s.close()


async def test_tcp_udp_pair_on_a_named_port_does_not_move():
    """A port the node file names is never replaced: its UDP twin taken is an error."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        pair = TcpUdpServer(asyncio.Protocol, lambda data, host: None, port=port, udp=True)
        with pytest.raises(PortInUseError, match=f"port {port}"):
            await pair.start()
        assert pair.tcp.port is None or pair.tcp._server is None


async def test_tcp_udp_pair_bounds_pending_datagram_replies():
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> bytes:
        started.set()
        await release.wait()
        return b"late"

    pair = TcpUdpServer(asyncio.Protocol, lambda data, host: slow(), udp=True, name="bounded",
                        failure_reply=b"BUSY", max_pending_datagrams=2)
    await pair.start()
    try:
        loop = asyncio.get_running_loop()
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    remote_addr=("127.0.0.1", pair.port))
        tr.sendto(b"one")
        tr.sendto(b"two")
        await asyncio.wait_for(started.wait(), 5)
        tr.close()
        # Two replies pending: the next datagram is refused at once, not queued.
        assert await _udp_ask(pair.port, b"three") == b"BUSY"
        assert pair.datagrams_refused == 1
        release.set()
    finally:
        await pair.stop()


async def _later(payload: bytes) -> bytes:
    await asyncio.sleep(0)
    return payload


def test_backoff_grows_caps_and_resets():
    b = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.0)
    assert [b.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.1


def test_blocking_portal_runs_coroutines_and_propagates_errors():
    async def add(a, b):
        await asyncio.sleep(0)
        return a + b

    async def boom():
        raise ValueError("nope")

    with BlockingPortal() as portal:
        assert portal.call(add, 2, 3) == 5
        with pytest.raises(ValueError, match="nope"):
            portal.call(boom)
        assert threading.current_thread() is not portal._thread
    with pytest.raises(RuntimeError, match="closed"):
        portal.call(add, 1, 1)


def test_backoff_keeps_going_past_a_thousand_attempts_with_the_same_delays():
    b = Backoff(initial=0.1, maximum=10.0, factor=2.0, jitter=0.0)
    delays = [b.next() for _ in range(5000)]   # 2.0 ** 1024 overflowed a float at attempt 1024
    assert delays[:8] == [0.1 * 2**n for n in range(7)] + [10.0]
    assert set(delays[7:]) == {10.0}
    b.reset()
    assert b.next() == 0.1
    huge = Backoff(initial=1.0, maximum=1e308, factor=2.0, jitter=0.0)  # factor**n overflows
    assert [huge.next() for _ in range(2000)][-3:] == [1e308] * 3
    instant = Backoff(initial=0.0, maximum=5.0, factor=2.0, jitter=0.0)
    assert set(instant.next() for _ in range(2000)) == {0.0}


# -- fair slots ---------------------------------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_slot_table_evicts_the_connection_idle_longest_and_protects_busy_ones(caplog):
    clock = Clock()
    table = SlotTable("t", max_connections=3, max_per_address=3, clock=clock)
    caplog.set_level(logging.INFO, logger="labbridge")
    trs = [FakeTransport() for _ in range(6)]
    a = table.admit(trs[0], "10.0.0.1")
    clock.t += 1
    b = table.admit(trs[1], "10.0.0.2")
    clock.t += 1
    c = table.admit(trs[2], "10.0.0.3")
    assert a and b and c and len(table) == 3
    a.active()  # a made progress: b is now idle longest
    a.set_busy(True)
    d = table.admit(trs[3], "10.0.0.4")
    assert d is not None and trs[1].aborted and b.evicted and not trs[0].aborted
    c.finished()  # nothing left to do: first to go, before d
    e = table.admit(trs[4], "10.0.0.5")
    assert e is not None and trs[2].aborted and not trs[3].aborted
    for s in (d, e):
        s.set_busy(True)
    assert table.admit(trs[5], "10.0.0.6") is None  # every slot busy: refused
    assert (table.evicted, table.refused) == (2, 1)
    evicting = [r for r in caplog.records if "evicting" in r.getMessage()]
    assert len(evicting) == 1  # one line per episode, not per eviction
    for s in (a, d, e):
        table.release(s)
    assert len(table) == 0
    assert any("pressure over (full): 2" in r.getMessage() for r in caplog.records)


def test_slot_table_per_address_cap_evicts_that_address_only():
    table = SlotTable("t", max_connections=100, max_per_address=2)
    other = table.admit(FakeTransport(), "10.0.0.9")
    trs = [FakeTransport() for _ in range(5)]
    slots = [table.admit(t, "10.0.0.1") for t in trs]
    assert all(slots)
    assert [t.aborted for t in trs] == [True, True, True, False, False]
    assert table.per_address("10.0.0.1") == 2 and other is not None and not other.evicted


def test_slot_table_budget_evicts_the_largest_holder():
    table = SlotTable("t", max_connections=10, max_buffered=1000)
    small, big, busy = (table.admit(FakeTransport(), f"10.0.0.{i}") for i in range(3))
    assert small and big and busy
    busy.set_busy(True)
    assert busy.hold(900)
    assert small.hold(50)
    held = [600]
    big.measure = lambda: held[0]
    assert not big.hold()  # over the budget: the largest holder that is not busy goes
    assert big.evicted and not small.evicted and not busy.evicted
    assert table.held == 950


@pytest.mark.parametrize("reports", [True, False])
async def test_tcp_server_when_full_evicts_only_protocols_that_report(reports):
    """A protocol with a ``slot`` (reporting, here nothing: idle) is evicted oldest first for a
    newcomer; one without is never evicted: the newcomer is refused, as before fair slots."""
    lost = asyncio.Queue()

    class Quiet(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.put_nowait(exc)

    class Reporting(Quiet):
        slot = None  # TcpServer puts the connection's Slot here

    server = TcpServer(Reporting if reports else Quiet, max_connections=3, name="quiet")
    await server.start()
    conns = []
    try:
        for _ in range(5):
            conns.append(await asyncio.open_connection("127.0.0.1", server.port))
        # the server closes two connections: the two oldest, or the two newcomers
        gone = conns[:2] if reports else conns[3:]
        for reader, _w in gone:
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
        if reports:
            for _ in range(2):
                await asyncio.wait_for(lost.get(), 5)
            assert (server.connections, server.evicted, server.refused) == (3, 2, 0)
        else:
            assert (server.connections, server.evicted, server.refused) == (3, 0, 2)
    finally:
        for _r, w in conns:
            w.transport.abort()
        await server.stop()


# -- one-client server --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["stream", "protocol"])
async def test_one_client_server_replaces_a_silent_client_only(mode, caplog):
    clock = Clock()
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(reader, writer):
        while data := await reader.read(100):
            got.put_nowait(data)

    class Proto(asyncio.Protocol):
        def data_received(self, data):
            got.put_nowait(data)

    kw = {"handler": handler} if mode == "stream" else {"protocol_factory": Proto}
    caplog.set_level(logging.INFO, logger="labbridge")
    server = OneClientServer("one", "127.0.0.1", 0, replace_idle_after=5.0, clock=clock, **kw)
    await server.start()
    opened = []
    try:
        first = await asyncio.open_connection("127.0.0.1", server.port)
        opened.append(first)
        await asyncio.wait_for(server.wait_connected(), 5)
        clock.t += 4.0  # silent, but not for long enough
        second = await asyncio.open_connection("127.0.0.1", server.port)
        opened.append(second)
        assert await asyncio.wait_for(second[0].read(), 5) == b""  # refused
        assert server.rejected_count == 1
        first[1].write(b"hello")  # the first client speaks: its silence starts again
        assert await asyncio.wait_for(got.get(), 5) == b"hello"
        clock.t += 4.0
        third = await asyncio.open_connection("127.0.0.1", server.port)
        opened.append(third)
        assert await asyncio.wait_for(third[0].read(), 5) == b""
        assert server.rejected_count == 2
        clock.t += 1.5  # now 5.5 s since "hello"
        fourth = await asyncio.open_connection("127.0.0.1", server.port)
        opened.append(fourth)
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(first[0].read(), 5) == b""  # replaced
        fourth[1].write(b"new")
        assert await asyncio.wait_for(got.get(), 5) == b"new"
        assert server.replaced_count == 1 and server.connected
        lines = [r.getMessage() for r in caplog.records if "replacing" in r.getMessage()]
        assert len(lines) == 1 and "sent nothing for 5.5 s" in lines[0]
    finally:
        for _r, w in opened:
            w.transport.abort()
        await server.close()


async def test_one_client_server_never_replaces_by_default():
    server = OneClientServer("one", "127.0.0.1", 0)
    await server.start()
    try:
        _r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.wait_for(server.wait_connected(), 5)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r2.read(), 5) == b""
        assert server.rejected_count == 1 and server.replaced_count == 0 and server.connected
        w1.transport.abort()
        w2.transport.abort()
    finally:
        await server.close()


async def test_one_client_server_write_waits_for_a_client_that_does_not_read():
    """Protocol mode: ``write()`` returns only while the client keeps up (backpressure)."""
    server = OneClientServer("one", "127.0.0.1", 0, protocol_factory=asyncio.Protocol)
    await server.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        await asyncio.wait_for(server.wait_connected(), 5)
        chunk = b"x" * 65536
        written = 0
        with pytest.raises(TimeoutError):
            while written < 256 * 1024 * 1024:  # far more than socket buffers hold
                await asyncio.wait_for(server.write(chunk), 1.0)
                written += len(chunk)
        assert written < 256 * 1024 * 1024
        gate = server._gate
        assert gate is not None and not gate.writable.is_set()
        assert gate.transport.get_write_buffer_size() <= 2 * 65536 + 65536
    finally:
        sock.close()
        await server.close()
