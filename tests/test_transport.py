"""Transport pieces on their own: UDP (including empty replies), ports in use, backoff,
the blocking portal."""

from __future__ import annotations

import asyncio
import threading

import pytest

from labbridge.transport.backoff import Backoff
from labbridge.transport.blocking import BlockingPortal
from labbridge.transport.tcp import PortInUseError, UdpServer


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
