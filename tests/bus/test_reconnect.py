"""Subscribers pointed at the wrong port, or losing their publisher, reconnect with
exponential backoff and log one line per state change (issue 13; ADR 0121).

Each check runs the subscriber for a measurement window and then counts: connection attempts
(server side where we own the server), the process's CPU time in the window (generous bound:
a retry loop without backoff keeps a core busy), and the subscriber's log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from labbridge.bus.publisher import Publisher
from labbridge.bus.sockets import BusError
from labbridge.bus.subscriber import Subscriber
from labbridge.links.pychron.valves import ValveCommands
from tests.bus.helpers import until_joined
from tests.pychron.server_helpers import bank_from_vector, running_server

#: The measurement window (seconds): backoff 0.1, 0.2, 0.4, 0.8 s allows ~5 attempts in it;
#: a loop without backoff makes hundreds.
WINDOW = 2.0
SUB_LOGGER = "labbridge.bus.subscriber"


def sub_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == SUB_LOGGER and r.levelno >= logging.INFO]


@contextlib.asynccontextmanager
async def accept_and_close():
    """A TCP port that accepts every connection and closes it at once; counts them."""
    accepted = []
    first = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        first.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted, first
    finally:
        server.close()
        await server.wait_closed()


async def measure(window: float = WINDOW) -> float:
    """CPU seconds this process used during ``window`` seconds of letting the loop run."""
    cpu0 = time.process_time()
    await asyncio.sleep(window)  # the measurement window itself, not a synchronisation
    return time.process_time() - cpu0


async def test_port_that_accepts_and_closes_is_retried_with_backoff(caplog):
    caplog.set_level(logging.DEBUG, logger=SUB_LOGGER)
    async with accept_and_close() as (port, accepted, first):
        sub = Subscriber(f"127.0.0.1:{port}", name="wrong-port")
        await sub.start()
        try:
            await asyncio.wait_for(first.wait(), 10)
            n0 = len(accepted)
            cpu = await measure()
            attempts = len(accepted) - n0
        finally:
            await sub.stop()
    assert 1 <= attempts <= 12, attempts          # no backoff: hundreds
    assert cpu < 0.5 * WINDOW, cpu                # no backoff: a busy core
    warnings = [m for m in sub_lines(caplog) if "accepted the connection" in m]
    assert len(warnings) == 1 and f"127.0.0.1:{port}" in warnings[0]
    assert len(sub_lines(caplog)) == 1, sub_lines(caplog)   # one line for the whole episode


async def test_command_port_given_by_mistake_is_retried_with_backoff(caplog):
    """The real mistake: a labbridge command server's port instead of the notifier's."""
    caplog.set_level(logging.DEBUG, logger=SUB_LOGGER)
    bank = bank_from_vector([{"name": "A", "kind": "valve", "state": 0}])
    async with running_server(ValveCommands([bank])) as server:
        sub = Subscriber(f"127.0.0.1:{server.port}", name="wrong-port")
        await sub.start()
        try:
            await sub.wait_link("down", timeout=10)  # the first failure was seen
            r0 = sub.reconnects
            cpu = await measure()
            attempts = sub.reconnects - r0
        finally:
            await sub.stop()
    assert attempts <= 12, attempts
    assert cpu < 0.5 * WINDOW, cpu
    lines = sub_lines(caplog)
    assert len(lines) == 1 and "is it a ZeroMQ publisher" in lines[0], lines


async def test_nothing_listening_is_one_line_and_no_busy_loop(caplog):
    caplog.set_level(logging.DEBUG, logger=SUB_LOGGER)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    sub = Subscriber(f"127.0.0.1:{port}", name="nobody")
    await sub.start()
    try:
        cpu = await measure()
    finally:
        await sub.stop()
    assert cpu < 0.5 * WINDOW, cpu
    lines = sub_lines(caplog)
    assert len(lines) == 1 and "cannot connect" in lines[0], lines


async def test_lost_publisher_is_one_line_down_and_one_up(caplog):
    """The publisher goes away and comes back on the same port: 'lost', then 'again'; the
    subscriber gets messages again without doing anything."""
    caplog.set_level(logging.DEBUG, logger=SUB_LOGGER)
    first = Publisher(port=0)
    first.open()
    port = first.port
    sub = Subscriber(first.url, name="follower")
    await sub.start()
    second = Publisher(port=port)
    try:
        await until_joined(sub, lambda: first.publish("lab.x.v", 0))
        first.close()
        await sub.wait_link("down", timeout=10)
        await measure(0.5)  # a few refused attempts while nobody listens
        for _ in range(250):  # ZeroMQ frees the port in its I/O thread: retry (5 s max)
            try:
                second.open()
                break
            except BusError:
                await asyncio.sleep(0.02)
        await until_joined(sub, lambda: second.publish("lab.x.v", 1),
                           lambda t, p, m: m.publisher == second.publisher_id, timeout=20)
    finally:
        second.close()
        await sub.stop()
    lines = sub_lines(caplog)
    assert [m for m in lines if "lost" in m] and [m for m in lines if "again" in m], lines
    assert len(lines) == 2, lines


# -- dashboard_client ---------------------------------------------------------------------------
KINDS_LOGGER = "labbridge.node.kinds.bus"


async def test_dashboard_client_pointed_at_a_wrong_port_backs_off(caplog):
    from labbridge.bus.dashboard import DashboardClient
    from labbridge.node.kinds.bus import DashboardClientService

    caplog.set_level(logging.DEBUG, logger=KINDS_LOGGER)
    async with accept_and_close() as (port, accepted, first):
        svc = DashboardClientService("dash-in", DashboardClient("127.0.0.1", port - 1,
                                                                rep_port=port))
        await svc.start()
        try:
            await asyncio.wait_for(first.wait(), 10)
            n0 = len(accepted)
            cpu = await measure(2.5)
            in_window = len(accepted) - n0
        finally:
            await svc.stop()
    # one connection per ping and 0.5 s doubling between pings; before: one every 100 ms
    assert in_window <= 6, in_window
    assert cpu < 0.5 * 2.5, cpu
    lines = [r.getMessage() for r in caplog.records if r.name == KINDS_LOGGER]
    assert len(lines) == 1 and "no dashboard server answers" in lines[0], lines
    assert not svc.client.connected.is_set()


async def test_dashboard_client_with_a_malformed_host_says_so_once(caplog):
    from labbridge.bus.dashboard import DashboardClient
    from labbridge.node.kinds.bus import DashboardClientService

    caplog.set_level(logging.DEBUG, logger=KINDS_LOGGER)
    client = DashboardClient("no such host", 8100)
    try:
        with contextlib.suppress(BusError):
            await client.connect()
        svc = DashboardClientService("dash-in", client)
        await svc.start()
        assert svc._task is not None
        await asyncio.wait_for(svc._task, 10)   # gives up: retrying cannot help
    finally:
        await client.close()
    assert svc.failed is not None and "tcp://no such host:8101" in svc.failed
    assert "\n" not in svc.failed and "HOST:PORT" in svc.failed
    lines = [r.getMessage() for r in caplog.records if r.name == KINDS_LOGGER]
    assert len(lines) == 1 and "no such host" in lines[0], lines
