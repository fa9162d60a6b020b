"""RPC benchmark of the Pychron command channel (issue 2, item 8).

Prints one JSON object, every figure measured in this run on loopback, each server in its own
process, each client on one event loop (uvloop when installed, as labbridge itself runs):

* p50/p99 round trip of ``GetValveState A`` over one persistent braced connection to a
  ``labbridge serve`` valve node;
* the same through a raw asyncio length-prefixed echo and through pyzmq REQ/REP, all three
  connections open at once and one round trip of each in turn (the machine's load drifts; each
  figure and its baselines see the same);
* pipelined throughput with 64 requests in flight, ours and the raw echo's, in alternating
  blocks (the ratio is the median of the per-block ratios);
* ratios ``rpc_p50_vs_zmq`` (ours / zmq, lower is better) and ``pipelined_vs_raw_echo``
  (ours / echo, higher is better).

    python bench/rpc.py [--requests 5000] [--pipelined 51200] [--blocks 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "src"))

from labbridge.links.pychron.client import PychronClient  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


@contextlib.contextmanager
def peer(kind: str):
    proc = subprocess.Popen([sys.executable, str(HERE / "_peers.py"), kind],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        yield int(line)
    finally:
        proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


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
            deadline = time.monotonic() + 30
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("labbridge serve did not become ready")
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            yield next(s["port"] for s in info["services"] if s["protocol"] == "tcp")
        finally:
            proc.terminate()
            proc.wait(10)


class EchoClient(asyncio.Protocol):
    """Minimal length-prefixed client: the raw baseline."""

    def __init__(self):
        self.buf = bytearray()
        self.waiting = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        pos = 0
        while len(self.buf) - pos >= 4:
            (n,) = struct.unpack_from(">I", self.buf, pos)
            if len(self.buf) - pos < 4 + n:
                break
            fut = self.waiting.pop(0)
            fut.set_result(bytes(self.buf[pos + 4:pos + 4 + n]))
            pos += 4 + n
        del self.buf[:pos]

    def ask(self, payload: bytes):
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        self.transport.write(struct.pack(">I", len(payload)) + payload)
        return fut


async def latencies(asks: dict[str, Callable[[], Awaitable[Any]]], n: int) -> dict[str, list[float]]:
    """n round trips of each, one of each in turn, so all see the same machine load."""
    for _ in range(min(200, n)):  # warm-up
        for ask in asks.values():
            await ask()
    out: dict[str, list[float]] = {name: [] for name in asks}
    for _ in range(n):
        for name, ask in asks.items():
            t0 = time.perf_counter()
            await ask()
            out[name].append(time.perf_counter() - t0)
    return out


async def pipelined(ask, total: int, window: int = 64) -> float:
    async def worker(count: int):
        for _ in range(count):
            await ask()

    per = max(1, total // window)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(per) for _ in range(window)))
    return per * window / (time.perf_counter() - t0)


async def ours_client(port: int) -> tuple[PychronClient, Callable[[], Awaitable[Any]]]:
    client = PychronClient("127.0.0.1", port, timeout=10)
    await client.__aenter__()
    assert await client.ask("GetValveState A") in ("OK", "False")

    async def ask():
        return await client.ask("GetValveState A")

    return client, ask


async def echo_client(port: int) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    import socket

    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(EchoClient, "127.0.0.1", port)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = b"GetValveState A"

    async def ask():
        return await proto.ask(payload)

    return transport, ask


async def zmq_client(port: int) -> tuple[Any, Callable[[], Awaitable[Any]]]:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{port}")
    payload = b"GetValveState A"

    async def ask():
        await sock.send(payload)
        return await sock.recv()

    return (ctx, sock), ask


def _summary(lat: list[float]) -> dict:
    return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}


async def main_async(args) -> dict:
    result: dict = {"benchmark": "rpc", "requests": args.requests,
                    "pipelined_requests": args.pipelined, "window": 64, "blocks": args.blocks}
    with labbridge_node() as our_port, peer("echo") as echo_port, peer("zmq-rep") as zmq_port:
        client, ours = await ours_client(our_port)
        transport, echo = await echo_client(echo_port)
        (ctx, sock), zmq_ = await zmq_client(zmq_port)
        try:
            lat = await latencies({"ours": ours, "echo": echo, "zmq": zmq_}, args.requests)
            # Pipelined throughput: blocks of ours then the echo's, back to back; the median
            # of the per-block ratios.
            thr_ours, thr_echo = [], []
            for _ in range(args.blocks):
                thr_ours.append(await pipelined(ours, args.pipelined // args.blocks))
                thr_echo.append(await pipelined(echo, args.pipelined // args.blocks))
        finally:
            await client.__aexit__(None, None, None)
            transport.close()
            sock.close(0)
            ctx.term()
    ratios = [o / e for o, e in zip(thr_ours, thr_echo, strict=True)]
    result["labbridge_braced"] = {**_summary(lat["ours"]),
                                  "req_per_s": statistics.median(thr_ours)}
    result["raw_asyncio_echo"] = {**_summary(lat["echo"]),
                                  "req_per_s": statistics.median(thr_echo)}
    result["pyzmq_req_rep"] = _summary(lat["zmq"])
    ours_s, echo_s, zmq_s = (result["labbridge_braced"], result["raw_asyncio_echo"],
                             result["pyzmq_req_rep"])
    result["rpc_p50_vs_zmq"] = ours_s["p50_us"] / zmq_s["p50_us"]
    result["rpc_p50_vs_raw_echo"] = ours_s["p50_us"] / echo_s["p50_us"]
    result["pipelined_vs_raw_echo"] = statistics.median(ratios)
    result["pipelined_vs_raw_echo_blocks"] = [round(r, 3) for r in ratios]
    for section in (ours_s, echo_s, zmq_s):
        for k, v in list(section.items()):
            section[k] = round(v, 1)
    for k in ("rpc_p50_vs_zmq", "rpc_p50_vs_raw_echo", "pipelined_vs_raw_echo"):
        result[k] = round(result[k], 3)
    try:
        import uvloop  # noqa: F401

        result["event_loop"] = "uvloop"
    except ImportError:
        result["event_loop"] = "asyncio"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--pipelined", type=int, default=64 * 800)
    ap.add_argument("--blocks", type=int, default=5)
    args = ap.parse_args()
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:
        result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
