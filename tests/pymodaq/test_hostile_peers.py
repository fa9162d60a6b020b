"""Slow, greedy and stalled peers against the PyMoDAQ server and client (issue 13), on real
loopback sockets. Every server test ends with :func:`assert_healthy`: the server is alive, no
CPU is spinning, the remote devices are as they were, a new well-behaved client is served
within a deadline, and the process RSS grew by a bounded amount. Tests that look at memory run
with the cyclic garbage collector off, so a buffer held by a reference cycle would show."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient, PyMoDAQServer
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.pymodaq.codec import G3Codec
from labbridge.protocol.pymodaq.g1 import encode_string
from labbridge.protocol.pymodaq.g3 import encode_message
from labbridge.protocol.pymodaq.messages import (
    ClientType,
    Done,
    Generation,
    GetPosition,
    Hello,
    Info,
    Infos,
    PositionIs,
    Role,
    SendData,
)
from labbridge.protocol.pymodaq.settings_xml import settings_to_xml
from tests.pymodaq.conftest import RecordingCamera, fast_backoff

MiB = 1024 * 1024
DEADLINE = 10.0  # seconds a well-behaved client may take to be served (generous, loaded CI)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def no_gc():
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.asynccontextmanager
async def serving(**kw: Any) -> AsyncIterator[PyMoDAQServer]:
    srv = PyMoDAQServer("127.0.0.1", 0, **kw)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def state(server: PyMoDAQServer) -> tuple[dict[str, Any], dict[str, Any]]:
    return server.actuator.snapshot(), server.detector.snapshot()


async def assert_not_spinning(window: float = 0.3) -> None:
    cpu0 = time.process_time()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.Event().wait(), window)
    used = time.process_time() - cpu0
    assert used < window * 0.5, f"{used:.3f} s of CPU in an idle {window} s window"


async def assert_healthy(server: PyMoDAQServer, rss0: int, before: Any, *,
                         max_growth: int = 64 * MiB) -> None:
    await assert_not_spinning()
    assert state(server) == before  # no device state changed
    await served(server)
    grown = rss() - rss0
    assert grown < max_growth, f"RSS grew by {grown / MiB:.1f} MiB"


async def until(pred, timeout: float = DEADLINE) -> None:
    """Wait for a condition that no event announces (bytes a server received, a slot count),
    checked every millisecond, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110 - no event exists for these conditions
            await asyncio.sleep(0.001)


async def served(server: PyMoDAQServer, position: float = 3.0) -> None:
    """A new well-behaved G3 actuator client is registered and answered within DEADLINE."""
    probe = Stage("probe", SimStageBackend(position=position))
    c = PyMoDAQClient(probe, "127.0.0.1", server.port, generation=Generation.G3,
                      backoff=fast_backoff())
    await c.start()
    try:
        await asyncio.wait_for(server.actuator.wait_connected(), DEADLINE)
        assert await asyncio.wait_for(server.actuator.get_position(), DEADLINE) == position
    finally:
        await c.stop()
    assert probe.position == position


async def wait_closed(server: PyMoDAQServer, n: int) -> None:
    await asyncio.wait_for(server.wait_closed_connections(n), DEADLINE)


async def connect(port: int, host: str = "127.0.0.1", rcvbuf: int | None = None):
    if rcvbuf is None:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=s)


# --- deadlines that a trickle cannot extend ---------------------------------------------------

TRICKLED = {
    # a G3 detector's Done and half a DataToExport frame's worth of header, byte by byte
    "g3": (encode_message("GRABBER"), encode_message("Done") + encode_message("x" * 400)),
    # a G1 detector's Infos with a 400-byte XML
    "g1": (encode_string("GRABBER"), encode_string("Infos") + encode_string("<a>" + "x" * 400
                                                                            + "</a>")),
}


@pytest.mark.parametrize("gen", list(TRICKLED))
async def test_a_trickled_message_meets_its_absolute_deadline(gen):
    async with serving(message_timeout=0.5) as server:
        rss0, before = rss(), state(server)
        hello, message = TRICKLED[gen]
        _r, w = await connect(server.port)
        w.write(hello)
        await asyncio.wait_for(server.detector.wait_connected(), DEADLINE)
        closed = asyncio.ensure_future(server.wait_closed_connections(1))
        sent = 0
        try:
            for i in range(len(message)):  # one byte every 20 ms: each byte is "activity"
                if closed.done():
                    break
                w.write(message[i:i + 1])
                sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), 0.02)
            await asyncio.wait_for(closed, DEADLINE)
        finally:
            w.close()
        assert sent < len(message)  # dropped long before the trickle could finish
        assert server.close_reasons[-1].startswith("timeout: a message was not complete")
        await asyncio.wait_for(_until(lambda: not server.detector.connected, server.detector),
                               DEADLINE)
        await assert_healthy(server, rss0, before)


