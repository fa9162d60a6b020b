"""Transport pieces on their own: UDP (including empty replies), ports in use, backoff,
the blocking portal."""

from __future__ import annotations

import asyncio
import threading

import pytest

from labbridge.transport.backoff import Backoff
from labbridge.transport.blocking import BlockingPortal
from labbridge.transport.tcp import PortInUseError, TcpUdpServer, UdpServer


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
