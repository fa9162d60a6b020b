"""Valve actuations across a broken network (issue 16; ADR 0005 and 0160).

The node (a valve bank on simulated hardware + the Pychron command server) runs in its own
network namespace; the acquisition side (``PychronClient`` + ``RemoteValves``) runs here.
Every physical actuation on the node is counted by the probe (tests/faults/probe.py).

What must hold in every scenario: ``open`` ends within a bound derived from the client's
timeout (never hangs), with a result or a clear error; the valve is actuated at most once,
also later (a request given up on must not reach the valve when the link comes back); and
what the client reports agrees with the valve.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from labbridge.links.pychron.client import PychronClient, PychronClientError
from labbridge.links.pychron.remote import ActuationUncertain, RemoteValves
from tests.faults.conftest import LogEvent, elapsed, unsent

pytestmark = pytest.mark.faults

#: Client timeout (s): every bound below is a multiple of it.
T = 1.0


def valve_node(n: int = 1) -> str:
    names = ["A"] if n == 1 else [f"V{i:02d}" for i in range(n)]
    valves = "\n".join(f"      - {{name: {name}, address: {i}}}" for i, name in enumerate(names))
    return f"""
node: valve-node
devices:
  - kind: valve_bank
    name: valves
    persist: false
    backend: {{kind: sim, delay: 0.0}}
    valves:
{valves}
services:
  - {{kind: pychron_command_server, name: cmd, host: "@HOST@", port: 0}}
