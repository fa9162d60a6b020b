"""RPC benchmark of the Pychron command channel: ours against the fastest plain baselines.

Every figure is measured in this run on loopback, each server in its own process, every client
in this process on the event loop labbridge runs on (uvloop when installed; the baseline
servers use the same loop):

* **ours**: ``GetValveState A`` over one persistent braced connection (``PychronClient``) to a
  ``labbridge serve`` valve node;
* **echo**: a raw asyncio ``Protocol`` client and echo server with the same braced framing
  (``{LLLL}payload\\r\\n``, parsed at both ends), one request in flight;
* **zmq**: a blocking pyzmq REQ client (``send``/``recv``, no asyncio in between) to a pyzmq
  REP server in its own process that blocks in ``recv``.

Each round takes ``--requests`` round trips of each, one of each in turn (the order rotates
every round), so all three see the same machine load, then pipelined throughput with 64
requests in flight, ours and the echo's back to back. One line per round; the last line is one
JSON object. Ratios are medians of the per-round ratios:

* ``rpc_p50_vs_echo``   p50 ours / p50 echo          (time: lower is better, goal <= 1.3)
* ``rpc_p50_vs_zmq``    p50 ours / p50 blocking zmq  (time: lower is better, goal <= 1.0)
* ``pipelined_vs_raw_echo``  requests/s ours / echo  (rate: higher is better, goal >= 0.85)

    python bench/rpc.py [--rounds 5] [--requests 2000] [--pipelined 12800]
    python bench/rpc.py --quick      # seconds: checks that it runs (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import REPO, Report, loop_name, pct, process_cpu, ratio, run

from labbridge.links.pychron.client import PychronClient
from labbridge.protocol.pychron.braced import encode_braced

HERE = Path(__file__).resolve().parent
REQUEST = "GetValveState A"

Ask = Callable[[], Awaitable[Any]]


@contextlib.contextmanager
def peer(kind: str):
    proc = subprocess.Popen([sys.executable, str(HERE / "_peers.py"), kind],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"baseline peer {kind} did not start")
        yield int(line), proc.pid
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def labbridge_node():
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "labbridge", "--log-level", "warning", "serve",
             str(REPO / "examples" / "valve-controller.yaml"), "--port", "0",
             "--ready-file", str(ready), "--state-dir", tmp],
            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
        try:
            deadline = time.monotonic() + 60
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("labbridge serve did not become ready")
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            yield next(s["port"] for s in info["services"] if s["protocol"] == "tcp"), proc.pid
        finally:
            proc.terminate()
            proc.wait(10)


class BracedEchoClient(asyncio.Protocol):
    """The raw baseline's client: braced frames out, braced frames parsed back, each reply
    resolving the oldest waiting future with its payload as text (what ``ask`` returns)."""

    def __init__(self) -> None:
        self.buf = b""
        self.waiting: deque[asyncio.Future[str]] = deque()
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: Any) -> None:
        import socket

        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 6:
            n = int(buf[pos + 1:pos + 5], 16)
            if end - pos < n:
                break
            if buf[pos + n - 2:pos + n] != b"\r\n":
                raise ValueError("bad frame")
            self.waiting.popleft().set_result(buf[pos + 6:pos + n - 2].decode())
            pos += n
        self.buf = buf[pos:]

    def ask(self, frame: bytes) -> asyncio.Future[str]:
        fut = self.loop.create_future()
        self.waiting.append(fut)
        self.transport.write(frame)
        return fut


async def ours_client(port: int) -> tuple[PychronClient, Ask]:
    client = PychronClient("127.0.0.1", port, timeout=10)
    await client.__aenter__()
    if await client.ask(REQUEST) not in ("OK", "False", "True"):
        raise RuntimeError("unexpected reply from the valve node")

    async def ask() -> str:
        return await client.ask(REQUEST)

    return client, ask


async def echo_client(port: int) -> tuple[Any, Ask]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(BracedEchoClient, "127.0.0.1", port)
    frame = encode_braced(REQUEST)

    async def ask() -> str:
        return await proto.ask(frame)

    return transport, ask


def zmq_client(port: int) -> tuple[Any, Ask]:
    """Blocking REQ: the fastest way pyzmq offers to do one request at a time."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.rcvtimeo = 10_000
    payload = REQUEST.encode()
    send, recv = sock.send, sock.recv

    async def ask() -> bytes:  # blocks the loop, as a blocking client does; nothing else runs
        send(payload)
        return recv()

    return (ctx, sock), ask


async def latencies(asks: dict[str, Ask], n: int,
                    cpu: dict[str, float] | None = None) -> dict[str, list[float]]:
    """n round trips of each, one of each in turn, so all see the same machine load.
    ``cpu``: adds each one's client CPU seconds (this thread's)."""
    out: dict[str, list[float]] = {name: [] for name in asks}
    items = list(asks.items())
    perf, thread_time = time.perf_counter, time.thread_time
    for _ in range(n):
        for name, ask in items:
            c0 = thread_time()
            t0 = perf()
            await ask()
            out[name].append(perf() - t0)
            if cpu is not None:
                cpu[name] += thread_time() - c0
    return out


