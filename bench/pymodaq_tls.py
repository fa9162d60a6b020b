"""TLS overhead on the PyMoDAQ link (issue 12): the same exchanges over plain TCP and over TLS
with client certificates, both ends labbridge, as ratios.

* command round trip: ``get_actuator_value`` -> ``position_is`` (``RemoteActuator.get_position``),
  p50 over ``--rtts`` requests per round;
* frames: ``Send Data 2D`` -> ``Done`` + DataToExport, continuous acquisition
  (``grab_stream``, two requests in flight), ``--size`` x ``--size`` uint16.

The clients run in a child process (a stage and a camera, each connected twice: to the plain
port and to the TLS port of this process's servers), on uvloop when installed, as a node does.
Rounds alternate plain and TLS (and which goes first), so a burst of load from other processes
hits both alike; each round is printed as a line, and the last line is one JSON object with the
median of the per-round ratios. Figures from a shared, loaded machine are indicative only.

Usage: ``python bench/pymodaq_tls.py [--rounds 5] [--rtts 500] [--frames 30] [--size 1024]``
(needs the ``tls`` extra for the certificates); ``--quick`` runs in seconds (the test suite).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from _common import Report, run

HERE = os.path.abspath(__file__)


def make_frame(size: int) -> np.ndarray:
    return np.random.default_rng(1024).integers(0, 4096, (size, size), dtype=np.uint16)


def make_keys(d: Path) -> None:
    """A site CA, the main computer's certificate and the distant computer's."""
    from labbridge.cli import _tls

    ca, ca_key = _tls.make_ca("bench CA", 1)
    (d / "ca.crt").write_text(ca)
    (d / "ca.pem").write_text(ca_key)
    for name in ("main", "distant"):
        cert, key = _tls.make_cert(name, ["127.0.0.1"], 1, ca.encode(), ca_key.encode())
        (d / f"{name}.crt").write_text(cert)
        (d / f"{name}.pem").write_text(key)


async def child(plain: int, tls: int, keys: str, size: int) -> None:
    from labbridge.devices.base import Device
    from labbridge.devices.stage import SimStageBackend, Stage
    from labbridge.links.pymodaq import PyMoDAQClient
    from labbridge.protocol.pymodaq.messages import Generation
    from labbridge.transport.tls import client_context

    frame = make_frame(size)
    d = Path(keys)

    class StaticCamera(Device):
        kind = "camera"

        async def grab(self) -> list[np.ndarray]:
            return [frame]

    clients = []
    for port, ssl in ((plain, None), (tls, "tls")):
        ctx = (client_context(d / "ca.crt", d / "distant.crt", d / "distant.pem",
                              check_hostname=True) if ssl else None)
        clients += [
            PyMoDAQClient(StaticCamera("cam"), "127.0.0.1", port, generation=Generation.G3,
                          name=f"cam-{ssl or 'plain'}", ssl=ctx),
            PyMoDAQClient(Stage("stage", SimStageBackend(position=1.0)), "127.0.0.1", port,
                          generation=Generation.G3, name=f"stage-{ssl or 'plain'}", ssl=ctx)]
    for c in clients:
        await c.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    for c in clients:
        await c.stop()


def spawn(plain: int, tls: int, keys: Path, size: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, HERE, "--child", str(plain), str(tls), str(keys),
                             str(size)], stdin=subprocess.PIPE)


async def rtt_p50(server: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await server.actuator.get_position()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


async def frames_per_s(server: Any, n: int, want: int) -> float:
    t0 = time.perf_counter()
    got = None
    async for arrays in server.detector.grab_stream(n, in_flight=2):
        got = arrays[0]
    seconds = time.perf_counter() - t0
    assert got is not None and zlib.crc32(got.tobytes()) == want, "frame checksum mismatch"
    return n / seconds


async def bench(a: argparse.Namespace, keys: Path, report: Report) -> dict[str, Any]:
    from labbridge.access import Gate, Identity, Policy, Role
    from labbridge.access.policy import LOOPBACK
    from labbridge.links.pymodaq import PyMoDAQServer
    from labbridge.transport.tls import server_context

    policy = Policy(addresses={Role.OPERATOR: LOOPBACK},
                    identities={"distant": Identity("distant", Role.OPERATOR, cert="distant")},
                    configured=True)
    servers = {
        "plain": PyMoDAQServer("127.0.0.1", 0, name="plain", gate=Gate(policy),
                               max_message=64 * 1024 * 1024),
        "tls": PyMoDAQServer("127.0.0.1", 0, name="tls", gate=Gate(policy),
                             max_message=64 * 1024 * 1024,
                             ssl=server_context(keys / "main.crt", keys / "main.pem",
                                                keys / "ca.crt")),
    }
    for s in servers.values():
        await s.start()
    ports = [s.port for s in servers.values()]
    assert None not in ports
    proc = spawn(int(ports[0] or 0), int(ports[1] or 0), keys, a.size)
    want = zlib.crc32(make_frame(a.size).tobytes())
    rounds = []
    try:
        for s in servers.values():
            await s.actuator.wait_connected(30)
            await s.detector.wait_connected(30)
            await rtt_p50(s, 50)  # warm-up
            await frames_per_s(s, 3, want)
        for r in range(a.rounds):
            order = ("plain", "tls") if r % 2 == 0 else ("tls", "plain")
            row: dict[str, Any] = {"round": r + 1, "first": order[0]}
            for kind in order:
                row[f"rtt_us_p50_{kind}"] = round(await rtt_p50(servers[kind], a.rtts), 1)
            for kind in order:
                row[f"frames_per_s_{kind}"] = round(
                    await frames_per_s(servers[kind], a.frames, want), 1)
            row["rtt_tls_vs_plain"] = round(row["rtt_us_p50_tls"] / row["rtt_us_p50_plain"], 3)
            row["frames_plain_vs_tls"] = round(
                row["frames_per_s_plain"] / row["frames_per_s_tls"], 3)
            report.line(f"round {r + 1}/{a.rounds} ({order[0]} first): round trip p50 plain "
                        f"{row['rtt_us_p50_plain']:.1f} us, tls {row['rtt_us_p50_tls']:.1f} us "
                        f"(ratio {row['rtt_tls_vs_plain']:.3f}); frames/s plain "
                        f"{row['frames_per_s_plain']:.1f}, tls {row['frames_per_s_tls']:.1f}")
            rounds.append(row)
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for s in servers.values():
            await s.stop()
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return {"rounds": rounds, "loop": loop}


def median_of(rounds: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in rounds)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtts", type=int, default=500)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="2 short rounds: checks that it runs")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        plain, tls, keys, size = a.child
        run(child(int(plain), int(tls), keys, int(size)))
        return
    if a.quick:
        a.rounds, a.rtts, a.frames, a.size = 2, 20, 3, 256
    report = Report("pymodaq_tls", a.quick)
    with tempfile.TemporaryDirectory(prefix="labbridge-bench-tls-") as tmp:
        make_keys(Path(tmp))
        res = run(bench(a, Path(tmp), report))
    rounds = res["rounds"]
    out = {
        "rtt_us_p50_plain": median_of(rounds, "rtt_us_p50_plain"),
        "rtt_us_p50_tls": median_of(rounds, "rtt_us_p50_tls"),
        "rtt_tls_vs_plain": median_of(rounds, "rtt_tls_vs_plain"),
        "rtt_tls_vs_plain_rounds": [r["rtt_tls_vs_plain"] for r in rounds],
        "frames_per_s_plain": median_of(rounds, "frames_per_s_plain"),
        "frames_per_s_tls": median_of(rounds, "frames_per_s_tls"),
        "frames_plain_vs_tls": median_of(rounds, "frames_plain_vs_tls"),
        "frames_plain_vs_tls_rounds": [r["frames_plain_vs_tls"] for r in rounds],
        "goal": {"rtt_tls_vs_plain": 1.3},
        "frame": {"shape": [a.size, a.size], "dtype": "uint16", "bytes": a.size * a.size * 2},
        "rtts_per_round": a.rtts, "frames_per_round": a.frames, "rounds": len(rounds),
        "note": "medians of interleaved per-round figures; indicative only on a shared machine",
    }
    report.finish(out)


if __name__ == "__main__":
    main()
