"""Frame throughput and command latency of the PyMoDAQ link, against a raw socket and the
pymodaq_utils receive path, at several frame sizes (uint16, ``--sizes 256,1024,2048``).

* ``ours``: frames sent by our G3 GRABBER client (a child process) and received by our server
  (this process): ``Send Data 2D`` -> ``Done`` + DataToExport, continuous acquisition
  (``RemoteDetector.grab_stream``, two requests in flight); ``ours_one_at_a_time``: the same
  with ``grab()``, one request per round trip (reported, not a goal).
* ``raw``: the same number of bytes per frame streamed by a child process with ``sendall`` and
  received here with ``recv_into`` one preallocated buffer (the wire-speed baseline).
* ``pymodaq``: the same G3 messages (encoded by serializall) received through the public
  pymodaq_utils path, ``Socket`` + ``DeSerializer.string_deserialization()`` /
  ``dte_deserialization()``, with ``TCP_NODELAY`` on both sockets (sizes in
  ``--pymodaq-sizes``; a few frames only at 2048: about half a second each).
* Command round trip ``get_actuator_value`` -> ``position_is``, p50: ours (both ends
  labbridge), their client (pymodaq_utils classes, ``TCP_NODELAY``) to our server, and theirs
  at both ends (pymodaq_utils server and client classes, ``TCP_NODELAY`` on both: without it
  Nagle's algorithm holds their second write for a delayed ACK, about 40 ms, which is the
  harness, not their code).

Ratios (rates: higher is better): ``frames_vs_raw_socket_<size>`` = ours / raw, the median of
the per-round ratios (rounds alternate ours and raw); ``frames_vs_pymodaq_<size>`` = ours
(median of the rounds) / theirs. Frame checksums are verified. One line per round; the last
line is one JSON object.

    python bench/frames.py [--rounds 3] [--megabytes 400] [--sizes 256,1024,2048]
    python bench/frames.py --quick      # seconds: checks that it runs (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any

import numpy as np
from _common import Report, ratio, run

HERE = os.path.abspath(__file__)


def make_frame(size: int) -> np.ndarray:
    rng = np.random.default_rng(2048)
    return rng.integers(0, 4096, (size, size), dtype=np.uint16)


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, HERE, "--child", *args], stdin=subprocess.PIPE)


def stop_child(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(Exception):
        assert p.stdin is not None
        p.stdin.close()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.terminate()
        p.wait(5)


def nodelay(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def rate(frames: int, seconds: float, nbytes: int) -> dict[str, float]:
    return {"frames": frames, "seconds": round(seconds, 4),
            "frames_per_s": round(frames / seconds, 2),
            "gb_per_s": round(frames * nbytes / seconds / 1e9, 3)}


# --- ours ------------------------------------------------------------------------------------

async def bench_size(size: int, frames: int, rounds: int, report: Report,
                     rtts: int) -> dict[str, Any]:
    """Rounds alternate ours (pipelined, then one at a time) and the raw baseline, so that a
    burst of load from other processes on the machine hits all of them alike. With ``rtts``,
    the command round trips are measured too (ours, then their client to our server)."""
    from labbridge.links.pymodaq import PyMoDAQServer

    server = PyMoDAQServer("127.0.0.1", 0, max_message=64 * 1024 * 1024)
    await server.start()
    child = spawn("ours", str(server.port), str(size))
    loop = asyncio.get_running_loop()
    nbytes = size * size * 2
    out: dict[str, Any] = {"stream": [], "single": [], "raw": []}
    try:
        await server.detector.wait_connected(30)
        await server.actuator.wait_connected(30)
        want = zlib.crc32(make_frame(size).tobytes())
        for _ in range(3):  # warm-up
            got = (await server.detector.grab())[0]
        assert zlib.crc32(got.tobytes()) == want, "frame checksum mismatch"
        for r in range(rounds):
            t0 = time.perf_counter()
            n = 0
            async for arrays in server.detector.grab_stream(frames, in_flight=2):
                got = arrays[0]
                n += 1
            stream = rate(n, time.perf_counter() - t0, nbytes)
            assert zlib.crc32(got.tobytes()) == want
            single_n = max(1, frames // 2)
            t0 = time.perf_counter()
            for _ in range(single_n):
                got = (await server.detector.grab())[0]
            single = rate(single_n, time.perf_counter() - t0, nbytes)
            assert zlib.crc32(got.tobytes()) == want
            raw = await loop.run_in_executor(None, bench_raw, nbytes, frames)
            for k, v in (("stream", stream), ("single", single), ("raw", raw)):
                out[k].append(v)
            report.line(f"round {r + 1}/{rounds} {size}x{size}: ours {stream['frames_per_s']:.1f}"
                        f" frames/s ({stream['gb_per_s']:.2f} GB/s), one at a time "
                        f"{single['frames_per_s']:.1f}, raw socket {raw['frames_per_s']:.1f} "
                        f"(ratio {stream['frames_per_s'] / raw['frames_per_s']:.3f})")
        if rtts:
            out["rtt"] = await actuator_rtts(server, rtts)
            out["rtt_their_client"] = await their_client_rtts(rtts)
        return out
    finally:
        await loop.run_in_executor(None, stop_child, child)  # our clients first, then us
        await server.stop()


async def their_client_rtts(n: int) -> list[float]:
    """Their actuator client (pymodaq_utils classes, TCP_NODELAY) against a server of ours of
    its own (on the bench's server our own stage client would take its place back)."""
    from labbridge.links.pymodaq import PyMoDAQServer

    server = PyMoDAQServer("127.0.0.1", 0)
    await server.start()
    their_client = spawn("pmd-actuator-client", str(server.port))
    try:
        await server.actuator.wait_connected(60)
        return await actuator_rtts(server, n)
    finally:
        # their client spins on a clean EOF (ADR 0171): end it before we close
        their_client.terminate()
        await asyncio.get_running_loop().run_in_executor(None, their_client.wait)
        await server.stop()


async def actuator_rtts(server: Any, n: int) -> list[float]:
    for _ in range(20):
        await server.actuator.get_position()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await server.actuator.get_position()
        samples.append(time.perf_counter() - t)
    return samples


async def child_ours(port: int, size: int) -> None:
    from labbridge.devices.base import Device
    from labbridge.devices.stage import SimStageBackend, Stage
    from labbridge.links.pymodaq import PyMoDAQClient
    from labbridge.protocol.pymodaq.messages import Generation

    frame = make_frame(size)

    class StaticCamera(Device):
        kind = "camera"

        async def grab(self) -> list[np.ndarray]:
            return [frame]

    cam = PyMoDAQClient(StaticCamera("cam"), "127.0.0.1", port, generation=Generation.G3,
                        name="bench-cam")
    stage = PyMoDAQClient(Stage("stage", SimStageBackend(position=1.0)), "127.0.0.1", port,
                          generation=Generation.G3, name="bench-stage")
    await cam.start()
    await stage.start()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    await cam.stop()
    await stage.stop()


# --- raw socket baseline ---------------------------------------------------------------------

def bench_raw(nbytes: int, frames: int) -> dict[str, float]:
    srv = socket.create_server(("127.0.0.1", 0))
    child = spawn("raw", str(srv.getsockname()[1]), str(nbytes), str(frames + 3))
    try:
        conn, _ = srv.accept()
        with conn:
            buf = bytearray(nbytes)
            view = memoryview(buf)

            def one() -> None:
                got = 0
                while got < nbytes:
                    n = conn.recv_into(view[got:])
                    if n == 0:
                        raise ConnectionError("sender closed")
                    got += n

            for _ in range(3):
                one()
            t0 = time.perf_counter()
            for _ in range(frames):
                one()
            return rate(frames, time.perf_counter() - t0, nbytes)
    finally:
        srv.close()
        stop_child(child)


def child_raw(port: int, nbytes: int, frames: int) -> None:
    payload = bytes(nbytes)
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(frames):
            s.sendall(payload)
        sys.stdin.buffer.read()


# --- the public pymodaq_utils receive path ----------------------------------------------------

def pmd_imports() -> Any:
    home = os.environ.get("HOME")
    os.environ["HOME"] = tempfile.mkdtemp(prefix="labbridge-bench-home-")
    try:
        from pymodaq_data.data import DataRaw, DataToExport
        from pymodaq_utils.serialize.mysocket import Socket
        from pymodaq_utils.serialize.serializer_legacy import DeSerializer
        from serializall import SerializableFactory
    finally:
        if home is not None:
            os.environ["HOME"] = home

    @SerializableFactory.register_decorator()
    class DataActuator(DataRaw):  # stand-in classes, spec §10.3 shim 3
        pass

    @SerializableFactory.register_decorator()
    class DataFromPlugins(DataRaw):
        def __init__(self, *args: Any, do_plot: bool = True, do_save: bool = True,
                     **kwargs: Any) -> None:
            super().__init__(*args, do_plot=do_plot, do_save=do_save, **kwargs)

    return {"Socket": Socket, "DeSerializer": DeSerializer, "factory": SerializableFactory(),
            "DataActuator": DataActuator, "DataFromPlugins": DataFromPlugins,
            "DataToExport": DataToExport}


def bench_pymodaq(size: int, max_frames: int, budget_s: float) -> dict[str, float]:
    pmd = pmd_imports()
    srv = socket.create_server(("127.0.0.1", 0))
    child = spawn("pmd", str(srv.getsockname()[1]), str(size), str(max_frames + 1))
    try:
        conn, _ = srv.accept()
        nodelay(conn)
        conn.settimeout(120)
        sock = pmd["Socket"](conn)
        want = zlib.crc32(make_frame(size).tobytes())

        def one() -> np.ndarray:
            assert pmd["DeSerializer"](sock).string_deserialization() == "Done"
            dte = pmd["DeSerializer"](sock).dte_deserialization()
            return np.asarray(dte[0].data[0])

        assert zlib.crc32(one().tobytes()) == want  # warm-up, and check what we timed
        t0 = time.perf_counter()
        n = 0
        while n < max_frames and time.perf_counter() - t0 < budget_s:
            one()
            n += 1
        return rate(n, time.perf_counter() - t0, size * size * 2)
    finally:
        conn.close()
        srv.close()
        stop_child(child)


def child_pmd(port: int, size: int, frames: int) -> None:
    pmd = pmd_imports()
    dte = pmd["DataToExport"]("viewer", data=[pmd["DataFromPlugins"]("cam",
                                                                      data=[make_frame(size)])])
    message = (pmd["factory"].get_apply_serializer("Done", append_length=True)
               + pmd["factory"].get_apply_serializer(dte, append_length=True))
    with socket.create_connection(("127.0.0.1", port)) as s:
        nodelay(s)
        with contextlib.suppress(OSError):
            for _ in range(frames):
                s.sendall(message)
        sys.stdin.buffer.read()


def bench_pymodaq_rtt(n: int) -> list[float]:
    pmd = pmd_imports()
    srv = socket.create_server(("127.0.0.1", 0))
    child = spawn("pmd-actuator", str(srv.getsockname()[1]))
    try:
        conn, _ = srv.accept()
        nodelay(conn)
        conn.settimeout(30)
        sock = pmd["Socket"](conn)  # the serializer-capable class
        samples = []
        for i in range(n + 2):
            t = time.perf_counter()
            sock.check_sended_with_serializer("get_actuator_value")
            assert pmd["DeSerializer"](sock).string_deserialization() == "position_is"
            pmd["DeSerializer"](sock).dwa_deserialization()
            if i >= 2:
                samples.append(time.perf_counter() - t)
        return samples
    finally:
        conn.close()
        srv.close()
        stop_child(child)


def child_pmd_actuator(port: int, client: bool = False) -> None:
    """Their actuator: answers get_actuator_value, with TCP_NODELAY. As a client of our server
    it first sends the client type and Infos."""
    pmd = pmd_imports()
    s = socket.create_connection(("127.0.0.1", port))
    nodelay(s)
    sock = pmd["Socket"](s)
    if client:
        sock.check_sended_with_serializer("ACTUATOR")
        sock.check_sended_with_serializer("Infos")
        sock.check_sended_with_serializer(  # the real format (value in the element text)
            b'<move_settings type="group" title="Actuator Settings:" visible="1" removable="0" '
            b'readonly="0"><units type="str" title="Units:" visible="1" removable="0" '
            b'readonly="1">mm</units></move_settings>')
    with contextlib.suppress(OSError, ConnectionError, AssertionError):
        while True:
            cmd = pmd["DeSerializer"](sock).string_deserialization()
            if cmd != "get_actuator_value":
                break
            sock.check_sended_with_serializer("position_is")
            sock.check_sended_with_serializer(
                pmd["DataActuator"]("actuator", data=[np.array([1.0])], units="mm"))
    s.close()


# --- main --------------------------------------------------------------------------------------

def frames_for(size: int, megabytes: float) -> int:
    return max(10, int(megabytes * 1e6 / (size * size * 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="256,1024,2048")
    ap.add_argument("--megabytes", type=float, default=400.0,
                    help="bytes of frames per measurement (frames = this / frame size)")
    ap.add_argument("--rtts", type=int, default=1000)
    ap.add_argument("--pymodaq-sizes", default="256,2048")
    ap.add_argument("--pymodaq-frames", type=int, default=2000)
    ap.add_argument("--pymodaq-budget", type=float, default=8.0,
                    help="seconds per size at most for the pymodaq_utils receive path")
    ap.add_argument("--pymodaq-rtts", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="a few frames: checks that it runs")
    ap.add_argument("--child", nargs="+")
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        if kind == "ours":
            run(child_ours(int(rest[0]), int(rest[1])))
        elif kind == "raw":
            child_raw(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "pmd":
            child_pmd(int(rest[0]), int(rest[1]), int(rest[2]))
        elif kind == "pmd-actuator":
            child_pmd_actuator(int(rest[0]))
        elif kind == "pmd-actuator-client":
            child_pmd_actuator(int(rest[0]), client=True)
        return
    if a.quick:
        a.rounds, a.megabytes, a.rtts = 1, 10.0, 30
        a.pymodaq_frames, a.pymodaq_budget, a.pymodaq_rtts = 1, 1.0, 3
    report = Report("frames", a.quick)
    sizes = [int(x) for x in a.sizes.split(",")]
    out: dict[str, Any] = {"dtype": "uint16", "rounds": a.rounds, "sizes": sizes}
    ours_rate: dict[int, float] = {}
    rtt: dict[str, list[float]] = {}
    for i, size in enumerate(sizes):
        res = run(bench_size(size, frames_for(size, a.megabytes), a.rounds, report,
                             a.rtts if i == 0 else 0))
        rtt.update({k: res[k] for k in ("rtt", "rtt_their_client") if k in res})
        per_round = [ratio(o["frames_per_s"], r["frames_per_s"])
                     for o, r in zip(res["stream"], res["raw"], strict=True)]
        single = [ratio(o["frames_per_s"], r["frames_per_s"])
                  for o, r in zip(res["single"], res["raw"], strict=True)]
        ours_rate[size] = statistics.median(o["frames_per_s"] for o in res["stream"])
        out[f"frames_vs_raw_socket_{size}"] = round(statistics.median(per_round), 3)
        out[f"frames_vs_raw_socket_{size}_rounds"] = [round(x, 3) for x in per_round]
        out[f"frames_vs_raw_socket_one_at_a_time_{size}"] = round(statistics.median(single), 3)
        out[f"frames_per_s_ours_{size}"] = round(ours_rate[size], 1)
        out[f"frames_per_s_ours_one_at_a_time_{size}"] = round(
            statistics.median(o["frames_per_s"] for o in res["single"]), 1)
        out[f"frames_per_s_raw_{size}"] = round(
            statistics.median(r["frames_per_s"] for r in res["raw"]), 1)
        out[f"gb_per_s_ours_{size}"] = round(
            statistics.median(o["gb_per_s"] for o in res["stream"]), 3)
    for size in (int(x) for x in a.pymodaq_sizes.split(",")):
        theirs = bench_pymodaq(size, a.pymodaq_frames, a.pymodaq_budget)
        report.line(f"pymodaq_utils receive path {size}x{size}: {theirs['frames_per_s']:.2f} "
                    f"frames/s over {theirs['frames']} frames")
        out[f"frames_per_s_pymodaq_{size}"] = theirs["frames_per_s"]
        if size in ours_rate:
            out[f"frames_vs_pymodaq_{size}"] = round(
                ratio(ours_rate[size], theirs["frames_per_s"]), 1)
    their_rtt = bench_pymodaq_rtt(a.pymodaq_rtts)
    out["rtt_us_p50_ours"] = round(statistics.median(rtt["rtt"]) * 1e6, 1)
    out["rtt_us_p99_ours"] = round(float(np.percentile(rtt["rtt"], 99)) * 1e6, 1)
    out["rtt_us_p50_pymodaq_client_to_our_server"] = round(
        statistics.median(rtt["rtt_their_client"]) * 1e6, 1)
    out["rtt_us_p50_pymodaq"] = round(statistics.median(their_rtt) * 1e6, 1)
    out["rtt_samples"] = {"ours": len(rtt["rtt"]), "pymodaq": len(their_rtt),
                          "pymodaq_client_to_our_server": len(rtt["rtt_their_client"])}
    report.line(f"get_actuator_value -> position_is p50: ours {out['rtt_us_p50_ours']:.0f} us, "
                f"their client to our server {out['rtt_us_p50_pymodaq_client_to_our_server']:.0f}"
                f" us, theirs at both ends {out['rtt_us_p50_pymodaq']:.0f} us (TCP_NODELAY)")
    out["env"] = {"numpy": np.__version__}
    report.finish(out)


if __name__ == "__main__":
    main()
