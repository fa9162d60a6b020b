"""The StatusMonitor across a partition (issue 16): it must say the node is unreachable
promptly, and resynchronise by itself once the link is back, including a change made on the
node while it was cut off.

The monitor is wired to the node's bus the way docs/bus.md shows (pushes, ``bus_alive``,
``gap_detected``); the node (valves + command server + notifier) runs in a namespace.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.monitor import StatusMonitor, ValveView
from labbridge.links.pychron.remote import RemoteValves
from labbridge.protocol.telemetry.sequence import Gap
from tests.faults.conftest import elapsed

pytestmark = pytest.mark.faults

NODE = """
node: vnode
devices:
  - kind: valve_bank
    name: valves
    persist: false
    backend: {kind: sim, delay: 0.0}
    valves:
      - {name: A, address: 0}
      - {name: B, address: 1}
services:
  - {kind: pychron_command_server, name: cmd, host: "@HOST@", port: 0}
  - {kind: notifier, name: bus, host: "@HOST@", port: 0, heartbeat: 0.2}
"""

#: Monitor tick and client timeout: small, so the scenario takes seconds, not minutes.
TICK = 0.2
TIMEOUT = 0.5


def wire(sub: Subscriber, monitor: StatusMonitor, prefix: str) -> None:
    def on_message(topic: str, payload, meta: MessageMeta) -> None:
        monitor.bus_alive()
        if topic.startswith(prefix) and isinstance(payload, dict) and "state" in payload:
            monitor.push(topic[len(prefix):], state=bool(payload["state"]),
                         locked=bool(payload["locked"]), owner=payload.get("owner") or "",
                         ts=meta.ts)

    def on_gap(gap: Gap) -> None:
        monitor.gap_detected()

    sub.add_listener(on_message)
    sub.add_gap_listener(on_gap)


async def test_monitor_partition(netns, start_node, outcome):
    out = outcome("monitor-partition")
    node = await start_node(netns, NODE)
    client = PychronClient(netns.ns_ip, node.port("cmd"), timeout=TIMEOUT, retries=1)
    statuses: list[tuple[float, str]] = []
    news = asyncio.Event()  # any status or valve change

    def on_status(status: str, detail: str) -> None:
        statuses.append((time.monotonic(), status))
        news.set()

    def on_change(old: ValveView | None, new: ValveView) -> None:
        news.set()

    monitor = StatusMonitor(RemoteValves(client), update_period=TICK, unreachable_after=3,
                            bus_silence=1.0, on_status=on_status, on_change=on_change)
    sub = Subscriber(f"tcp://{netns.ns_ip}:{node.port('bus', 'zmq-pub')}",
                     topics=["vnode."], name="monitor-bus")
    wire(sub, monitor, "vnode.valves.")

    async def until(predicate, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                news.clear()
                await news.wait()

    await sub.start()
    await monitor.start()
    try:
        await until(lambda: monitor.status == "ok" and monitor.valves.get("B") is not None
                    and monitor.valves["B"].state is False, 10)
        netns.partition()
        t_fault = time.monotonic()
        # Another client on the node's own network opens B while we are cut off.
        assert await node.call_inside("cmd", "Open", "B") == "OK"
        await until(lambda: monitor.status == "node_unreachable", 60)
        out.detected = elapsed(t_fault)
        assert monitor.valves["B"].state is False  # stale, and marked so by the status
        failures_at_detection = monitor.failures
        netns.heal()
        t_heal = time.monotonic()
        await until(lambda: monitor.status == "ok" and monitor.valves["B"].state is True,
                    60)
        out.recovered = elapsed(t_heal)
        out.numbers = {"failed_polls_before_unreachable": failures_at_detection,
                       "client_timeout": TIMEOUT, "tick": TICK, "resyncs": monitor.resyncs}
        out.happened = (f"`node_unreachable` after {failures_at_detection} failed polls; after "
                        "the heal the monitor resynchronised (status ok, B read open)")
        out.check("status went ok -> node_unreachable -> ok, one callback each")
        assert [s for _, s in statuses] == ["ok", "node_unreachable", "ok"]
        out.check("the change made during the partition is seen after it")
    finally:
        await sub.stop()
        await monitor.stop()
        await client.close()