"""


def matches(requests: list[tuple[bool, bool]], done: list[bool]) -> bool:
    """Can the node's actuations ``done`` (levels, in order) be assigned to distinct
    ``requests`` (level, answered OK), in order, same level, using every answered one?"""
    n, m = len(requests), len(done)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[0][0] = True
    for i, (level, answered) in enumerate(requests):
        for j in range(m + 1):
            if not ok[i][j]:
                continue
            if not answered:
                ok[i + 1][j] = True  # this request never ran
            if j < m and done[j] == level:
                ok[i + 1][j + 1] = True  # it ran as the node's j-th actuation
    return ok[n][m]


def bound(client: PychronClient) -> float:
    """How long ``RemoteValves.open`` may take at most: the actuation's timeout, then the
    read-back (``1 + retries`` attempts of connect + timeout, with backoff), plus slack for a
    loaded machine. Used as the hang detector, not as a latency figure."""
    return client.timeout + (1 + client.retries) * (client.connect_timeout + client.timeout) \
        + 2.0 + 5.0


async def connected(netns, node) -> tuple[PychronClient, RemoteValves]:
    client = PychronClient(netns.ns_ip, node.port("cmd"), timeout=T, retries=2)
    valves = RemoteValves(client)
    assert await valves.state("A") is False  # the persistent connection is up
    return client, valves


@pytest.mark.parametrize("heal", ["on-lost-reply", "after-call"])
async def test_partition_before_request(netns, start_node, outcome, heal):
    """The request never reaches the node: the client must not deliver it later either."""
    out = outcome("valve-partition-before-request" if heal == "on-lost-reply"
                  else "valve-partition-before-request-persists")
    node = await start_node(netns, valve_node())
    client, valves = await connected(netns, node)
    port = node.port("cmd")
    try:
        with LogEvent("labbridge.links.pychron.remote", "reading the state") as lost:
            netns.partition()
            t_fault = time.monotonic()
            task = asyncio.create_task(valves.open("A"))
            at = await lost.wait(bound(client))
            out.detected = round(at - t_fault, 3)
            # Given up on: the request must not wait in our kernel for the link to return.
            assert unsent(netns.ns_ip, port) == []
            out.check("the abandoned request is not left in the kernel's send queue")
            if heal == "on-lost-reply":
                netns.heal()
            t_heal = time.monotonic()
            with pytest.raises(ActuationUncertain) as info:
                async with asyncio.timeout(bound(client)):
                    await task
            call_time = elapsed(t_fault)
        if heal == "on-lost-reply":
            # The read-back reached the node: it says closed, and it is.
            assert info.value.observed is False, info.value
            out.recovered = elapsed(t_heal)
            out.happened = (f"`ReplyLost` after the {T:g} s timeout, state read back after "
                            "the heal: `ActuationUncertain` (valve reads closed)")
        else:
            assert info.value.observed is None, info.value
            netns.heal()
            t_heal = time.monotonic()
            assert await valves.state("A") is False
            out.recovered = elapsed(t_heal)
            out.happened = (f"`ReplyLost` after the {T:g} s timeout, read-back failed too: "
                            f"`ActuationUncertain` (state unknown) {call_time:.1f} s after the "
                            "fault")
        assert "may or may not" in str(info.value) or "reads closed" in str(info.value)
        out.check(f"open ended in {call_time:.1f} s (bound {bound(client):.0f} s) with "
                  "`ActuationUncertain`")
        # Give a request that was left behind every chance to arrive: a query on a new
        # connection, after the heal, is answered after anything older from us.
        assert await valves.indicator_state("A") is False
        assert node.actuations("0") == 0
        out.check("valve never actuated")
        # The operator's decision to try again actuates exactly once.
        act = await valves.open("A")
        assert act.state is True and node.actuations("0") == 1
        out.check("a new `open` after the heal actuates exactly once")
    finally:
        await client.close()


@pytest.mark.parametrize("heal", ["on-lost-reply", "after-call"])
async def test_partition_after_request(netns, start_node, outcome, heal):
    """The request reached the valve, its reply is lost: read back, never re-sent."""
    out = outcome("valve-partition-after-request" if heal == "on-lost-reply"
                  else "valve-partition-after-request-persists")
    node = await start_node(netns, valve_node())
    client, valves = await connected(netns, node)
    try:
        node.hold("0")
        with LogEvent("labbridge.links.pychron.remote", "reading the state") as lost:
            task = asyncio.create_task(valves.open("A"))
            await node.wait_probe("held 0", timeout=bound(client))
            netns.partition()
            t_fault = time.monotonic()
            node.release("0")  # the valve moves now; its reply meets the partition
            await node.wait_probe("done 0 1")
            at = await lost.wait(bound(client))
            out.detected = round(at - t_fault, 3)
            if heal == "on-lost-reply":
                netns.heal()
                t_heal = time.monotonic()
                async with asyncio.timeout(bound(client)):
                    act = await task
                out.recovered = elapsed(t_heal)
                # Completed: the reply was lost, the state read back confirms the open.
                assert act.reply is None and act.state is True
                out.happened = (f"`ReplyLost` after the {T:g} s timeout; after the heal the "
                                "read-back confirmed the valve open: `open` returned with "
                                "`reply=None, state=True`")
            else:
                with pytest.raises(ActuationUncertain) as info:
                    async with asyncio.timeout(bound(client)):
                        await task
                assert info.value.observed is None
                call_time = elapsed(t_fault)
                netns.heal()
                t_heal = time.monotonic()
                assert await valves.indicator_state("A") is True
                out.recovered = elapsed(t_heal)
                out.happened = (f"`ReplyLost` after the {T:g} s timeout, read-back failed: "
                                f"`ActuationUncertain` (state unknown) after {call_time:.1f} "
                                "s; after the heal the valve reads open")
        assert node.actuations("0") == 1
        out.check("valve actuated exactly once (never re-sent)")
    finally:
        node.release("0")
        await client.close()


async def test_reset_during_actuation(netns, start_node, outcome):
    out = outcome("valve-reset-during-actuation")
    node = await start_node(netns, valve_node())
    client, valves = await connected(netns, node)
    port = node.port("cmd")
    try:
        node.hold("0")
        task = asyncio.create_task(valves.open("A"))
        await node.wait_probe("held 0", timeout=bound(client))
        netns.reset(port)
        t_fault = time.monotonic()
        node.release("0")
        with pytest.raises(ActuationUncertain) as info:
            async with asyncio.timeout(bound(client)):
                await task
        out.detected = elapsed(t_fault)
        assert info.value.observed is None
        lost = info.value.__cause__  # the ReplyLost of the actuation
        assert lost is not None
        netns.heal()
        t_heal = time.monotonic()
        is_open = await valves.indicator_state("A")
        out.recovered = elapsed(t_heal)
        # The reset may reach the node before the held actuation runs: the server then
        # cancels it with the dead connection's request (links/pychron/server.py). Either way
        # it started once, and what the valve reads is what happened.
        assert node.actuations("0") == 1
        finished = "done 0 1" in node.probe_lines()
        assert is_open is finished, (is_open, node.probe_lines())
        out.numbers = {"valve_moved": finished}
        assert "cannot connect" in str(info.value), info.value  # the read-back, refused
        out.happened = (f"the actuation's reply was lost ({type(lost.__cause__).__name__}), "
                        "the read-back could not connect (reset): `ActuationUncertain` (state "
                        f"unknown); after the heal the valve reads "
                        f"{'open' if is_open else 'closed'} (the node "
                        f"{'finished' if finished else 'cancelled'} the actuation)")
        out.check("actuation started once, never re-sent; the valve's state after the heal is "
                  "what the node did")
    finally:
        node.release("0")
        await client.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("percent", [5, 30])
async def test_loss_during_pipelined_commands(netns, start_node, outcome, percent):
    """24 valves driven at once on one braced connection (pipelined): each valve opened and
    closed alternately ``ROUNDS`` times, with three queries beside every actuation."""
    out = outcome(f"pipelined-loss-{percent}")
    n, rounds = 24, 6
    node = await start_node(netns, valve_node(n))
    names = [f"V{i:02d}" for i in range(n)]
    client = PychronClient(netns.ns_ip, node.port("cmd"), timeout=T, retries=2)
    valves = RemoteValves(client)
    results: dict[str, list[object]] = {v: [] for v in names}
    queries: list[object] = []

    async def query(name: str) -> None:
        try:
            queries.append(await client.call(f"GetValveState {name}"))
        except PychronClientError as exc:
            queries.append(exc)

    async def drive(name: str) -> None:
        for k in range(rounds):
            target = k % 2 == 0
            call = valves.open(name) if target else valves.close(name)
            r: object = (await asyncio.gather(call, *(query(name) for _ in range(3)),
                                              return_exceptions=True))[0]
            if isinstance(r, BaseException) and not isinstance(r, PychronClientError):
                raise r
            results[name].append(r)

    try:
        assert await valves.state("V00") is False
        netns.loss(percent)
        t_fault = time.monotonic()
        async with asyncio.timeout(rounds * bound(client) * 2 + 30):
            await asyncio.gather(*(drive(v) for v in names))
        took = elapsed(t_fault)
        netns.heal()
        states = await valves.states()
        confirmed = uncertain = errors = 0
        for i, v in enumerate(names):
            ok = sum(1 for r in results[v] if hasattr(r, "state"))
            unsure = sum(1 for r in results[v] if isinstance(r, ActuationUncertain))
            other = [r for r in results[v] if not hasattr(r, "state")
                     and not isinstance(r, ActuationUncertain)]
            # Nothing hangs or vanishes: each call gave a result or a client error.
            assert all(isinstance(r, PychronClientError) for r in other), other
            # Every physical actuation is a distinct request, in order, and every request the
            # node answered OK is among them (a read-back confirmation only says the valve is
            # where it was sent: it may have been there already).
            requests = [(k % 2 == 0, getattr(r, "reply", None) is not None)
                        for k, r in enumerate(results[v])]
            assert matches(requests, node.levels(str(i))), (v, results[v], node.levels(str(i)))
            confirmed, uncertain, errors = confirmed + ok, uncertain + unsure, \
                errors + len(other)
            last = next((r for r in reversed(results[v]) if hasattr(r, "state")), None)
            if last is not None and last is results[v][-1]:
                assert states[v] is last.state, (v, results[v], states[v])
        failed_q = sum(1 for q in queries if isinstance(q, PychronClientError))
        assert all(isinstance(q, str | PychronClientError) for q in queries)
        total = n * rounds
        out.numbers = {"actuations": total, "confirmed": confirmed, "uncertain": uncertain,
                       "other_errors": errors, "queries": len(queries),
                       "queries_failed": failed_q, "seconds": took}
        out.happened = (f"{confirmed}/{total} actuations confirmed, {uncertain} "
                        f"`ActuationUncertain`, {errors} other client errors; "
                        f"{failed_q}/{len(queries)} queries failed with a client error; "
                        f"all ended in {took:.1f} s")
        out.check("every call returned or raised a client error (none hung)")
        out.check("per valve, the node's actuations match distinct requests in order, including "
                  "every one it answered OK (none twice)")
    finally:
        await client.close()
