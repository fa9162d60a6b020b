"""Benchmark of the hexapod/rotator link: telemetry decoding and the command -> ACK round trip.

* ``telemetry``: generation-D rotator telemetry frames (24 + 396 bytes) decoded per second by
  :class:`CommandTelemetryClient` over loopback, with the controller side (a separate process)
  writing frames as fast as TCP takes them (frames produced by the rotator mock and encoded
  once, then re-sent), versus a raw ``struct.unpack_from`` loop (header + telemetry) over the
  same bytes in the same block. ``telemetry_decode_vs_raw`` (rate: higher is better, goal
  >= 0.8), median of the per-block ratios.
* ``ack``: command -> ACK round trip (p50) of :class:`CommandTelemetryClient.run_command`
  against the rotator :class:`MockControllerServer` (telemetry running at 50 Hz meanwhile),
  versus a raw asyncio ``Protocol`` echo (a ``Protocol`` client and server: 60 bytes out, 86
  bytes back, the sizes of a command and its status), one round trip of each in turn so both
  see the same load. ``ack_rtt_vs_protocol_echo`` (time: lower is better, goal <= 1.3), median
  of the per-block ratios of p50s.

Both measurements of a pair run on the same event loop (the one labbridge runs on: uvloop when
installed). One line per block; the last line is one JSON object.

    python bench/moog.py [--seconds 5] [--commands 4000] [--blocks 5]
    python bench/moog.py --quick      # seconds: checks that it runs (the test suite)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import struct
import sys
import time
from typing import Any

from _common import Report, pct, run

from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.hexrotcomm import (
    ROTATOR,
    FrameKind,
    RotatorCommandCode,
    SetStateParam,
    WireProfile,
)
from labbridge.protocol.hexrotcomm.tai import current_tai
from labbridge.transport.one_client import OneClientServer, configure_socket

PROFILE = WireProfile.make(ROTATOR, "D")
FRAME = PROFILE.header.size + ROTATOR.telemetry.size


def _telemetry_blob(n: int) -> bytes:
    """n real telemetry frames from the rotator mock while it moves (distinct contents)."""
    mock = RotatorMockController("bench", "D", config={"velocity_limit": 3.5})
    t0 = current_tai()  # the header times of one stream stay within a day of each other
    mock.telemetry_record(t0)
    mock.handle_command(int(RotatorCommandCode.SET_STATE), (2.0, 0, 0, 0, 0, 0), t0)
    mock.handle_command(int(RotatorCommandCode.POSITION_SET), (80.0, 0, 0, 0, 0, 0), t0)
    mock.handle_command(int(RotatorCommandCode.SET_ENABLED_SUBSTATE), (1.0, 0, 0, 0, 0, 0), t0)
    frames = [PROFILE.encode_frame(FrameKind.TELEMETRY, mock.telemetry_record(t0 + i * 0.02),
                                   i, t0 + i * 0.02) for i in range(n)]
    return b"".join(frames)


def raw_unpack_rate(blob: bytes, frames: int) -> float:
    """Baseline: struct.unpack_from of header and telemetry, frame by frame."""
    hdr = struct.Struct(PROFILE.header.struct.format)
    tel = struct.Struct(ROTATOR.telemetry.struct.format)
    hsize = hdr.size
    per_blob = len(blob) // FRAME
    loops = max(1, frames // per_blob)
    mv = memoryview(blob)
    t0 = time.perf_counter()
    for _ in range(loops):
        for off in range(0, len(blob), FRAME):
            hdr.unpack_from(mv, off)
            tel.unpack_from(mv, off + hsize)
    dt = time.perf_counter() - t0
    return loops * per_blob / dt


async def _serve_blast(conn: Any) -> None:
    """The controller side of the telemetry test: CONFIG, then the frames, as fast as TCP
    takes them, to each client in turn."""
    blob = _telemetry_blob(1000)
    config = PROFILE.encode_frame(FrameKind.CONFIG, ROTATOR.config.make(upper_pos_limit=90.0),
                                  0, current_tai())

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(config)
        while True:
            writer.write(blob)
            await writer.drain()

    server = OneClientServer("bench-controller", handler=blast)
    await server.start()
    conn.send(server.port)
    await asyncio.Event().wait()  # until the parent terminates this process


def _producer_main(conn: Any) -> None:
    asyncio.run(_serve_blast(conn))


async def client_decode_rate(port: int, seconds: float) -> tuple[float, int]:
    """Frames/s decoded by CommandTelemetryClient from a controller writing at full speed.

    The controller runs in its own process, as a real one runs on its own machine, so its
    writes do not take this process's time.
    """
    count = 0

    def on_tel(_: Any) -> None:
        nonlocal count
        count += 1

    client = CommandTelemetryClient(PROFILE, "127.0.0.1", port, on_telemetry=on_tel)
    try:
        await client.connect()
        await asyncio.sleep(0.2)  # warm-up
        c0, t0 = count, time.perf_counter()
        await asyncio.sleep(seconds)
        c1, t1 = count, time.perf_counter()
    finally:
        await client.close()
    return (c1 - c0) / (t1 - t0), c1 - c0


class _EchoServer(asyncio.Protocol):
    """Answers every 60 bytes received with 86 bytes."""

    reply = b"\x01" * 86

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.held = 0
        configure_socket(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        n, self.held = divmod(self.held + len(data), 60)
        if n:
            self.transport.write(self.reply * n)


class _EchoClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.held = 0
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        configure_socket(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        self.held += len(data)
        if self.held >= 86 and self.waiter is not None:
            self.held -= 86
            self.waiter.set_result(None)
            self.waiter = None


class _EchoPair:
    """Baseline: a raw asyncio Protocol echo, 60 bytes out, 86 bytes back (the same sizes as
    a command and its status frame)."""

    msg = b"\x02" * 60

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.transport, self.proto = await loop.create_connection(_EchoClient, "127.0.0.1",
                                                                  port)
        self.loop = loop

    async def rtt(self) -> float:
        t0 = time.perf_counter()
        fut = self.proto.waiter = self.loop.create_future()
        self.transport.write(self.msg)
        await fut
        return time.perf_counter() - t0

    async def close(self) -> None:
        self.transport.close()
        self.server.close()
        await self.server.wait_closed()


class _AckPair:
    """The rotator mock controller (telemetry at 50 Hz meanwhile) and our client."""

    cmd = PROFILE.make_command(int(RotatorCommandCode.SET_STATE), 0,
                               [float(SetStateParam.CLEAR_ERROR)])

    async def start(self) -> None:
        self.server = MockControllerServer(RotatorMockController("bench", "D"))
        await self.server.start()
        self.client = CommandTelemetryClient(PROFILE, "127.0.0.1", self.server.port)
        await self.client.connect()

    async def rtt(self) -> float:
        t0 = time.perf_counter()
        await self.client.run_command(self.cmd)
        return time.perf_counter() - t0

    async def close(self) -> None:
        await self.client.close()
        await self.server.close()


async def ack_and_echo_rtts(n: int, cpu: dict[str, float]) -> tuple[list[float], list[float]]:
    """n command->ACK round trips and n echo round trips, alternating one of each, so both
    see the same machine load (the machine is shared and its load drifts). Both ends run in
    this thread: ``cpu`` gets the CPU seconds of each kind's round trips, both ends."""
    echo, ack = _EchoPair(), _AckPair()
    await echo.start()
    await ack.start()
    acks: list[float] = []
    echoes: list[float] = []
    thread_time = time.thread_time
    try:
        for i in range(n + 50):
            c0 = thread_time()
            e = await echo.rtt()
            c1 = thread_time()
            a = await ack.rtt()
            c2 = thread_time()
            if i >= 50:  # warm-up
                echoes.append(e)
                acks.append(a)
                cpu["echo"] += c1 - c0
                cpu["ack"] += c2 - c1
    finally:
        await ack.close()
        await echo.close()
    return acks, echoes


