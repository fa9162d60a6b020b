"""Telemetry bus benchmark: our publisher -> subscriber against raw pyzmq, same technique.

Throughput, 64-byte payloads, publisher -> subscriber on loopback TCP, both ends on one event
loop (the one labbridge runs on: uvloop when installed), every variant measured in each round
(the order flips every round), one line per round:

* ``bus_json``   Publisher.publish(topic, {"v": "x"*56}) -> Subscriber callback
                 (the payload encodes to 64 bytes of JSON; envelope, sequence, gap tracking,
                 JSON decode and a callback per message included);
* ``bus_bytes``  the same with a 64-byte ``bytes`` payload (no JSON);
* ``raw_zmq_same``  raw pyzmq PUB/SUB of ``[topic, 64 bytes]`` with the bus's own technique
                 (ADR 0033): non-blocking sends, one ``send`` per frame with plain-int flags;
                 one awaited receive per wake-up, then a drain of up to 256 messages with
                 ``recv(NOBLOCK, copy=False)`` and ``Frame.more``. The fastest plain pyzmq
                 asyncio code: it isolates what the envelope and the callbacks cost;
* ``raw_zmq``    raw pyzmq asyncio with one ``await`` per send and per receive (idiomatic, and
                 slower: reported for reference only).

Ratios (rates: higher is better), medians of the per-round ratios:
``bus_vs_raw_zmq_same`` = bus_json / raw_zmq_same (goal >= 0.8; JSON against raw bytes, the
figure that flatters us least); ``bus_bytes_vs_raw_zmq_same`` = bus_bytes / raw_zmq_same (the
same 64 bytes on both sides); ``bus_vs_raw_zmq`` = bus_json / raw_zmq.

Envelope cost per message, no sockets (``envelope_*_us``, best of ``--rounds`` timed loops of
``--messages`` calls): ``EnvelopeEncoder.encode`` and ``envelope.decode`` of the same 64-byte
JSON value and of a 64-byte ``bytes`` payload.

Curve (issue 12; ADR 0127), in the same run as the plain path it is compared with:

* ``bus_curve``  ``bus_json`` with the publisher a CurveZMQ server (the subscriber's key
                 admitted by a gate through ZAP) and the subscriber a Curve client;
* ``rep_rtt_*_us``  median round trip of ``ping`` -> ``echo`` to a Notifier's REP socket
                 from a REQ socket, plain and with Curve (``--rtt-samples`` sequential
                 requests per round).

``curve_vs_plain`` = {``pubsub_msgs_per_s``: bus_json / bus_curve (time per message with
Curve over without), ``rep_round_trip``: rep_rtt_curve / rep_rtt_plain, and the same two as
CPU time of this process per message / round trip (``pubsub_cpu``, ``rep_round_trip_cpu``:
every thread, libzmq's I/O thread with its encryption included; less moved by other
processes' load than wall-clock figures)}; 1.0 = no overhead.

Latency: a ``Device.emit`` on a node (DevicePublisher -> Notifier PUB) to the callback of a
Subscriber in **another process**, paced changes, p50/p99 (CLOCK_MONOTONIC is system-wide,
so both processes read the same clock); and the same from a simulated ValveBank's
``open``/``close`` call (actuation on the sim backend included) to the remote callback.

The last line is one JSON object.

    python bench/bus.py [--messages 40000] [--rounds 5] [--latency-samples 2000]
                        [--rtt-samples 2000]
    python bench/bus.py --quick      # seconds: checks that it runs (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import zmq
import zmq.asyncio
from _common import Report, pct, run

from labbridge.access import LOOPBACK, Gate, Identity, Policy, Role
from labbridge.bus.auth import ClientKeys, CurveKeyPair, apply_client
from labbridge.bus.device_publisher import DevicePublisher
from labbridge.bus.notifier import Notifier
from labbridge.bus.publisher import Publisher
from labbridge.bus.subscriber import Subscriber
from labbridge.devices.base import Device
from labbridge.protocol.telemetry.envelope import EnvelopeEncoder, decode

TOPIC = "bench.dev.sig"
JSON_VALUE = {"v": "x" * 56}
RAW = b"x" * 64


async def _join(sub: Subscriber, poke: Any) -> None:
    w = asyncio.ensure_future(sub.wait_for(timeout=10))
    while not w.done():
        poke()
        await asyncio.wait([w], timeout=0.01)
    w.result()


def curve_setup() -> tuple[Gate, CurveKeyPair, ClientKeys]:
    """A node key pair, a client key pair, and a gate that admits the client's key."""
    server, client = CurveKeyPair.generate(), CurveKeyPair.generate()
    policy = Policy(addresses={Role.ADMIN: LOOPBACK}, configured=True, identities={
        "bench": Identity("bench", Role.OBSERVER, curve_key=client.public.decode())})
    return Gate(policy, node="bench"), server, ClientKeys(server.public, client)


