"""End to end on one node built from a node file: a valve opened through the Pychron command
server reaches a bus subscriber's callback and a StatusMonitor by push, well inside one poll
period; a subscriber that joins late knows it and the StatusMonitor resynchronises by polling.

The glue from Subscriber to StatusMonitor is written here in the test (the lead owns the
production wiring): valve topics -> ``push``, any message -> ``bus_alive``, gaps ->
``gap_detected``.

The subscriber is stopped before the StatusMonitor: on Python 3.11 ``asyncio.wait_for`` swallows
a cancellation that arrives as the awaited event is set, so a ``gap_detected()`` wake-up racing
``StatusMonitor.stop()`` can keep the monitor's task alive (reported to the lead).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from labbridge.bus.recorder import RecordStore
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.monitor import StatusMonitor, ValveView
from labbridge.links.pychron.remote import RemoteValves
from labbridge.node.node import build_node
from labbridge.protocol.telemetry.sequence import Gap
from tests.bus.helpers import until_joined

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
  - {kind: pychron_command_server, name: cmd, host: 127.0.0.1, port: 0}
  - {kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.2}
  - {kind: recorder, name: rec, connect: [bus], path: rec.sqlite, flush_interval: 0.05}
"""

#: The StatusMonitor's state poll period with the seed defaults (state_freq 3 x 1 s).
POLL_PERIOD = 3.0


