"""Publisher/Subscriber, Notifier and DevicePublisher over real loopback ZeroMQ sockets
(port 0; we publish until the subscriber has seen a message instead of sleeping)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
import zmq
import zmq.asyncio

from labbridge.bus.device_publisher import DevicePublisher, valve_event
from labbridge.bus.notifier import Notifier
from labbridge.bus.publisher import Publisher
from labbridge.bus.sockets import BusError, normalize_endpoint
from labbridge.bus.subscriber import Subscriber
from labbridge.devices.base import Change
from labbridge.protocol.telemetry.envelope import Encoding
from tests.bus.helpers import Thing, until_joined


@contextlib.asynccontextmanager
async def pubsub(topics=("",), **sub_kw):
    pub = Publisher(port=0)
    pub.open()
    sub = Subscriber(pub.url, topics, **sub_kw)
    await sub.start()
    try:
        yield pub, sub
    finally:
        await sub.stop()
        pub.close()


async def test_message_reaches_callback_with_meta():
    seen = []
    async with pubsub(on_message=lambda t, p, m: seen.append((t, p, m))) as (pub, sub):
        await until_joined(sub, lambda: pub.publish("warm.up", 0))
        seen.clear()
        seq = pub.publish("lab.valves.A", {"state": 1}, ts=123.0)
        topic, payload, meta = await sub.wait_for(lambda t, p, m: t == "lab.valves.A",
                                                  timeout=5)
    assert (topic, payload) == ("lab.valves.A", {"state": 1})
    assert meta.publisher == pub.publisher_id and meta.seq == seq == 1 and meta.ts == 123.0
    assert not meta.legacy and meta.encoding is Encoding.JSON
    assert seen[-1][0] == "lab.valves.A"


async def test_prefix_subscription_selects_subtree():
    async with pubsub(topics=["lab.valves."]) as (pub, sub):
        await until_joined(sub, lambda: pub.publish("lab.valves.warm", 0))
        pub.publish("lab.furnace.temp", 500)
        pub.publish("lab.valves.B", {"state": 0})
        topic, _, _ = await sub.wait_for(lambda t, p, m: t != "lab.valves.warm", timeout=5)
    assert topic == "lab.valves.B"


async def test_array_travels_in_binary_form():
    async with pubsub() as (pub, sub):
        await until_joined(sub, lambda: pub.publish("w.u", 0))
        img = np.arange(64 * 48, dtype="<u2").reshape(48, 64)
        pub.publish("cam.det.frame", img)
        _, payload, meta = await sub.wait_for(lambda t, p, m: t == "cam.det.frame", timeout=5)
    assert meta.encoding is Encoding.NDARRAY
    np.testing.assert_array_equal(payload, img)


async def test_late_join_is_reported():
    """Messages sent before the subscriber connected are a late join with a count."""
    pub = Publisher(port=0)
    pub.open()
    try:
        for i in range(5):
            pub.publish("lab.x.y", i)   # nobody listens: all dropped by PUB
        gaps = []
        sub = Subscriber(pub.url, on_gap=gaps.append)
        await sub.start()
        try:
            await until_joined(sub, lambda: pub.publish("lab.x.y", -1),
                               lambda t, p, m: t == "lab.x.y")
        finally:
            await sub.stop()
    finally:
        pub.close()
    assert gaps and gaps[0].late_join and gaps[0].missed >= 5
    assert sub.gaps >= 1 and sub.gap_event.is_set()


async def test_loss_under_load_is_counted():
    """A flood larger than both high-water marks loses messages; the subscriber knows."""
    pub = Publisher(port=0, sndhwm=10)
    pub.open()
    got = []
    sub = Subscriber(pub.url, rcvhwm=10, on_message=lambda t, p, m: got.append((t, m)))
    await sub.start()
    try:
        await until_joined(sub, lambda: pub.publish("warm.up", 0))
        n = 20_000
        for i in range(n):          # no await: the subscriber cannot drain meanwhile
            pub.publish("lab.flood.v", i)
        pub.publish("lab.flood.v", n)
        # the tail of the flood may itself be dropped: poke a marker until it arrives
        await until_joined(sub, lambda: pub.publish("lab.flood.end", 0),
                           lambda t, p, m: t == "lab.flood.end")
    finally:
        await sub.stop()
        pub.close()
    flood = [m for t, m in got if t == "lab.flood.v"]
    assert len(flood) < n + 1, "the flood should have overflowed the queues"
    last_seen = max(m.seq for m in flood)
    lost = last_seen - len(flood)
    assert lost > 0
    assert sum(m.gap.missed for m in flood if m.gap is not None) == lost
    assert sub.gaps >= 1 and sub.missed >= lost


async def test_garbage_is_counted_not_fatal():
    ctx = zmq.asyncio.Context.instance()
    raw = ctx.socket(zmq.PUB)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}")
    await sub.start()
    try:
        await until_joined(sub, lambda: raw.send(b"Hello world"))
        raw.send_multipart([b"a.b", b"x"])              # 2 frames: not ours
        raw.send_multipart([b"a.b", b"{}", b"garbage"])  # bad meta
        raw.send(b"dashboard {broken")                   # bad legacy JSON
        raw.send(b"dashboard {\"kind\": \"heartbeat\", \"ts\": 1}")
        _, payload, meta = await sub.wait_for(lambda t, p, m: t == "dashboard", timeout=5)
    finally:
        await sub.stop()
        raw.close(linger=0)
    assert meta.legacy and payload == {"kind": "heartbeat", "ts": 1}
    assert sub.decode_errors == 3


async def test_listener_exception_does_not_stop_delivery():
    def boom(t, p, m):
        raise RuntimeError("listener bug")

    async with pubsub(on_message=boom) as (pub, sub):
        await until_joined(sub, lambda: pub.publish("w.u", 0))
        pub.publish("a.b", 2)
        _, p, _ = await sub.wait_for(lambda t, p, m: t == "a.b", timeout=5)
    assert p == 2


def test_endpoint_forms():
    assert normalize_endpoint("host:5555") == "tcp://host:5555"
    assert normalize_endpoint("host", 8100) == "tcp://host:8100"
    assert normalize_endpoint("tcp://h:1") == "tcp://h:1"
    for bad in ("host", "h:x", "h:70000"):
        with pytest.raises(BusError):
            normalize_endpoint(bad)


async def test_port_in_use_fails_loudly():
    a = Publisher(port=0)
    a.open()
    try:
        b = Publisher(port=a.port)
        with pytest.raises(BusError, match=str(a.port)):
            b.open()
    finally:
        a.close()


# -- notifier ------------------------------------------------------------------------------
async def _request(url: str, text: bytes, timeout: float = 5.0) -> bytes:
    ctx = zmq.asyncio.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(url)
    try:
        await req.send(text)
        return await asyncio.wait_for(req.recv(), timeout)
    finally:
        req.close(linger=0)


async def test_notifier_rep_never_wedges():
    n = Notifier(port=0, heartbeat=None, request_timeout=0.2)

    async def slow(args: str) -> str:
        await asyncio.sleep(10)
        return "late"

    def fail(args: str) -> str:
        raise ValueError(f"cannot do {args}")

    n.add_request_handler("status", lambda args: "ok " + args)
    n.add_request_handler("stats", lambda args: {"a": 1})
    n.add_request_handler("fail", fail)
    n.add_request_handler("slow", slow)
    await n.start()
    try:
        url = n.rep_url
        assert n.rep_port != n.port
        # one REQ socket for the whole conversation: a missing reply would wedge it
        ctx = zmq.asyncio.Context.instance()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(url)
        replies = []
        try:
            for text in (b"ping", b"nonsense", b"ping", b"status A B", b"stats", b"fail X",
                         b"slow", b"\xff\xfe", b"", b"ping"):
                await req.send(text)
                replies.append(await asyncio.wait_for(req.recv(), 5))
            await req.send_multipart([b"ping", b"extra"])
            replies.append(await asyncio.wait_for(req.recv(), 5))
            await req.send(b"ping")
            replies.append(await asyncio.wait_for(req.recv(), 5))
        finally:
            req.close(linger=0)
    finally:
        await n.stop()
    assert replies == [b"echo", b"error unknown request nonsense", b"echo", b"ok A B",
                       b'{"a":1}', b"error cannot do X", b"error timeout after 0.2 s",
                       b"error request is not UTF-8 text", b"error empty request", b"echo",
                       b"error expected a one-frame request, got 2 frames", b"echo"]


async def test_notifier_publishes_heartbeat_and_notifications():
    n = Notifier(port=0, node="lab", heartbeat=0.05, source="valve-node")
    await n.start()
    sub = Subscriber(n.pub_url)
    await sub.start()
    try:
        _, hb, _ = await sub.wait_for(lambda t, p, m: t == "lab.notifier.heartbeat",
                                         timeout=10)
        _, hb_legacy, lmeta = await sub.wait_for(lambda t, p, m: t == "pychron", timeout=10)
        n.send_notification("RunAdded", "1234-abcd")
        _, text, m2 = await sub.wait_for(lambda t, p, m: t == "RunAdded", timeout=5)
    finally:
        await sub.stop()
        await n.stop()
    assert hb["kind"] == "heartbeat" and hb["state"] == "running" and hb["source"] == "valve-node"
    assert lmeta.legacy and hb_legacy["kind"] == "heartbeat"
    assert text == "1234-abcd" and m2.legacy


# -- device changes ----------------------------------------------------------------------------
async def test_device_change_reaches_subscriber_with_legacy_valve_line():
    dev = Thing("valves")
    n = Notifier(port=0, node="lab", heartbeat=None)
    dp = DevicePublisher(n, "lab", [dev])
    await n.start()
    dp.start()
    sub = Subscriber(n.pub_url)
    await sub.start()
    try:
        await until_joined(sub, lambda: dev.set("warm", 0))
        w1 = asyncio.ensure_future(sub.wait_for(lambda t, p, m: t == "lab.valves.A", timeout=5))
        w2 = asyncio.ensure_future(sub.wait_for(
            lambda t, p, m: t == "pychron" and p["name"] == "A", timeout=5))
        await asyncio.sleep(0)  # let both waiters register
        dev.set("A", {"state": 1, "locked": 0, "owner": "me"})
        (_, value, meta), (_, ev, _) = await asyncio.gather(w1, w2)
    finally:
        dp.stop()
        await sub.stop()
        await n.stop()
    assert value == {"state": 1, "locked": 0, "owner": "me"} and meta.seq == 1
    assert ev["kind"] == "valve_state" and ev["name"] == "A" and ev["state"] == 1
    assert ev["owner"] == "me" and ev["locked"] == 0 and isinstance(ev["ts"], float)
    assert not dev._listeners  # stop() unsubscribed


def test_valve_event_only_for_valve_values():
    assert valve_event(Change("b", "A", 12.5, 1.0)) is None
    assert valve_event(Change("b", "A", {"state": True, "locked": False}, 1.0)) == {
        "kind": "valve_state", "name": "A", "state": 1, "locked": 0, "owner": "", "ts": 1.0}


def test_device_publisher_survives_unencodable_value():
    class Sink:
        def publish(self, *a, **k):
            raise TypeError("nope")

        def publish_legacy(self, line):
            raise AssertionError

    dev = Thing("d")
    dp = DevicePublisher(Sink(), "lab", [dev])
    dp.start()
    dev.set("x", object())
    assert dp.failed == 1 and dp.published == 0


async def test_publisher_restart_is_a_new_publisher():
    """A restarted node reuses the port with a new publisher id; the subscriber reconnects by
    itself, and what the new publisher sent before the reconnect shows as a late join."""
    first = Publisher(port=0)
    first.open()
    port = first.port
    got = []
    sub = Subscriber(first.url, on_message=lambda t, p, m: got.append((t, m)))
    await sub.start()
    try:
        await until_joined(sub, lambda: first.publish("lab.x.v", 0))
        first.close()
        second = Publisher(port=port)
        # ZeroMQ releases the port in its I/O thread: no event to wait on, so retry (5 s max)
        for _ in range(250):
            try:
                second.open()
                break
            except BusError:
                await asyncio.sleep(0.02)
        assert second.is_open
        try:
            assert second.publisher_id != first.publisher_id
            await until_joined(sub, lambda: second.publish("lab.x.v", 1),
                               lambda t, p, m: m.publisher == second.publisher_id, timeout=20)
        finally:
            second.close()
    finally:
        await sub.stop()
    new = [m for t, m in got if m.publisher == second.publisher_id]
    assert new[0].seq >= 1 and (new[0].seq == 1 or new[0].gap.late_join)
    assert sub.tracker.resets == 0   # a new id is a new stream, not a sequence going back


async def test_oversized_message_is_refused():
    """A message over max_message never reaches us (ZeroMQ drops that connection, which
    reconnects); what the same publisher sends afterwards arrives."""
    pub = Publisher(port=0)
    pub.open()
    topics: list[str] = []
    sub = Subscriber(pub.url, max_message=1024, on_message=lambda t, p, m: topics.append(t))
    await sub.start()
    try:
        await until_joined(sub, lambda: pub.publish("lab.small.v", 1))
        pub.publish("lab.big.v", b"x" * 4096)
        await until_joined(sub, lambda: pub.publish("lab.after.v", 2),
                           lambda t, p, m: t == "lab.after.v", timeout=50)
    finally:
        await sub.stop()
        pub.close()
    assert "lab.big.v" not in topics   # same connection, FIFO: it would have come first
    assert sub.reconnects >= 1