async def test_a_trickled_client_type_meets_the_hello_deadline():
    async with serving(hello_timeout=0.5) as server:
        rss0, before = rss(), state(server)
        hello = encode_message("ACTUATOR")
        _r, w = await connect(server.port)
        closed = asyncio.ensure_future(server.wait_closed_connections(1))
        sent = 0
        for i in range(len(hello)):  # 23 bytes, one every 100 ms
            if closed.done():
                break
            w.write(hello[i:i + 1])
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), 0.1)
        await asyncio.wait_for(closed, DEADLINE)
        w.close()
        assert sent < len(hello)
        assert server.close_reasons[-1].startswith("timeout: no client type")
        await assert_healthy(server, rss0, before)


async def _until(cond, device) -> None:
    changed = asyncio.Event()
    unsub = device.subscribe(lambda _ch: changed.set())
    try:
        while not cond():
            changed.clear()
            await changed.wait()
    finally:
        unsub()


# --- fair slots --------------------------------------------------------------------------------

async def _reconnector(port: int, host: str, stop: asyncio.Event, counts: dict[str, int]):
    """Holds a slot with an idle connection and reconnects as soon as it is closed (before
    any hello timeout): the attack of issue 13."""
    while not stop.is_set():
        try:
            r, w = await connect(port, host)
        except OSError:
            continue
        counts["connects"] += 1
        try:
            reader = asyncio.ensure_future(r.read(1))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, stopper):
                t.cancel()
        finally:
            w.close()


async def test_idle_reconnectors_cannot_hold_the_slots(caplog):
    caplog.set_level(logging.WARNING, logger="labbridge.links.pymodaq")
    async with serving(max_connections=8, max_per_address=4, hello_timeout=30) as server:
        rss0, before = rss(), state(server)
        stop = asyncio.Event()
        counts = {"connects": 0}
        hosts = ["127.0.0.2"] * 4 + ["127.0.0.3"] * 4
        tasks = [asyncio.ensure_future(_reconnector(server.port, h, stop, counts))
                 for h in hosts]
        try:
            await until(lambda: server.sessions == 8)  # every slot held by an idle connection
            # while they keep reconnecting: a well-behaved client from a new address, then
            # one from an attacker's address, are both served
            await served(server)
            await _raw_actuator_served(server, "127.0.0.2")
            assert server.sessions <= 8
            await until(lambda: not server.actuator.connected)
            before = state(server)  # what those two legitimate clients left
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        assert server.evicted >= 2 and counts["connects"] > 8
        assert any("evicting" in r.getMessage() for r in caplog.records)
        await until(lambda: server.sessions == 0)
        await assert_healthy(server, rss0, before)


async def _raw_actuator_served(server: PyMoDAQServer, host: str) -> None:
    """A G3 ACTUATOR from ``host`` written with our codec: registered and answered."""
    codec = G3Codec(Role.CLIENT)
    r, w = await connect(server.port, host)
    try:
        w.write(codec.send(Hello(ClientType.ACTUATOR))
                + codec.send(Infos(settings_to_xml({"units": "mm"}))))
        await asyncio.wait_for(_until(lambda: server.actuator.connected
                                      and server.actuator.session.stream.host == host,
                                      server.actuator), DEADLINE)
        query = asyncio.ensure_future(server.actuator.get_position())
        while True:
            codec.receive_data(await asyncio.wait_for(r.read(65536), DEADLINE))
            ev = codec.next_event()
            if ev is not NEED_DATA:
                break
        assert isinstance(ev, GetPosition)
        w.write(codec.send(PositionIs(4.5, "mm")))
        assert await asyncio.wait_for(query, DEADLINE) == 4.5
    finally:
        w.close()


async def test_per_address_cap_evicts_that_address_idle_connections(caplog):
    caplog.set_level(logging.WARNING, logger="labbridge.links.pymodaq")
    async with serving(max_connections=16, max_per_address=3) as server:
        rss0, before = rss(), state(server)
        idle = [await connect(server.port, "127.0.0.5") for _ in range(3)]
        await until(lambda: server.sessions == 3)
        _r, w = await connect(server.port, "127.0.0.5")  # the 4th from that address
        await wait_closed(server, 1)
        assert server.close_reasons[-1].startswith("evicted")
        assert sum(1 for s in server._sessions if s.stream.host == "127.0.0.5") == 3
        assert any("3 per address" in r.getMessage() for r in caplog.records)
        for _r2, w2 in [*idle, (_r, w)]:
            w2.close()
        await assert_healthy(server, rss0, before)