def _node(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(NODE)
    return build_node(cfg)


def _wire(sub: Subscriber, monitor: StatusMonitor, prefix: str) -> None:
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


async def test_valve_opened_through_command_server_is_pushed(tmp_path):
    node = _node(tmp_path)
    await node.start()
    cmd_port = next(e.port for e in node.endpoints() if e.service == "cmd" and e.protocol == "tcp")
    bus = node.ctx.services["bus"]
    client = PychronClient("127.0.0.1", cmd_port, timeout=5.0)
    remote = RemoteValves(client)
    sub_times: dict[tuple[str, bool], float] = {}
    mon_times: dict[tuple[str, bool], float] = {}

    def on_change(old: ValveView | None, new: ValveView) -> None:
        if new.source == "push" and new.state is not None:
            mon_times.setdefault((new.name, new.state), time.perf_counter())

    monitor = StatusMonitor(remote, on_change=on_change)
    sub = Subscriber(bus.pub_url, ["vnode."])
    sub.add_listener(lambda t, p, m: sub_times.setdefault(
        (t.rsplit(".", 1)[-1], bool(p["state"])), time.perf_counter())
        if t.startswith("vnode.valves.") else None)
    _wire(sub, monitor, "vnode.valves.")
    await sub.start()
    try:
        await until_joined(sub, lambda: None, lambda t, p, m: t == "vnode.notifier.heartbeat")
        await monitor.start()
        await asyncio.wait_for(monitor.wait_synced(), 10)
        lat_sub, lat_mon = [], []
        for i in range(20):
            target = i % 2 == 0
            sub_times.clear()
            mon_times.clear()
            t0 = time.perf_counter()
            got = asyncio.ensure_future(sub.wait_for(
                lambda t, p, m, want=target: t == "vnode.valves.A" and bool(p["state"]) == want,
                timeout=10))
            await asyncio.sleep(0)
            if target:
                await remote.open("A")
            else:
                await remote.close("A")
            await got
            key = ("A", target)
            assert key in mon_times, "the StatusMonitor did not get the push"
            lat_sub.append(sub_times[key] - t0)
            lat_mon.append(mon_times[key] - t0)
            assert monitor.valves["A"].state is target and monitor.valves["A"].source == "push"
    finally:
        await sub.stop()        # first: no gap_detected() wake-ups while the monitor stops
        await monitor.stop()
        await client.close()
        await node.stop()
    p99_sub = float(np.percentile(lat_sub, 99))
    p99_mon = float(np.percentile(lat_mon, 99))
    # generous bound: the point is "no waiting for a poll" (3 s); loopback is milliseconds
    assert p99_sub < POLL_PERIOD / 3, lat_sub
    assert p99_mon < POLL_PERIOD / 3, lat_mon

    # the node's own recorder stored the changes too
    store = RecordStore(tmp_path / ".labbridge-state" / "vnode" / "rec.sqlite", readonly=True)
    try:
        states = [r.value["state"] for r in store.query("vnode.valves.A")]
    finally:
        store.close()
    assert states[-20:] == [1, 0] * 10


async def test_late_joiner_knows_and_monitor_resyncs(tmp_path):
    node = _node(tmp_path)
    await node.start()
    cmd_port = next(e.port for e in node.endpoints() if e.service == "cmd" and e.protocol == "tcp")
    bus = node.ctx.services["bus"]
    client = PychronClient("127.0.0.1", cmd_port, timeout=5.0)
    remote = RemoteValves(client)
    monitor = StatusMonitor(remote)
    gaps: list[Gap] = []
    try:
        # changes nobody hears: the valve topics advance to seq 4
        for _ in range(2):
            await remote.open("B")
            await remote.close("B")
        await monitor.start()
        await asyncio.wait_for(monitor.wait_synced(), 10)
        resyncs_before = monitor.resyncs
        sub = Subscriber(bus.pub_url, ["vnode."], on_gap=gaps.append)
        _wire(sub, monitor, "vnode.valves.")
        await sub.start()
        try:
            await until_joined(sub, lambda: None,
                               lambda t, p, m: t == "vnode.notifier.heartbeat")
            got = asyncio.ensure_future(sub.wait_for(lambda t, p, m: t == "vnode.valves.B",
                                                     timeout=10))
            await asyncio.sleep(0)
            await remote.open("B")
            _, payload, meta = await got
            # the resync is a full poll with no event to wait on: poll its counter (5 s max)
            for _ in range(500):
                if monitor.resyncs > resyncs_before:
                    break
                await asyncio.sleep(0.01)
        finally:
            await sub.stop()
    finally:
        await monitor.stop()
        await client.close()
        await node.stop()
    late = [g for g in gaps if g.topic == "vnode.valves.B"]
    assert late and late[0].late_join and late[0].missed == 4 and meta.seq == 5
    assert meta.gap is not None and meta.gap.late_join
    assert payload["state"] == 1
    assert monitor.resyncs > resyncs_before


async def test_loss_under_load_makes_the_monitor_poll_the_truth(tmp_path):
    """A flood overflows a small publisher queue: the subscriber counts the gap and the
    monitor resynchronises by polling (and agrees with the node afterwards)."""
    cfg = tmp_path / "node.yaml"
    cfg.write_text(NODE.replace("heartbeat: 0.2}", "heartbeat: 0.2, sndhwm: 10}"))
    node = build_node(cfg)
    await node.start()
    cmd_port = next(e.port for e in node.endpoints() if e.service == "cmd" and e.protocol == "tcp")
    bus = node.ctx.services["bus"]
    bank = node.ctx.devices["valves"]
    client = PychronClient("127.0.0.1", cmd_port, timeout=5.0)
    monitor = StatusMonitor(RemoteValves(client))
    sub = Subscriber(bus.pub_url, ["vnode."], rcvhwm=10)
    _wire(sub, monitor, "vnode.valves.")
    await sub.start()
    try:
        await until_joined(sub, lambda: None, lambda t, p, m: t == "vnode.notifier.heartbeat")
        await monitor.start()
        await asyncio.wait_for(monitor.wait_synced(), 10)
        resyncs_before = monitor.resyncs
        # 20,000 change events in one go (repeating A's real state: closed, unlocked)
        for _ in range(20_000):
            bank.emit("A", {"state": 0, "locked": 0, "owner": ""})
        await until_joined(sub, lambda: bank.emit("B", {"state": 0, "locked": 0, "owner": ""}),
                           lambda t, p, m: t == "vnode.valves.B")
        for _ in range(500):   # the resync is a full poll with no event to wait on (5 s max)
            if monitor.resyncs > resyncs_before:
                break
            await asyncio.sleep(0.01)
    finally:
        await sub.stop()        # first: no gap_detected() wake-ups while the monitor stops
        await monitor.stop()
        await client.close()
        await node.stop()
    assert sub.gaps >= 1 and sub.missed > 0
    assert monitor.resyncs > resyncs_before
    assert monitor.valves["A"].state is False and bank.is_open("A") is False