async def run_blocks(port: int, seconds: float, commands: int, blocks: int,
              report: Report) -> dict[str, Any]:
    """Interleave each measurement with its baseline in blocks; ratios per block, median.

    The machine is shared: load changes between blocks, so each block's ratio is computed from
    a measurement and its baseline taken back to back, and the median of the blocks is kept.
    """
    blob = _telemetry_blob(1000)
    tel_ratios: list[float] = []
    client_rates: list[float] = []
    raw_rates: list[float] = []
    decoded = 0
    for b in range(blocks):
        client_rate, n = await client_decode_rate(port, seconds / blocks)
        raw_rate = raw_unpack_rate(blob, max(n, 50_000))
        decoded += n
        client_rates.append(client_rate)
        raw_rates.append(raw_rate)
        tel_ratios.append(client_rate / raw_rate)
        report.line(f"telemetry block {b + 1}/{blocks}: client {client_rate:.0f} frames/s, raw "
                    f"unpack {raw_rate:.0f} frames/s (ratio {tel_ratios[-1]:.3f})")
    acks: list[float] = []
    echoes: list[float] = []
    ack_ratios: list[float] = []
    cpu = {"ack": 0.0, "echo": 0.0}
    for b in range(blocks):
        a, e = await ack_and_echo_rtts(max(1, commands // blocks), cpu)
        echoes += e
        acks += a
        ack_ratios.append(statistics.median(a) / statistics.median(e))
        report.line(f"ack block {b + 1}/{blocks}: command -> ACK p50 "
                    f"{statistics.median(a) * 1e6:.1f} us, Protocol echo p50 "
                    f"{statistics.median(e) * 1e6:.1f} us (ratio {ack_ratios[-1]:.3f})")
    return {
        "frame_bytes": FRAME,
        "blocks": blocks,
        "telemetry_client_frames_per_s": round(statistics.median(client_rates)),
        "telemetry_raw_unpack_frames_per_s": round(statistics.median(raw_rates)),
        "telemetry_decode_vs_raw": round(statistics.median(tel_ratios), 3),
        "telemetry_decode_vs_raw_rounds": [round(r, 3) for r in tel_ratios],
        "telemetry_frames_decoded": decoded,
        "ack_rtt_p50_us": round(statistics.median(acks) * 1e6, 1),
        "ack_rtt_p90_us": round(pct(acks, 0.9) * 1e6, 1),
        "echo_rtt_p50_us": round(statistics.median(echoes) * 1e6, 1),
        "ack_rtt_vs_protocol_echo": round(statistics.median(ack_ratios), 3),
        "ack_rtt_vs_protocol_echo_rounds": [round(r, 3) for r in ack_ratios],
        "commands": len(acks),
        # both ends' CPU per round trip (the mock, the client and the echo all run here)
        "cpu_us_per_round_trip": {k: round(v / max(1, len(acks)) * 1e6, 1)
                                  for k, v in cpu.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=5.0, help="telemetry time, all blocks")
    ap.add_argument("--commands", type=int, default=4000)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 short blocks: checks that it runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.commands, args.blocks = 0.6, 100, 2
    report = Report("moog", args.quick)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    producer = ctx.Process(target=_producer_main, args=(child,), daemon=True)
    producer.start()
    try:
        if not parent.poll(30):
            raise RuntimeError("telemetry producer did not start")
        port = parent.recv()
        result = run(run_blocks(port, args.seconds, args.commands, args.blocks, report))
    finally:
        producer.terminate()
        producer.join(10)
    report.finish(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