async def test_registered_clients_are_never_evicted(caplog):
    caplog.set_level(logging.WARNING, logger="labbridge.links.pymodaq")
    async with serving(max_connections=2, max_per_address=2) as server:
        rss0 = rss()
        cam = RecordingCamera(width=8, height=8)
        probe = Stage("p", SimStageBackend(position=1.0))
        clients = [PyMoDAQClient(d, "127.0.0.1", server.port, generation=Generation.G3,
                                 backoff=fast_backoff()) for d in (cam, probe)]
        for c in clients:
            await c.start()
        try:
            await asyncio.wait_for(server.detector.wait_connected(), DEADLINE)
            await asyncio.wait_for(server.actuator.wait_connected(), DEADLINE)
            r, w = await connect(server.port)  # no slot it could take: refused
            # with a reset, as an access refusal (a clean close makes a real client spin),
            # and the reason in the log
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), DEADLINE)
            w.close()
            assert server.evicted == 0 and server.refused >= 1
            assert any("too many connections: 127.0.0.1 already has 2, all registered clients"
                       in r.getMessage() for r in caplog.records)
            r, w = await connect(server.port, "127.0.0.9")  # another address: the server cap
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(r.read(1), DEADLINE)
            w.close()
            assert any("too many connections: all 2 slots hold registered clients"
                       in r.getMessage() for r in caplog.records)
            assert await server.actuator.get_position() == 1.0
            assert (await server.detector.grab())[0].shape == (8, 8)
        finally:
            for c in clients:
                await c.stop()
        assert rss() - rss0 < 64 * MiB


# --- memory only for bytes received --------------------------------------------------------------

def _declared_frame(declared: int, sent: int, kind: str = "GRABBER") -> bytes:
    """A G3 client's Done whose DataToExport frame announces ``declared`` bytes; the first
    ``sent`` of them."""
    return (encode_message(kind) + encode_message("Done")
            + declared.to_bytes(4, "big") + b"\x00\x00\x00\x0cDataToExport"
            + b"\x00" * (sent - 16))


async def test_a_declared_huge_frame_costs_only_the_bytes_received(no_gc):
    """Issue 13: a client declaring a 250 MiB frame made the server allocate it up front, and
    reference cycles kept the buffers after the connection ended. 24 such connections (an
    ACTUATOR and a GRABBER at a time: one of each type is registered) each send 4 MiB of it and
    go away; with the cyclic GC off, RSS stays bounded."""
    async with serving() as server:  # default 256 MiB maximum message
        rss0, before = rss(), state(server)
        wires = [_declared_frame(250 * MiB, 4 * MiB, kind) for kind in ("GRABBER", "ACTUATOR")]
        done = 0
        for _batch in range(12):
            conns = [await connect(server.port) for _ in wires]
            for (_r, w), wire in zip(conns, wires, strict=True):
                w.write(wire)
            for _r, w in conns:
                await w.drain()
            # the server holds what arrived so far, a few MiB per connection, not 250
            await until(lambda: sum(s.stream.bytes_received for s in server._sessions)
                        == sum(len(w) for w in wires))
            assert 0 < server.budget.used <= 2 * 8 * MiB
            for _r, w in conns:
                w.transport.abort()
            done += len(conns)
            await wait_closed(server, done)
        assert server.budget.used == 0
        await assert_healthy(server, rss0, before, max_growth=48 * MiB)


async def test_the_server_receive_budget_is_shared_and_refuses_beyond_it():
    async with serving(max_buffered=4 * MiB) as server:
        rss0, before = rss(), state(server)
        _ra, wa = await connect(server.port)
        wa.write(_declared_frame(200 * MiB, 3 * MiB))
        await until(lambda: server.budget.used == 4 * MiB)  # A's buffer took the whole budget
        _rb, wb = await connect(server.port)
        wb.write(_declared_frame(200 * MiB, 64 * 1024 + 16, "ACTUATOR"))
        await wait_closed(server, 1)
        assert server.close_reasons[-1].startswith("busy: receive budget exhausted")
        wa.transport.abort()
        wb.close()
        await wait_closed(server, 2)
        assert server.budget.used == 0
        await assert_healthy(server, rss0, before)


# --- backpressure ---------------------------------------------------------------------------------

async def test_a_client_that_does_not_read_pauses_our_reading_then_is_dropped():
    async with serving(max_write_buffer=2 * MiB) as server:
        rss0, before = rss(), state(server)
        _r, w = await connect(server.port, rcvbuf=4096)
        w.write(encode_message("GRABBER"))
        await asyncio.wait_for(server.detector.wait_connected(), DEADLINE)
        stream = server.detector.session.stream
        paused = False
        xml = "<p>" + "x" * (256 * 1024) + "</p>"
        for _ in range(1000):  # the application keeps sending; the peer never reads
            try:
                server.detector.set_info(["p"], xml)
            except ConnectionError:
                break
            paused = paused or stream.reading_paused
            await asyncio.sleep(0)
        else:
            pytest.fail("a peer that never reads was never dropped")
        assert paused  # its bytes were not read while ours waited for it
        assert stream.close_reason.startswith("slow_reader")
        w.close()
        await assert_healthy(server, rss0, before)