async def pipelined(ask: Ask, total: int, window: int = 64) -> float:
    async def worker(count: int) -> None:
        for _ in range(count):
            await ask()

    per = max(1, total // window)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(window)))
    return per * window / (time.perf_counter() - t0)


async def main_async(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    with labbridge_node() as (our_port, our_pid), peer("braced-echo") as (echo_port, echo_pid), \
            peer("zmq-rep") as (zmq_port, zmq_pid):
        pids = {"ours": our_pid, "echo": echo_pid, "zmq": zmq_pid}
        client_cpu = dict.fromkeys(pids, 0.0)
        server_cpu = dict.fromkeys(pids, 0.0)
        client, ours = await ours_client(our_port)
        transport, echo = await echo_client(echo_port)
        (ctx, sock), zmq_ = zmq_client(zmq_port)
        asks = {"ours": ours, "echo": echo, "zmq": zmq_}
        rounds: list[dict[str, float]] = []
        try:
            await latencies(asks, args.warmup)
            await pipelined(ours, 64 * 4)
            await pipelined(echo, 64 * 4)
            names = list(asks)
            for r in range(args.rounds):
                order = names[r % 3:] + names[:r % 3]
                before = {k: process_cpu(pid) for k, pid in pids.items()}
                lat = await latencies({k: asks[k] for k in order}, args.requests, client_cpu)
                for k, pid in pids.items():
                    server_cpu[k] += process_cpu(pid) - before[k]
                per = args.pipelined
                if r % 2:
                    thr_echo, thr_ours = await pipelined(echo, per), await pipelined(ours, per)
                else:
                    thr_ours, thr_echo = await pipelined(ours, per), await pipelined(echo, per)
                row = {f"{k}_p50_us": statistics.median(v) * 1e6 for k, v in lat.items()}
                row |= {f"{k}_p99_us": pct(v, 0.99) * 1e6 for k, v in lat.items()}
                row |= {"ours_req_per_s": thr_ours, "echo_req_per_s": thr_echo,
                        "rpc_p50_vs_echo": ratio(row["ours_p50_us"], row["echo_p50_us"]),
                        "rpc_p50_vs_zmq": ratio(row["ours_p50_us"], row["zmq_p50_us"]),
                        "pipelined_vs_raw_echo": ratio(thr_ours, thr_echo)}
                rounds.append(row)
                report.line(
                    f"round {r + 1}/{args.rounds}: p50 ours {row['ours_p50_us']:.1f} us, echo "
                    f"{row['echo_p50_us']:.1f} us, zmq {row['zmq_p50_us']:.1f} us "
                    f"(vs echo {row['rpc_p50_vs_echo']:.3f}, vs zmq "
                    f"{row['rpc_p50_vs_zmq']:.3f}); pipelined ours {thr_ours:.0f}/s, echo "
                    f"{thr_echo:.0f}/s (ratio {row['pipelined_vs_raw_echo']:.3f})")
        finally:
            await client.__aexit__(None, None, None)
            transport.close()
            sock.close(0)
            ctx.term()

    measured = args.rounds * args.requests
    cpu_us = {k: {"client": round(client_cpu[k] / measured * 1e6, 1),
                  "server": round(server_cpu[k] / measured * 1e6, 1)} for k in pids}
    report.line("CPU per round trip (client thread; server process, 10 ms ticks): " + ", ".join(
        f"{k} {v['client']:.1f} + {v['server']:.1f} us" for k, v in cpu_us.items()))

    def med(key: str, digits: int = 1) -> float:
        return round(statistics.median(r[key] for r in rounds), digits)

    out: dict[str, Any] = {
        "request": REQUEST, "rounds": args.rounds, "requests_per_round": args.requests,
        "pipelined_per_round": args.pipelined, "window": 64,
        "server_event_loop": loop_name(),  # `labbridge serve` and the peers decide alike
        "cpu_us_per_round_trip": cpu_us,
    }
    for key in ("rpc_p50_vs_echo", "rpc_p50_vs_zmq", "pipelined_vs_raw_echo"):
        values = [r[key] for r in rounds]
        out[key] = round(statistics.median(values), 3)
        out[f"{key}_rounds"] = [round(v, 3) for v in values]
    for k in ("ours", "echo", "zmq"):
        out[f"{k}_p50_us"] = med(f"{k}_p50_us")
        out[f"{k}_p99_us"] = med(f"{k}_p99_us")
    out["ours_req_per_s"] = med("ours_req_per_s", 0)
    out["echo_req_per_s"] = med("echo_req_per_s", 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--pipelined", type=int, default=64 * 200)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="2 short rounds: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.pipelined, args.warmup = 2, 50, 64 * 4, 10
    report = Report("rpc", args.quick)
    report.finish(run(main_async(args, report)))


if __name__ == "__main__":
    main()
