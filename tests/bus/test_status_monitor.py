"""StatusMonitor verdicts (issue 15 item 5; ADR 0122): a killed node is reported unreachable
as soon as its port refuses, a silent one after ``unreachable_after`` quick polls; the
backoff while a node is down slows the retries, never the verdict; one line per change.

The monitors here tick every 10 s, so polls are 30 s apart and the old backoff (30 s, then
60 s before the third failure) put the verdict 90 s away: each wait below would time out.
"""

from __future__ import annotations

import asyncio
import logging

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.monitor import StatusMonitor, definitely_down
from labbridge.links.pychron.remote import RemoteValves
from labbridge.links.pychron.valves import ValveCommands
from tests.pychron.server_helpers import bank_from_vector, running_server

TICK = 10.0
MON_LOGGER = "labbridge.links.pychron.monitor"


class Watch:
    """on_status callback with an event per status."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.events: dict[str, asyncio.Event] = {}

    def __call__(self, status: str, detail: str) -> None:
        self.seen.append(status)
        self.events.setdefault(status, asyncio.Event()).set()

    async def wait(self, status: str, timeout: float) -> None:
        ev = self.events.setdefault(status, asyncio.Event())
        await asyncio.wait_for(ev.wait(), timeout)


async def test_killed_node_is_unreachable_at_once_and_back_when_it_returns(caplog):
    caplog.set_level(logging.INFO, logger=MON_LOGGER)
    bank = bank_from_vector([{"name": "A", "kind": "valve", "state": 0}])
    watch = Watch()
    async with running_server(ValveCommands([bank])) as server:
        port = server.port
        client = PychronClient("127.0.0.1", port, timeout=2.0)
        mon = StatusMonitor(RemoteValves(client), update_period=TICK, on_status=watch)
        await mon.start()
        try:
            await watch.wait("ok", 10)
            await server.stop()            # the node is killed: its port refuses
            mon.request_resync()           # the next poll is due now, not in 30 s
            await watch.wait("node_unreachable", 10)
            assert mon.failures == 1       # one failed poll was enough
        finally:
            await mon.stop()
            await client.close()
    assert watch.seen == ["ok", "node_unreachable"]
    down = [r.getMessage() for r in caplog.records if "node_unreachable" in r.getMessage()]
    assert len(down) == 1 and f"127.0.0.1:{port}" in down[0]


async def test_silent_node_gets_its_verdict_after_quick_polls_then_backoff():
    """A node that accepts and never answers: no refusal to go by, so three failed polls
    (each the client's own timeout) -- but not three backoff periods."""
    conns: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PychronClient("127.0.0.1", port, timeout=0.2, retries=0)
    watch = Watch()
    mon = StatusMonitor(RemoteValves(client), update_period=TICK, on_status=watch)
    await mon.start()
    try:
        await watch.wait("node_unreachable", 20)
        assert mon.failures == 3 and mon.down_polls == 0
    finally:
        await mon.stop()
        await client.close()
        for w in conns:
            w.close()
        server.close()
        await server.wait_closed()


async def test_accept_and_close_port_is_polled_with_backoff_not_hammered(caplog):
    """A port that accepts and closes: the verdict, then retries backing off -- one log
    line, and few connections in a measurement window."""
    caplog.set_level(logging.DEBUG, logger=MON_LOGGER)
    accepted: list[int] = []

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PychronClient("127.0.0.1", port, timeout=0.2)
    watch = Watch()
    mon = StatusMonitor(RemoteValves(client), update_period=0.05, on_status=watch)
    await mon.start()
    try:
        await watch.wait("node_unreachable", 20)
        n0 = len(accepted)
        await asyncio.sleep(2.0)  # the measurement window
        in_window = len(accepted) - n0
    finally:
        await mon.stop()
        await client.close()
        server.close()
        await server.wait_closed()
    # backoff 0.15 s doubling: a handful of polls of 3 client attempts each
    assert in_window <= 30, in_window
    lines = [r.getMessage() for r in caplog.records if r.name == MON_LOGGER]
    assert len(lines) == 1, lines


def test_definitely_down_follows_the_cause_chain():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise RuntimeError("cannot connect") from exc
    except RuntimeError as outer:
        assert definitely_down(outer)
    assert not definitely_down(TimeoutError("no reply"))
    assert not definitely_down(ConnectionResetError(104, "reset"))