#: CPU seconds of this process (every thread: ours and libzmq's I/O thread) per message or
#: round trip, per variant: unlike wall-clock rates, barely moved by other processes' load.
CPU: dict[str, list[float]] = {"bus_json": [], "bus_curve": [], "rtt_plain": [],
                               "rtt_curve": []}


async def bus_rate(n: int, value: Any, curve: bool = False, cpu: str = "") -> float:
    gate, server, client = curve_setup() if curve else (None, None, None)
    pub = Publisher(port=0, sndhwm=0, gate=gate, curve=server)
    pub.open()
    count = 0
    done = asyncio.Event()

    def cb(topic: str, payload: Any, meta: Any) -> None:
        nonlocal count
        if topic == TOPIC:
            count += 1
            if count == n:
                done.set()

    sub = Subscriber(pub.url, on_message=cb, rcvhwm=0, curve=client)
    await sub.start()
    try:
        await _join(sub, lambda: pub.publish("bench.warm.up", 0))
        t0 = time.perf_counter()
        c0 = time.process_time()
        publish = pub.publish
        for i in range(n):
            publish(TOPIC, value)
            if i % 1000 == 999:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 60)
        dt = time.perf_counter() - t0  # all n arrived (unlimited high-water marks): no loss
        if cpu:
            CPU[cpu].append((time.process_time() - c0) / n)
    finally:
        await sub.stop()
        pub.close()
    return n / dt


_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)


