"""The telemetry bus across a partition (issue 16; ADR 0161).

A node (a gauge polled 20 times a second + the notifier) runs in a namespace; a recorder or
a subscriber runs here. What must hold: the subscriber notices a dead connection and says so,
finds the publisher again by itself when the link returns (also when the publisher's host
rebooted meanwhile), and every message it did not get is accounted for as a gap, which
``labbridge history`` reports. No silent loss: for the recorded topic, every sequence number
from the first to the last is either stored or inside a recorded gap.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from labbridge.bus.recorder import Recorder, RecordStore
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.protocol.telemetry.sequence import Gap
from tests.conftest import REPO
from tests.faults.conftest import LogEvent, elapsed

pytestmark = pytest.mark.faults

#: Inside the node's private namespace a fixed port cannot clash with anything, and the
#: rebooted publisher must come back on the port its subscribers know.
PUB_PORT = 5555

NODE = f"""
node: gnode
devices:
  - {{kind: gauge_controller, name: gauges, gauges: [IG], backend: {{kind: sim}},
     poll_period: 0.05}}
services:
  - {{kind: notifier, name: bus, host: "@HOST@", port: {PUB_PORT}, heartbeat: 0.2,
     legacy: false}}
"""
TOPIC = "gnode.gauges.IG"


async def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` (state of our own objects, fed by the event loop) with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def test_recorder_partition(netns, start_node, outcome, tmp_path):
    out = outcome("bus-recorder-partition")
    await start_node(netns, NODE)
    db = tmp_path / "rec.sqlite"
    rec = Recorder(db, f"tcp://{netns.ns_ip}:{PUB_PORT}", topics=["gnode."],
                   flush_interval=0.05, name="recorder")
    seen: list[tuple[float, int]] = []  # (local time, seq) of TOPIC

    def on_message(topic: str, payload, meta: MessageMeta) -> None:
        if topic == TOPIC and meta.seq is not None:
            seen.append((time.monotonic(), meta.seq))

    rec.subscriber.add_listener(on_message)
    await rec.start()
    try:
        await wait_until(lambda: len(seen) >= 5, 10, "first messages")
        with LogEvent("labbridge.bus.subscriber", r"connection to \S+ lost.*; reconnecting") as dropped:
            netns.partition()
            t_fault = time.monotonic()
            await dropped.wait(15)
            out.detected = round((dropped.at or 0) - t_fault, 3)
        netns.heal()
        t_heal = time.monotonic()
        await wait_until(lambda: seen[-1][0] > t_heal and rec.gap_count > 0, 20,
                         "messages and a gap after the heal")
        out.recovered = elapsed(t_heal)
        await wait_until(lambda: len([s for s in seen if s[0] > t_heal]) >= 5, 10,
                         "steady flow after the heal")
        await rec.flush()
    finally:
        await rec.stop()

    store = RecordStore(db, readonly=True)
    try:
        rows = store.query(TOPIC)
        all_gaps = store.gaps(TOPIC)  # the first, a late join, is the recorder's start
        gaps = [g for g in all_gaps if not g.late_join]
    finally:
        store.close()
    assert gaps, "the partition lost messages but no gap was recorded"
    stored = {r.seq for r in rows}
    covered = set(stored)
    for g in gaps:
        covered.update(range(g.expected, g.got))
    first, last = min(stored), max(stored)
    missing = sorted(set(range(first, last + 1)) - covered)
    assert missing == [], f"silently lost: {missing[:20]}"
    out.check("every sequence number stored or inside a recorded gap (no silent loss)")

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "labbridge", "history", TOPIC, "--db", str(db), "--since", "10m",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    missed = sum(g.missed for g in gaps)
    summary = (f"{len(rows)} messages; {len(all_gaps)} gaps "
               f"({sum(g.missed for g in all_gaps)} missed)")
    assert summary in stderr, stderr
    out.check(f"`labbridge history` says: {summary}")
    out.numbers = {"stored": len(rows), "gaps": len(gaps), "missed": missed}
    out.happened = (f"the subscriber dropped the silent connection and said so; after the "
                    f"heal it reconnected; {missed} messages published meanwhile were lost "
                    f"and recorded as {len(gaps)} gap(s)")


async def test_publisher_host_reboot(netns, start_node, outcome):
    out = outcome("bus-publisher-reboot")
    await start_node(netns, NODE, name="before")
    got: list[tuple[float, int, int]] = []  # (local time, publisher, seq) of TOPIC
    gaps: list[Gap] = []

    def on_message(topic: str, payload, meta: MessageMeta) -> None:
        if topic == TOPIC and meta.seq is not None and meta.publisher is not None:
            got.append((time.monotonic(), meta.publisher, meta.seq))

    sub = Subscriber(f"tcp://{netns.ns_ip}:{PUB_PORT}", topics=["gnode."],
                     on_message=on_message, on_gap=gaps.append, name="watcher")
    await sub.start()
    try:
        await wait_until(lambda: len(got) >= 5, 10, "first messages")
        old_publisher = got[-1][1]
        with LogEvent("labbridge.bus.subscriber", r"connection to \S+ lost.*; reconnecting") as dropped:
            netns.partition()
            t_fault = time.monotonic()
            # The host reboots while cut off: its kernel forgets every connection, so the
            # subscriber's TCP connection is dead without either side having been told.
            netns.destroy()
            netns.create()
            netns.partition()
            await start_node(netns, NODE, name="after")
            await dropped.wait(15)
            out.detected = round((dropped.at or 0) - t_fault, 3)
        netns.heal()
        t_heal = time.monotonic()
        await wait_until(lambda: got[-1][1] != old_publisher, 20,
                         "messages from the rebooted publisher")
        out.recovered = elapsed(t_heal)
        new = [g for g in gaps if g.publisher != old_publisher]
        out.numbers = {"new_publisher_first_seq": next(s for _, p, s in got
                                                       if p != old_publisher)}
        out.happened = ("the subscriber dropped the dead connection and said so, reconnected "
                        "after the heal and receives the restarted publisher (a new publisher "
                        "id; messages it sent before we were back are reported as a late-join "
                        f"gap: {len(new)} topic(s))")
        out.check("no restart of the subscriber needed")
    finally:
        await sub.stop()
