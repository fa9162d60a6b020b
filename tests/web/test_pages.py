"""Issue 13 for the dashboard: idle WebSocket connections cannot fill it, slots are fair, a
page that cannot keep up is dropped, and memory per page is bounded. Real sockets on
loopback; other "hosts" are other loopback addresses (127.0.0.2, 127.0.0.3...).

Each test ends by checking the dashboard is alive and serves a new well-behaved page."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from labbridge.web.app import CLOSE_EVICTED, CLOSE_FLOOD, CLOSE_NO_HELLO, WebConfig, WebDashboard


@contextlib.asynccontextmanager
async def dashboard(**kw) -> AsyncIterator[WebDashboard]:
    cfg = WebConfig(host="127.0.0.1", port=0, **kw)
    dash = WebDashboard(cfg)
    await dash.start()
    try:
        yield dash
    finally:
        await dash.stop()


@contextlib.asynccontextmanager
async def session(address: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    conn = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        yield s


async def page(http: aiohttp.ClientSession, dash: WebDashboard, *, hello: bool = True):
    """A WebSocket like the page's: says hello (or not), then reads the server's hello."""
    ws = await http.ws_connect(f"{dash.url}ws", autoping=True)
    if hello:
        await ws.send_str('{"type": "hello"}')
    first = await ws.receive(timeout=10)
    assert json.loads(first.data)["type"] == "hello"
    return ws


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> int:
    """Read until the server closes; its close code."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING):
                return int(ws.close_code or 0)


async def still_serves(dash: WebDashboard) -> None:
    async with session("127.0.0.250") as http:
        async with http.get(f"{dash.url}api/config") as r:
            assert r.status == 200
        ws = await page(http, dash)
        await ws.close()


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_idle_connections_give_their_slots_to_pages():
    """A full dashboard of connections that never say hello (64 of them, from 16 hosts)
    still admits a real page: one of the silent ones makes room. Memory grows by a bounded
    amount and the silent ones are closed once their hello is overdue."""
    async with dashboard(max_clients=64, max_per_address=4, hello_timeout=3.0) as dash:
        before = rss_kib()
        idle = []
        sessions = contextlib.AsyncExitStack()
        async with sessions:
            for host in range(2, 18):
                http = await sessions.enter_async_context(session(f"127.0.0.{host}"))
                for _ in range(4):
                    idle.append(await page(http, dash, hello=False))
            assert len(dash.pages) == 64
            real = await sessions.enter_async_context(session("127.0.0.100"))
            ws = await page(real, dash)  # admitted although every slot was taken
            assert dash.evictions == 1
            codes = await asyncio.gather(*(closed_with(w) for w in idle))
            assert codes.count(CLOSE_EVICTED) == 1  # one gave its slot at once...
            assert codes.count(CLOSE_NO_HELLO) == 63  # ...the rest when their hello was due
            assert len(dash.pages) == 1 and not ws.closed
            assert rss_kib() - before < 40 * 1024, "memory grew by more than 40 MiB"
            await ws.close()
        await still_serves(dash)


async def test_one_host_can_only_push_out_its_own_pages():
    async with dashboard(max_clients=8, max_per_address=2) as dash:
        async with session("127.0.0.2") as a, session("127.0.0.3") as b:
            a1, a2 = await page(a, dash), await page(a, dash)
            b1 = await page(b, dash)
            a3 = await page(a, dash)  # the host's third page replaces its most idle one
            assert await closed_with(a1) == CLOSE_EVICTED
            assert not a2.closed and not a3.closed and not b1.closed
            assert len(dash.pages) == 3
            for w in (a2, a3, b1):
                await w.close()
        await still_serves(dash)


async def test_a_dashboard_full_of_active_pages_refuses_the_newcomer():
    """Never refuse a newcomer while an idle one holds a slot -- but when every page is
    active, refusing is the only fair answer (503), until one leaves."""
    async with dashboard(max_clients=3, max_per_address=3, ping_interval=30) as dash:
        async with session("127.0.0.2") as a, session("127.0.0.3") as b:
            pages = [await page(a, dash) for _ in range(3)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await page(b, dash)
            assert err.value.status == 503
            await pages[0].close()
            await dash.wait_pages(lambda pages: len(pages) == 2)  # the server saw it go
            newcomer = await page(b, dash)
            assert not newcomer.closed
            for w in (*pages[1:], newcomer):
                await w.close()
        await still_serves(dash)


async def test_a_page_that_floods_the_server_is_closed():
    async with dashboard() as dash:
        async with session() as http:
            ws = await page(http, dash)
            for _ in range(50):
                await ws.send_str('{"type": "ping"}')
            assert await closed_with(ws) == CLOSE_FLOOD
        await still_serves(dash)


async def _raw_page_that_never_reads(dash: WebDashboard) -> tuple[asyncio.StreamReader,
                                                                  asyncio.StreamWriter]:
    """A WebSocket client that says hello, then never reads again (RFC 6455 by hand, with
    a tiny receive buffer so the server's writes back up quickly)."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", dash.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{dash.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    payload = b'{"type": "hello"}'
    mask = os.urandom(4)
    writer.write(bytes([0x81, 0x80 | len(payload)]) + mask
                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    return reader, writer


async def test_a_page_that_does_not_read_is_dropped_and_its_memory_bounded():
    budget = 256 * 1024
    async with dashboard(client_bytes=budget, push_interval=0.005) as dash:
        _, writer = await _raw_page_that_never_reads(dash)
        try:
            await dash.wait_pages(lambda pages: any(p.proven for p in pages))
            (slow,) = dash.pages
            big = "x" * 400  # an event text (at most 500 characters)
            peak = 0
            async with asyncio.timeout(20):
                while slow in dash.pages:  # push until the server gives up on it
                    dash.push(dash.state.add_event("info", "n", big, 0.0))
                    peak = max(peak, slow.queued_bytes)
                    await asyncio.sleep(0.001)
            assert peak <= budget
            assert slow.overflowed and slow.queued_bytes == 0
            await dash.wait_closed_pages()  # its socket is aborted, not left flushing
            assert slow.transport.is_closing()
            assert slow.transport.get_write_buffer_size() == 0  # nothing kept for it
        finally:
            writer.transport.abort()
        await still_serves(dash)