async def raw_rate(n: int, same: bool) -> float:
    """Raw pyzmq PUB -> SUB of ``[topic, 64 bytes]``, counting the messages of the topic.

    ``same``: with the bus's own technique (ADR 0033): non-blocking sends, one ``send`` per
    frame with plain-int flags on a synchronous shadow socket; the receiver awaits one
    message per wake-up, then drains up to 256 with ``recv(NOBLOCK, copy=False)`` and
    ``Frame.more``, then yields. Otherwise idiomatic pyzmq asyncio: one await per message."""
    ctx = zmq.asyncio.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 0
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 0
    sub.subscribe(b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    topic = TOPIC.encode()
    try:
        while True:  # join: publish until the subscriber hears something
            await pub.send_multipart([b"warm", b"0"])
            try:
                await asyncio.wait_for(sub.recv_multipart(), 0.01)
                break
            except TimeoutError:
                pass
        spub = zmq.Socket.shadow(pub.underlying)
        ssub = zmq.Socket.shadow(sub.underlying)

        async def receive() -> None:
            got = 0
            recv = ssub.recv
            while got < n:
                frames = await sub.recv_multipart()
                if frames[0] == topic:
                    got += 1
                if not same:
                    continue
                k = 0
                while k < 256:
                    try:
                        f = recv(_NB, copy=False)
                    except zmq.Again:
                        break
                    frames = [f.bytes]
                    while f.more:
                        f = recv(_NB, copy=False)
                        frames.append(f.bytes)
                    if frames[0] == topic:
                        got += 1
                    k += 1
                if k == 256:
                    await asyncio.sleep(0)

        t0 = time.perf_counter()
        rx = asyncio.create_task(receive())
        send = spub.send
        for i in range(n):
            if same:
                send(topic, _NB_MORE)
                send(RAW, _NB)
            else:
                await pub.send_multipart([topic, RAW])
            if i % 1000 == 999:
                await asyncio.sleep(0)
        await asyncio.wait_for(rx, 60)
        return n / (time.perf_counter() - t0)
    finally:
        pub.close(linger=0)
        sub.close(linger=0)


class BenchDevice(Device):
    kind = "bench"


async def latency(samples: int, valve: bool = False) -> list[float]:
    """Paced changes -> callback in a child process. ``valve``: the change is a simulated
    ValveBank's ``open``/``close`` of valve ``sig`` (timed from the call, actuation included);
    otherwise a plain ``Device.emit``."""
    dev: Device
    if valve:
        from labbridge.devices.backends.sim import SimValveBackend
        from labbridge.devices.valves import ValveBank, ValveConfig

        dev = ValveBank("dev", [ValveConfig("sig"), ValveConfig("warm")], SimValveBackend())
        await dev.start()
    else:
        dev = BenchDevice("dev")
    notifier = Notifier(port=0, node="bench", heartbeat=None, legacy=False)
    await notifier.start()
    dp = DevicePublisher(notifier, "bench", [dev], legacy=False)
    dp.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--latency-child", notifier.pub_url, str(samples),
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    proc_t0: list[float] = []
    try:
        ready = asyncio.ensure_future(proc.stdout.readline())
        while not ready.done():
            dev.emit("warm", {"t0": time.perf_counter()})
            await asyncio.wait([ready], timeout=0.01)
        if ready.result().strip() != b"ready":
            raise RuntimeError("latency child failed to start")
        out = asyncio.ensure_future(proc.stdout.read())
        for i in range(samples):
            if isinstance(dev, BenchDevice):
                dev.emit("sig", {"t0": time.perf_counter()})
            else:
                t0 = time.perf_counter()
                proc_t0.append(t0)
                await (dev.open("sig") if i % 2 == 0 else dev.close("sig"))  # type: ignore[attr-defined]
            await asyncio.sleep(0.002)   # paced: latency, not queueing under a flood
        data = await asyncio.wait_for(out, 30)
        await proc.wait()
        arrivals = [float(x) for x in json.loads(data)]
        if proc_t0:  # the child reports arrival times; subtract our call times
            return [a - t for a, t in zip(arrivals, proc_t0, strict=True)]
        return arrivals
    finally:
        await dev.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        dp.stop()
        await notifier.stop()


async def latency_child(url: str, samples: int) -> None:
    lat: list[float] = []
    done = asyncio.Event()
    announced = False

    def cb(topic: str, payload: Any, meta: Any) -> None:
        nonlocal announced
        now = time.perf_counter()
        if not announced:
            announced = True
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        if topic == "bench.dev.sig":
            # a plain emit carries its send time; a valve change does not: report arrival
            lat.append(now - payload["t0"] if "t0" in payload else now)
            if len(lat) >= samples:
                done.set()

    sub = Subscriber(url, ["bench.dev."], on_message=cb)
    await sub.start()
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        await sub.stop()
    sys.stdout.write(json.dumps(lat))
    sys.stdout.flush()


def envelope_us(value: Any, n: int, rounds: int) -> tuple[float, float]:
    """Microseconds per encode and per decode of one message carrying ``value`` (best of
    ``rounds``: the least disturbed by other work on the machine)."""
    enc = EnvelopeEncoder(1)
    frames = enc.encode(TOPIC, value, 1.0)
    frames = [bytes(f) for f in frames]  # as the subscriber sees small frames
    best_enc = best_dec = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            enc.encode(TOPIC, value, 1.0)
        t1 = time.perf_counter()
        for _ in range(n):
            decode(frames)
        t2 = time.perf_counter()
        best_enc = min(best_enc, (t1 - t0) / n * 1e6)
        best_dec = min(best_dec, (t2 - t1) / n * 1e6)
    return best_enc, best_dec


async def rep_rtt(n: int, curve: bool) -> float:
    """Median seconds of a ``ping`` round trip to a Notifier's REP socket."""
    gate, server, client = curve_setup() if curve else (None, None, None)
    notifier = Notifier(port=0, node="bench", heartbeat=None, gate=gate, curve=server)
    await notifier.start()
    req = zmq.asyncio.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    apply_client(req, client)
    req.connect(notifier.rep_url)
    samples = []
    c0 = 0.0
    try:
        for i in range(n + 50):  # the first 50 warm up (handshake, caches)
            if i == 50:
                c0 = time.process_time()
            t0 = time.perf_counter()
            await req.send(b"ping")
            reply = await asyncio.wait_for(req.recv(), 10)
            if i >= 50:
                samples.append(time.perf_counter() - t0)
            assert reply == b"echo", reply
        CPU["rtt_curve" if curve else "rtt_plain"].append((time.process_time() - c0) / n)
    finally:
        req.close(linger=0)
        await notifier.stop()
    return statistics.median(samples)


async def main_async(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    n = args.messages
    names = ("bus_json", "bus_bytes", "raw_zmq", "raw_zmq_same", "bus_curve")
    rates: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in ("bus_vs_raw_zmq_same",
                                                      "bus_bytes_vs_raw_zmq_same",
                                                      "bus_vs_raw_zmq")}
    rtts: dict[str, list[float]] = {"plain": [], "curve": []}
    for r in range(args.rounds):
        got = {}
        for name in (names if r % 2 == 0 else names[::-1]):  # the order flips every round
            if name == "bus_curve":
                got[name] = await bus_rate(n, JSON_VALUE, curve=True, cpu="bus_curve")
            elif name.startswith("bus"):
                got[name] = await bus_rate(n, JSON_VALUE if name == "bus_json" else RAW,
                                           cpu="bus_json" if name == "bus_json" else "")
            else:
                got[name] = await raw_rate(n, same=name == "raw_zmq_same")
            rates[name].append(got[name])
        ratios["bus_vs_raw_zmq_same"].append(got["bus_json"] / got["raw_zmq_same"])
        ratios["bus_bytes_vs_raw_zmq_same"].append(got["bus_bytes"] / got["raw_zmq_same"])
        ratios["bus_vs_raw_zmq"].append(got["bus_json"] / got["raw_zmq"])
        rtts["plain"].append(await rep_rtt(args.rtt_samples, curve=False))
        rtts["curve"].append(await rep_rtt(args.rtt_samples, curve=True))
        report.line(f"round {r + 1}/{args.rounds}: msgs/s bus (JSON) {got['bus_json']:.0f}, "
                    f"bus (bytes) {got['bus_bytes']:.0f}, raw same technique "
                    f"{got['raw_zmq_same']:.0f}, raw one await per message "
                    f"{got['raw_zmq']:.0f}; bus_vs_raw_zmq_same "
                    f"{ratios['bus_vs_raw_zmq_same'][-1]:.3f}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    rtt = {k: statistics.median(v) for k, v in rtts.items()}
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    json_enc, json_dec = envelope_us(JSON_VALUE, n, args.rounds)
    bytes_enc, bytes_dec = envelope_us(RAW, n, args.rounds)
    lat = await latency(args.latency_samples)
    vlat = await latency(max(2, args.latency_samples // 2), valve=True)
    report.line(f"latency: emit -> remote callback p50 {pct(lat, 0.5) * 1e3:.3f} ms, "
                f"valve open/close -> remote callback p50 {pct(vlat, 0.5) * 1e3:.3f} ms")
    out: dict[str, Any] = {
        "payload_bytes": 64,
        "messages_per_round": n,
        "rounds": args.rounds,
        "bus_msgs_per_s": round(med["bus_json"]),
        "bus_bytes_msgs_per_s": round(med["bus_bytes"]),
        "raw_zmq_msgs_per_s": round(med["raw_zmq"]),
        "raw_zmq_same_msgs_per_s": round(med["raw_zmq_same"]),
        "bus_curve_msgs_per_s": round(med["bus_curve"]),
        "rep_rtt_plain_us": round(rtt["plain"] * 1e6, 1),
        "rep_rtt_curve_us": round(rtt["curve"] * 1e6, 1),
        "cpu_us_per_msg_plain": round(cpu["bus_json"] * 1e6, 2),
        "cpu_us_per_msg_curve": round(cpu["bus_curve"] * 1e6, 2),
        "cpu_us_per_round_trip_plain": round(cpu["rtt_plain"] * 1e6, 1),
        "cpu_us_per_round_trip_curve": round(cpu["rtt_curve"] * 1e6, 1),
        "curve_vs_plain": {
            "pubsub_msgs_per_s": round(med["bus_json"] / med["bus_curve"], 3),
            "rep_round_trip": round(rtt["curve"] / rtt["plain"], 3),
            "pubsub_cpu": round(cpu["bus_curve"] / cpu["bus_json"], 3),
            "rep_round_trip_cpu": round(cpu["rtt_curve"] / cpu["rtt_plain"], 3),
        },
    }
    for key, values in ratios.items():
        out[key] = round(statistics.median(values), 3)
        out[f"{key}_rounds"] = [round(v, 3) for v in values]
    out |= {
        "envelope_json_encode_us": round(json_enc, 2),
        "envelope_json_decode_us": round(json_dec, 2),
        "envelope_json_us": round(json_enc + json_dec, 2),
        "envelope_bytes_encode_us": round(bytes_enc, 2),
        "envelope_bytes_decode_us": round(bytes_dec, 2),
        "envelope_bytes_us": round(bytes_enc + bytes_dec, 2),
        "latency_samples": len(lat),
        "emit_to_remote_callback_p50_ms": round(pct(lat, 0.50) * 1e3, 3),
        "emit_to_remote_callback_p99_ms": round(pct(lat, 0.99) * 1e3, 3),
        "emit_to_remote_callback_max_ms": round(max(lat) * 1e3, 3),
        "valve_open_to_remote_callback_p50_ms": round(pct(vlat, 0.50) * 1e3, 3),
        "valve_open_to_remote_callback_p99_ms": round(pct(vlat, 0.99) * 1e3, 3),
    }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-samples", type=int, default=2000)
    ap.add_argument("--rtt-samples", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="2 short rounds: checks that it runs")
    ap.add_argument("--latency-child", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.latency_child:
        run(latency_child(args.latency_child[0], int(args.latency_child[1])))
        return 0
    if args.quick:
        args.messages, args.rounds, args.latency_samples, args.rtt_samples = 2000, 2, 40, 50
    report = Report("bus", args.quick)
    report.finish(run(main_async(args, report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
