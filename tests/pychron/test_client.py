"""PychronClient, RemoteValves and StatusMonitor against a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.blocking import BlockingPychronClient, BlockingRemoteValves
from labbridge.links.pychron.client import (
    ErrorReply,
    NoReply,
    PychronClient,
    ReplyLost,
    UnknownCommand,
    Unreachable,
    is_idempotent,
)
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.monitor import StatusMonitor
from labbridge.links.pychron.remote import ActuationError, ActuationUncertain, RemoteValves
from labbridge.links.pychron.server import PychronCommandServer
from labbridge.links.pychron.valves import ValveCommands
from labbridge.transport.backoff import Backoff
from tests.pychron.server_helpers import running_server


def make_bank(**kw) -> ValveBank:
    return ValveBank("valves", [ValveConfig("A"), ValveConfig("B", initially_open=True),
                                ValveConfig("C", initially_locked=True)],
                     SimValveBackend(**kw))


@pytest.mark.parametrize("mode", ["braced", "plain", "json", "udp"])
async def test_client_forms(mode):
    bank = make_bank()
    async with running_server(ValveCommands([bank]), udp=True) as server:
        port = server.udp_port if mode == "udp" else server.port
        client = PychronClient("127.0.0.1", port, udp=mode == "udp",
                               framing="braced" if mode == "udp" else mode)
        async with client:
            assert await client.ask("Open A") == "OK"
            assert await client.ask("GetValveState A") == "OK"
            with pytest.raises(ErrorReply) as info:
                await client.call("GetValveState Z")
            assert info.value.code == 5
        assert bank.is_open("A")


async def test_braced_pipelining_from_many_tasks():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        async with PychronClient("127.0.0.1", server.port) as client:
            replies = await asyncio.gather(*(client.ask(f"GetValveState {'AB'[i % 2]}")
                                             for i in range(200)))
    assert replies == ["False", "OK"] * 100


async def test_unreachable_and_idempotent_classification():
    assert is_idempotent("GetValveStates") and is_idempotent("Read X")
    assert not is_idempotent("Open A") and not is_idempotent("Set F 1")
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = PychronClient("127.0.0.1", port, retries=1, timeout=1.0)
    with pytest.raises(Unreachable):
        await client.ask("GetValveStates")


@contextlib.asynccontextmanager
async def silent_server(record: list[bytes]):
    """Accepts, records what it gets, never answers (a wedged real server)."""
    writers = []

    async def handle(reader, writer):
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(4096):
                record.append(data)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.transport.abort()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("framing", ["braced", "plain"])
async def test_actuation_is_never_resent(framing):
    got: list[bytes] = []
    async with silent_server(got) as port:
        client = PychronClient("127.0.0.1", port, framing=framing, timeout=0.2, retries=3)
        with pytest.raises(ReplyLost):
            await client.ask("Open A")
        await client.close()
        assert b"".join(got).count(b"Open A") == 1
        # Idempotent queries are retried.
        got.clear()
        client = PychronClient("127.0.0.1", port, framing=framing, timeout=0.2, retries=2)
        with pytest.raises(NoReply):
            await client.ask("GetValveStates")
        await client.close()
    assert b"".join(got).count(b"GetValveStates") == 3


async def test_remote_valves_reply_lost_reads_state_instead_of_resending():
    """A node that drops the reply to Open: the client reads the state, never re-sends."""
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        sent: list[str] = []

        class DroppingClient(PychronClient):
            async def _ask_once(self, request, timeout):
                sent.append(request)
                reply = await super()._ask_once(request, timeout)
                if request.startswith("Open"):
                    raise NoReply("reply lost on the way back")
                return reply

        client = DroppingClient("127.0.0.1", server.port, framing="plain")
        valves = RemoteValves(client)
        act = await valves.open("A")
        assert act.reply is None and act.state is True
        assert sent.count("Open A") == 1
        assert bank.is_open("A")


async def test_remote_valves_confirm_lock_and_errors():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        async with PychronClient("127.0.0.1", server.port) as client:
            valves = RemoteValves(client)
            act = await valves.open("A")
            assert act.state is True and act.reply == "OK"
            locked = await valves.open("C")
            assert locked.locked and locked.state is False
            with pytest.raises(ActuationError):
                await valves.open("Z")
            assert await valves.states() == {"A": True, "B": True, "C": False}
            assert await valves.locks() == {"A": False, "B": False, "C": True}
            assert await valves.owners() == {"A": "", "B": "", "C": ""}
            assert await valves.verify({"A": True, "B": True, "C": False},
                                       {"A": False, "B": False, "C": True})
            assert not await valves.verify({"A": False, "B": True, "C": False},
                                           {"A": False, "B": False, "C": True})
            await valves.unlock("C")
            assert await valves.lock_state("C") is False


async def test_remote_valves_uncertain_when_state_disagrees():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        class LosingClient(PychronClient):
            async def _ask_once(self, request, timeout):
                # braced: RemoteValves asks in the JSON form {"command": "Open", ...}
                if request.startswith(("Open", '{"command": "Open"')):
                    raise NoReply("lost before it reached the node")
                return await super()._ask_once(request, timeout)

        valves = RemoteValves(LosingClient("127.0.0.1", server.port))
        with pytest.raises(ActuationUncertain) as info:
            await valves.open("A")
        assert info.value.observed is False
        await valves.client.close()


async def test_remote_valves_uncertain_when_the_confirming_read_fails():
    """The node answered OK; only the read-back was lost: ActuationUncertain saying so, not a
    bare NoReply about a query (docs/faults.md, pipelined loss)."""
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        class LosingClient(PychronClient):
            async def _ask_once(self, request, timeout):
                if request.startswith("GetIndicatorState"):
                    raise NoReply("lost")
                return await super()._ask_once(request, timeout)

        valves = RemoteValves(LosingClient("127.0.0.1", server.port, retries=1))
        with pytest.raises(ActuationUncertain) as info:
            await valves.open("A")
        assert info.value.observed is None
        assert "node answered OK" in str(info.value)
        assert bank.is_open("A") and len(bank.backend.calls) == 1  # once, never re-sent
        await valves.client.close()


async def test_zero_bytes_then_close_is_unknown_command():
    async def handle(reader, writer):
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UnknownCommand):
            await PychronClient("127.0.0.1", port, framing="plain").ask("Foo")
    finally:
        server.close()
        await server.wait_closed()


async def test_braced_client_reconnects_after_server_restart():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        port = server.port
        client = PychronClient("127.0.0.1", port)
        assert await client.ask("GetValveState B") == "OK"
    # Same port again (the OS lets us rebind it).
    from labbridge.links.pychron.dispatch import Dispatcher
    from labbridge.links.pychron.server import PychronCommandServer

    again = PychronCommandServer(Dispatcher([ValveCommands([bank])]), "127.0.0.1", port)
    await again.start()
    try:
        assert await client.ask("GetValveState B") == "OK"
    finally:
        await client.close()
        await again.stop()


def test_blocking_facades():
    import threading

    ready = threading.Event()
    holder: dict = {}

    def run_server():
        async def main():
            bank = make_bank()
            async with running_server(ValveCommands([bank])) as server:
                holder["port"] = server.port
                holder["stop"] = asyncio.Event()
                holder["loop"] = asyncio.get_running_loop()
                ready.set()
                await holder["stop"].wait()

        asyncio.run(main())

    t = threading.Thread(target=run_server)
    t.start()
    try:
        assert ready.wait(10)
        with BlockingRemoteValves("127.0.0.1", holder["port"]) as line:
            assert line.open("A").state is True
            assert line.states() == {"A": True, "B": True, "C": False}
            assert line.close_valve("A").state is False
        with BlockingPychronClient("127.0.0.1", holder["port"], framing="plain") as c:
            assert c.ask("GetValveState B") == "OK"
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        t.join(10)


async def test_status_monitor_follows_changes_and_resyncs():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        async with PychronClient("127.0.0.1", server.port) as client:
            changes: list[tuple[str, bool | None, str]] = []
            seen_a_open = asyncio.Event()
            b_corrected = asyncio.Event()

            def on_change(old, new):
                changes.append((new.name, new.state, new.source))
                if new.name == "A" and new.state:
                    seen_a_open.set()
                if new.name == "B" and new.state and old is not None and old.state is False:
                    b_corrected.set()  # a poll put our wrong belief right

            mon = StatusMonitor(RemoteValves(client), update_period=0.02, on_change=on_change)
            await mon.start()
            try:
                await asyncio.wait_for(mon.wait_synced(), 5)
                assert {n: v.state for n, v in mon.valves.items()} == {
                    "A": False, "B": True, "C": False}
                assert mon.valves["C"].locked is True
                await bank.open("A")  # changed behind the monitor's back: polling finds it
                await asyncio.wait_for(seen_a_open.wait(), 5)
                # A pushed change applies at once, without a poll.
                polls = mon.polls
                mon.push("B", state=False)
                assert mon.valves["B"].state is False and mon.valves["B"].source == "push"
                assert mon.polls == polls
                # Our belief is now wrong (B is really open): the checksum poll notices and
                # a full resync puts it right.
                await asyncio.wait_for(b_corrected.wait(), 5)
                assert mon.checksum_mismatches >= 1
                assert mon.valves["B"].state is True
                resyncs = mon.resyncs
                mon.gap_detected()
                for _ in range(500):
                    if mon.resyncs > resyncs:
                        break
                    await asyncio.sleep(0.01)
                assert mon.resyncs > resyncs
            finally:
                await mon.stop()


async def test_status_monitor_reports_unreachable():
    statuses: list[str] = []
    got = asyncio.Event()

    def on_status(status, detail):
        statuses.append(status)
        if status == "node_unreachable":
            got.set()

    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = PychronClient("127.0.0.1", port, retries=0, timeout=0.2)
    mon = StatusMonitor(RemoteValves(client), update_period=0.01, on_status=on_status)
    await mon.start()
    try:
        await asyncio.wait_for(got.wait(), 10)
    finally:
        await mon.stop()
    # a refused port is a verdict at the first failed poll (tests/bus/test_status_monitor.py)
    assert statuses[-1] == "node_unreachable" and mon.failures >= 1


async def test_reconnect_backs_off_and_logs_once_per_state_change(caplog):
    caplog.set_level(logging.INFO, logger="labbridge")
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    client = PychronClient("127.0.0.1", port, framing="plain",
                           backoff=Backoff(initial=0.01, maximum=0.04, jitter=0.0))
    loop = asyncio.get_running_loop()
    delays = []
    for _ in range(5):  # a script looping on a dead server
        with pytest.raises(Unreachable):
            await client.ask("Open A")
        delays.append(client._retry_at - loop.time())
    assert client.connect_attempts == 5
    # Each failure pushes the next attempt further out, up to the maximum.
    assert delays[0] < delays[1] < delays[2] and max(delays) <= 0.04
    bank = make_bank()
    server = PychronCommandServer(Dispatcher([ValveCommands([bank])]), "127.0.0.1", port)
    await bank.start()
    await server.start()
    try:
        assert await client.ask("GetValveState B") == "OK"
        assert client._retry_at == 0.0
    finally:
        await client.close()
        await server.stop()
        await bank.stop()
    logged = [r.getMessage() for r in caplog.records if r.name.endswith("pychron.client")]
    assert len([m for m in logged if "back off" in m]) == 1, logged
    assert len([m for m in logged if "reachable again" in m]) == 1, logged