async def test_the_client_command_queue_is_bounded_and_reading_pauses():
    """A server floods a slow detector client with 20,000 commands and never reads: the
    client's queue stays at most max_queue, reading pauses, and after that server is gone the
    client serves a well-behaved one within a deadline."""
    gate = asyncio.Event()

    class SlowCamera(RecordingCamera):
        async def grab(self):
            await gate.wait()
            return await super().grab()

    cam = SlowCamera(width=64, height=64)
    conns: asyncio.Queue = asyncio.Queue()
    srv = await asyncio.start_server(lambda r, w: conns.put_nowait((r, w)), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    client = PyMoDAQClient(cam, "127.0.0.1", port, generation=Generation.G3,
                           backoff=fast_backoff(), max_queue=16)
    rss0 = rss()
    await client.start()
    try:
        _r, w = await asyncio.wait_for(conns.get(), DEADLINE)
        codec = G3Codec(Role.SERVER)
        w.write(codec.send(SendData("2D")) * 20_000)
        await until(lambda: client.stream is not None and client.stream.reading_paused)
        assert client.max_queued <= 16
        gate.set()
        w.transport.abort()  # that server goes away without reading anything
        # a well-behaved server: one request, one Done
        r2, w2 = await asyncio.wait_for(conns.get(), DEADLINE)
        codec2 = G3Codec(Role.SERVER)
        w2.write(codec2.send(SendData("2D")))
        got = None
        while not isinstance(got, Done):
            codec2.receive_data(await asyncio.wait_for(r2.read(1 << 16), DEADLINE))
            while (ev := codec2.next_event()) is not NEED_DATA:
                got = ev if isinstance(ev, Done) else got
        assert got.arrays[0].shape == (64, 64)
        assert np.array_equal(got.arrays[0], cam.sent[-1])
        w2.close()
    finally:
        await client.stop()
        srv.close()
        await srv.wait_closed()
    assert client.max_queued <= 16
    assert cam.exposure_ms == 10.0  # no device state changed
    assert rss() - rss0 < 64 * MiB


# --- bounded bookkeeping ----------------------------------------------------------------------------

async def test_close_reasons_and_infos_do_not_grow_forever():
    async with serving() as server:
        rss0, before = rss(), state(server)
        for i in range(300):
            _r, w = await connect(server.port)
            w.write(b"\x00\x00\x00\x99")  # not a client type: refused, one reason each
            await wait_closed(server, i + 1)
            w.close()
        assert len(server.close_reasons) == 256 and server.closed_connections == 300
        codec = G3Codec(Role.CLIENT)
        _r, w = await connect(server.port)
        w.write(codec.send(Hello(ClientType.GRABBER))
                + b"".join(codec.send(Info(f"n{i}", "v")) for i in range(300)))
        await asyncio.wait_for(_until(lambda: len(server.detector.infos) >= 256,
                                      server.detector), DEADLINE)
        w.write(codec.send(Info("n0", "w")))  # a known name is still updated
        await asyncio.wait_for(_until(lambda: server.detector.infos["n0"] == "w",
                                      server.detector), DEADLINE)
        assert len(server.detector.infos) == 256
        w.close()
        await wait_closed(server, 301)
        await assert_healthy(server, rss0, before)


async def test_a_replaced_client_that_does_not_read_is_dropped_after_a_grace_period():
    """A closing connection waits for the peer to take the bytes queued for it; one that never
    reads would keep its slot and buffers for ever: it is dropped after close_grace."""
    async with serving(close_grace=0.2) as server:
        rss0 = rss()
        _r, w = await connect(server.port, rcvbuf=4096)
        w.write(encode_message("GRABBER"))
        await asyncio.wait_for(server.detector.wait_connected(), DEADLINE)
        old = server.detector.session.stream
        for _ in range(64):  # more than the kernel buffers take: some stays queued with us
            server.detector.set_info(["p"], "<p>" + "x" * 65536 + "</p>")
        assert old.transport.get_write_buffer_size() > 0
        cam = RecordingCamera(width=4, height=4)
        c = PyMoDAQClient(cam, "127.0.0.1", server.port, generation=Generation.G3,
                          backoff=fast_backoff())
        await c.start()
        try:
            assert await asyncio.wait_for(old.wait_closed(), DEADLINE) is not None
            assert old.close_reason.startswith("timeout: peer did not take our last bytes")
            assert (await server.detector.grab())[0].shape == (4, 4)  # the new one is served
        finally:
            await c.stop()
            w.close()
        assert rss() - rss0 < 64 * MiB
