"""Steady workloads of the small-message paths, to run under a profiler, and a summary of
py-spy's collapsed stacks (docs/adr/0200 has the findings and the exact commands).

    python bench/profile.py rpc --seconds 10        # braced round trips, one in flight,
                                                    # to a `labbridge serve` child process
    python bench/profile.py bus --seconds 10        # 64-byte JSON publish -> subscriber callback
    python bench/profile.py ack --seconds 10        # hexrotcomm command -> ACK (rotator mock)
    python bench/profile.py telemetry               # rotator telemetry decoded by our client
    python bench/profile.py frames --size 256       # PyMoDAQ frames, client in a child process
    python bench/profile.py gate                    # what one gate check + record costs
    python bench/profile.py summary prof.txt        # top functions of a py-spy raw file
    python bench/profile.py count gate-record       # instructions per step (valgrind)

Under py-spy (pip install py-spy), both processes where there are two:

    py-spy record --subprocesses --format raw -o prof.txt -- python bench/profile.py rpc
    python bench/profile.py summary prof.txt

Each workload prints its rate when it ends. Everything runs on the loop labbridge runs on.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, process_cpu, run

HERE = Path(__file__).resolve().parent


async def steady(step: Any, seconds: float, what: str) -> None:
    """Call ``await step()`` until ``seconds`` have passed; print the rate."""
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(100):
            await step()
        n += 100
        if time.perf_counter() >= end:
            break
    dt = time.perf_counter() - t0
    print(f"{what}: {n} in {dt:.1f} s, {n / dt:,.0f}/s, {dt / n * 1e6:.1f} us each", flush=True)


# -- workloads ---------------------------------------------------------------------------------
async def rpc(seconds: float) -> None:
    sys.path.insert(0, str(HERE))
    from rpc import labbridge_node

    from labbridge.links.pychron.client import PychronClient

    with labbridge_node() as (port, _pid):
        async with PychronClient("127.0.0.1", port, timeout=10) as client:
            async def step() -> None:
                await client.ask("GetValveState A")

            await steady(step, seconds, "braced round trips")


async def bus(seconds: float) -> None:
    from labbridge.bus.publisher import Publisher
    from labbridge.bus.subscriber import Subscriber

    pub = Publisher(port=0, sndhwm=0)
    pub.open()
    got = 0
    caught_up = asyncio.Event()
    want = 0

    def cb(topic: str, payload: Any, meta: Any) -> None:
        nonlocal got
        got += 1
        if got >= want:
            caught_up.set()

    sub = Subscriber(pub.url, on_message=cb, rcvhwm=0)
    await sub.start()
    try:
        w = asyncio.ensure_future(sub.wait_for(timeout=10))
        while not w.done():
            pub.publish("warm", 0)
            await asyncio.wait([w], timeout=0.01)
        value = {"v": "x" * 56}
        publish = pub.publish
        sent = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(1000):
                publish("bench.dev.sig", value)
            sent += 1000
            want = sent - 2000  # keep at most ~2000 in flight: steady, not a flood
            if got < want:
                caught_up.clear()
                await asyncio.wait_for(caught_up.wait(), 10)
            await asyncio.sleep(0)
        dt = time.perf_counter() - t0
        print(f"bus messages: {got} received in {dt:.1f} s, {got / dt:,.0f}/s", flush=True)
    finally:
        await sub.stop()
        pub.close()


async def ack(seconds: float) -> None:
    from labbridge.devices.hexrot.mock import RotatorMockController
    from labbridge.links.hexrotcomm.client import CommandTelemetryClient
    from labbridge.links.hexrotcomm.mock_server import MockControllerServer
    from labbridge.protocol.hexrotcomm import (
        ROTATOR,
        RotatorCommandCode,
        SetStateParam,
        WireProfile,
    )

    profile = WireProfile.make(ROTATOR, "D")
    server = MockControllerServer(RotatorMockController("bench", "D"))
    await server.start()
    client = CommandTelemetryClient(profile, "127.0.0.1", server.port)
    await client.connect()
    cmd = profile.make_command(int(RotatorCommandCode.SET_STATE), 0,
                               [float(SetStateParam.CLEAR_ERROR)])
    try:
        async def step() -> None:
            await client.run_command(cmd)

        await steady(step, seconds, "command -> ACK round trips")
    finally:
        await client.close()
        await server.close()


async def telemetry(seconds: float) -> None:
    """Rotator telemetry from a controller process writing as fast as TCP takes it, decoded by
    CommandTelemetryClient here (bench/moog.py's producer)."""
    import multiprocessing

    sys.path.insert(0, str(HERE))
    from moog import PROFILE, _producer_main

    from labbridge.links.hexrotcomm.client import CommandTelemetryClient

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    producer = ctx.Process(target=_producer_main, args=(child,), daemon=True)
    producer.start()
    count = 0

    def on_tel(_: Any) -> None:
        nonlocal count
        count += 1

    try:
        port = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        client = CommandTelemetryClient(PROFILE, "127.0.0.1", port, on_telemetry=on_tel)
        await client.connect()
        t0, c0 = time.perf_counter(), time.thread_time()
        await asyncio.sleep(seconds)
        dt, cpu, n = time.perf_counter() - t0, time.thread_time() - c0, count
        await client.close()
        print(f"telemetry frames: {n} in {dt:.1f} s, {n / dt:,.0f}/s; CPU per frame "
              f"{cpu / max(1, n) * 1e6:.2f} us", flush=True)
    finally:
        producer.terminate()
        producer.join(10)


async def frames(seconds: float, size: int) -> None:
    from labbridge.links.pymodaq import PyMoDAQServer

    server = PyMoDAQServer("127.0.0.1", 0, max_message=64 * 1024 * 1024)
    await server.start()
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "frames.py"), "--child", "ours", str(server.port), str(size),
        stdin=asyncio.subprocess.PIPE)
    try:
        await server.detector.wait_connected(30)
        n = 0
        t0, c0, k0 = time.perf_counter(), time.thread_time(), process_cpu(child.pid)
        while time.perf_counter() - t0 < seconds:
            async for _ in server.detector.grab_stream(200, in_flight=2):
                n += 1
        dt = time.perf_counter() - t0
        server_us = (time.thread_time() - c0) / n * 1e6
        client_us = (process_cpu(child.pid) - k0) / n * 1e6
        print(f"{size}x{size} frames: {n} in {dt:.1f} s, {n / dt:,.0f}/s, {dt / n * 1e6:.0f} us "
              f"each; CPU per frame: server {server_us:.0f} us, client {client_us:.0f} us",
              flush=True)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        await child.wait()
        await server.stop()


def gate(n: int) -> None:
    """One command's access work on the hexrotcomm ACK path (``execute_command``): the
    action, the check, the audit record; and the parts alone."""
    from labbridge.access import DONE, Gate, Principal
    from labbridge.links.hexrotcomm.common import command_action
    from labbridge.protocol.hexrotcomm import ROTATOR

    g = Gate()
    who = Principal("127.0.0.1", "hexrot_mock_controller")
    params = (2.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    action = command_action(ROTATOR, 0x8000, params, "bench")

    def each(label: str, fn: Any) -> None:
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t0) / n)
        print(f"{label:<42} {best * 1e6:6.2f} us", flush=True)

    each("command_action (the Action)", lambda: command_action(ROTATOR, 0x8000, params, "b"))
    each("gate.check (role cached)", lambda: g.check(who, action))
    each("gate.record (audit event, log, sinks)", lambda: g.record(who, action, DONE, ""))
    each("all three, as execute_command does", lambda: (
        g.record(who, a := command_action(ROTATOR, 0x8000, params, "b"), DONE, "",
                 g.check(who, a))))


# -- instruction counts (valgrind: repeatable on a loaded machine) ----------------------------
def _loops() -> dict[str, Any]:
    """Name -> a function that builds the state and returns one step of a hot path (no I/O)."""

    def gate_record() -> Any:
        from labbridge.access import DONE, Action, Gate, Principal, Role

        g, who = Gate(), Principal("127.0.0.1", "x")
        a = Action(Role.OPERATOR, "SET_STATE", "rotator", "CLEAR_ERROR")
        return lambda: g.record(who, a, DONE, "", Role.OPERATOR)

    def gate_check() -> Any:
        from labbridge.access import Action, Gate, Principal, Role

        g, who = Gate(), Principal("127.0.0.1", "x")
        a = Action(Role.OPERATOR, "SET_STATE", "rotator", "CLEAR_ERROR")
        return lambda: g.check(who, a)

    def ack_server() -> Any:
        """The gen-D mock's whole answer to one command, bytes in to bytes out."""
        from labbridge.access import Principal
        from labbridge.devices.hexrot.mock import RotatorMockController
        from labbridge.links.hexrotcomm.mock_server import MockControllerServer, _FrameWriter
        from labbridge.protocol.hexrotcomm import RotatorCommandCode, SetStateParam

        server = MockControllerServer(RotatorMockController("bench", "D"))
        profile = server.profile
        cmd = profile.encode_command(profile.make_command(
            int(RotatorCommandCode.SET_STATE), 0, [float(SetStateParam.CLEAR_ERROR)]))
        record, unpack = profile.command.record, profile.command.struct.unpack
        async def drain() -> None:
            return None

        out = _FrameWriter(profile, lambda b: None, drain)
        who = Principal("127.0.0.1", "hexrot_mock_controller")
        return lambda: server._reply(tuple.__new__(record, unpack(cmd)), out, who)

    def g3(size: int, what: str) -> Any:
        import numpy as np

        from labbridge.protocol.base import NEED_DATA
        from labbridge.protocol.pymodaq import g3 as g3mod
        from labbridge.protocol.pymodaq.objects import data_from_plugins, data_to_export

        a = np.random.default_rng(1).integers(0, 4096, (size, size), dtype=np.uint16)
        dte = data_to_export("cam", [data_from_plugins("cam", [a])])
        msg = g3mod.encode_message(dte)
        if what == "encode":
            return lambda: g3mod.encode_chunks(dte)
        if what == "decode":
            body = memoryview(msg)[4:]
            return lambda: g3mod.decode_object(body, copy=False)
        framer = g3mod.G3Framer(max_message=64 * 1024 * 1024)
        mv = memoryview(msg)

        def feed() -> None:  # as the transport does: recv_into get_buffer()
            pos = 0
            while pos < len(mv):
                buf = framer.get_buffer(65536)
                k = min(len(buf), len(mv) - pos)
                buf[:k] = mv[pos:pos + k]
                pos += k
                framer.buffer_updated(k)
            while framer.next_event() is not NEED_DATA:
                pass

        return feed

    class Wire:
        """A transport that keeps nothing: what the Python of a protocol costs, no syscalls."""

        def __init__(self) -> None:
            self.last = b""

        def write(self, data: bytes) -> None:
            self.last = data

        def is_closing(self) -> bool:
            return False

        def get_write_buffer_size(self) -> int:
            return 0

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 40000) if name == "peername" else default

        def is_reading(self) -> bool:
            return True

        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def set_write_buffer_limits(self, *a: Any, **k: Any) -> None: ...

    def rpc_server() -> Any:
        """The valve node's whole answer to one braced ``GetValveState A``, bytes in to the
        reply's ``transport.write`` (connection protocol, framer, slot, deadline, gate,
        dispatcher, device)."""
        from labbridge.devices.backends.sim import SimValveBackend
        from labbridge.devices.valves import ValveBank, ValveConfig
        from labbridge.links.pychron.dispatch import Dispatcher
        from labbridge.links.pychron.server import CommandConnection, ServerSettings
        from labbridge.links.pychron.valves import ValveCommands
        from labbridge.protocol.pychron.braced import encode_braced
        from labbridge.transport.slots import SlotTable

        bank = ValveBank("valves", [ValveConfig("A")], SimValveBackend())
        conn = CommandConnection(Dispatcher([ValveCommands([bank])]), ServerSettings())
        wire = Wire()
        # As TcpServer does: a slot in the server's table, with a byte budget.
        slot = SlotTable("bench", max_buffered=16 << 20).admit(wire, "127.0.0.1")  # type: ignore[arg-type]
        assert slot is not None
        conn.slot = slot
        conn.connection_made(wire)  # type: ignore[arg-type]
        frame = encode_braced("GetValveState A")
        conn.data_received(frame)
        assert wire.last == encode_braced("False"), wire.last
        return lambda: conn.data_received(frame)

    def rpc_part(part: str) -> Any:
        """One part of rpc-server: ``dispatch`` (parse plan, gate check, handler, reply text),
        ``device`` (the handler alone), ``framing`` (cutting the frame, framing the reply)."""
        from labbridge.devices.backends.sim import SimValveBackend
        from labbridge.devices.valves import ValveBank, ValveConfig
        from labbridge.links.pychron.dispatch import Caller, Dispatcher
        from labbridge.links.pychron.server import _frame_reply
        from labbridge.links.pychron.valves import ValveCommands
        from labbridge.protocol.pychron.braced import BracedFramer, encode_braced
        from labbridge.protocol.pychron.messages import parse_request

        cmds = ValveCommands([ValveBank("valves", [ValveConfig("A")], SimValveBackend())])
        d, caller = Dispatcher([cmds]), Caller("127.0.0.1", "braced")
        if part == "dispatch":
            return lambda: d.dispatch("GetValveState A", caller)
        if part == "device":
            req = parse_request("GetValveState A")
            return lambda: cmds.get_valve_state(req, caller)
        framer, frame = BracedFramer(), encode_braced("GetValveState A")
        return lambda: (framer.feed(frame), _frame_reply("False"))

    def echo_server() -> Any:
        """The baseline echo's answer to one frame (bench/_peers.py)."""
        sys.path.insert(0, str(HERE))
        from _peers import BracedEcho

        from labbridge.protocol.pychron.braced import encode_braced

        proto = BracedEcho()
        proto.transport, proto.buf = Wire(), b""
        frame = encode_braced("GetValveState A")
        return lambda: proto.data_received(frame)

    def rpc_client() -> Any:
        """The client's part of one round trip: ``request`` (future, deadline, deferred
        flush), the flush's write, the reply's framing and the future's result."""
        from labbridge.links.pychron.client import _BracedProtocol
        from labbridge.protocol.pychron.braced import encode_braced

        proto = _BracedProtocol()
        proto.transport = Wire()  # type: ignore[assignment]
        frame, reply = encode_braced("GetValveState A"), encode_braced("False")

        def step() -> None:
            fut = proto.request(frame, 10.0)
            proto._flush()
            proto.data_received(reply)
            fut.result()

        return step

    def rpc_ask() -> Any:
        """rpc-client plus ``PychronClient.ask`` around it (retries, timeouts, the coroutine
        chain); the await is driven by hand: the reply arrives while ``ask`` waits."""
        from labbridge.links.pychron.client import PychronClient, _BracedProtocol
        from labbridge.protocol.pychron.braced import encode_braced

        client = PychronClient("127.0.0.1", 1, timeout=10)
        proto = _BracedProtocol()
        proto.transport = Wire()  # type: ignore[assignment]
        client._proto = proto
        reply = encode_braced("False")

        def step() -> None:
            coro = client.ask("GetValveState A")
            coro.send(None)  # runs to the await of the reply's future
            proto.data_received(reply)
            try:
                coro.send(None)
            except StopIteration as done:
                assert done.value == "False"
            else:
                raise AssertionError("ask did not finish")

        return step

    def echo_client() -> Any:
        """The baseline client's part of one round trip (bench/rpc.py)."""
        sys.path.insert(0, str(HERE))
        from rpc import BracedEchoClient

        from labbridge.protocol.pychron.braced import encode_braced

        proto = BracedEchoClient()
        proto.transport = Wire()
        frame, reply = encode_braced("GetValveState A"), encode_braced("False")

        def step() -> None:
            fut = proto.ask(frame)
            proto.data_received(reply)
            fut.result()

        return step

    def telemetry(raw: bool) -> Any:
        """100 rotator telemetry frames (one 42 KB read): our client's decode and callback
        of each, or the baseline's two ``unpack_from`` per frame (bench/moog.py)."""
        sys.path.insert(0, str(HERE))
        from moog import PROFILE, _telemetry_blob

        from labbridge.links.hexrotcomm.client import CommandTelemetryClient

        blob = _telemetry_blob(101)
        if raw:
            import struct

            hdr = struct.Struct(PROFILE.header.struct.format)
            tel = struct.Struct(PROFILE.device.telemetry.struct.format)
            hsize, size, mv = hdr.size, hdr.size + tel.size, memoryview(blob)

            def unpack_all() -> None:
                for off in range(0, 100 * size, size):
                    hdr.unpack_from(mv, off)
                    tel.unpack_from(mv, off + hsize)

            return unpack_all
        got: collections.deque[Any] = collections.deque(maxlen=1)  # each frame dies at once
        client = CommandTelemetryClient(PROFILE, "127.0.0.1", 1, on_telemetry=got.append)
        size = len(blob) // 101
        first, rest = blob[:size], blob[size:]
        client._data_received(first)

        def decode() -> None:  # the same 100 frames again: a stream whose times stand still
            client._data_received(rest)
            got.clear()
            client._decoder._last_sec = None

        return decode

    return {"gate-record": gate_record, "gate-check": gate_check, "ack-server": ack_server,
            "telemetry-100": lambda: telemetry(False), "telemetry-raw-100": lambda: telemetry(True),
            "rpc-server": rpc_server, "echo-server": echo_server,
            "rpc-dispatch": lambda: rpc_part("dispatch"), "rpc-device": lambda: rpc_part("device"),
            "rpc-framing": lambda: rpc_part("framing"),
            "rpc-client": rpc_client, "rpc-ask": rpc_ask, "echo-client": echo_client,
            "g3-encode-256": lambda: g3(256, "encode"),
            "g3-decode-256": lambda: g3(256, "decode"),
            "g3-framer-256": lambda: g3(256, "framer")}


async def loop(name: str, n: int) -> None:
    """``n`` steps of ``name`` (inside a running event loop, which some objects need)."""
    step = _loops()[name]()
    step()  # warm: caches, first-use imports
    for _ in range(n):
        step()


def count(name: str, n: int) -> None:
    """Instructions per step of ``name``: valgrind's callgrind count of ``n`` steps minus that
    of none, divided by ``n`` (imports and set-up cancel out)."""
    def total(k: int) -> int:
        res = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                              sys.executable, str(HERE / "profile.py"), "loop", name, "-n",
                              str(k)], capture_output=True, text=True, check=True)
        m = re.search(r"Collected : ([\d,]+)", res.stderr)
        if m is None:
            raise SystemExit(f"valgrind printed no instruction count:\n{res.stderr[-500:]}")
        return int(m.group(1).replace(",", ""))

    per = (total(n) - total(0)) / n
    print(f"{name}: {per:,.0f} instructions per step (valgrind callgrind, {n} steps)",
          flush=True)


# -- py-spy summary ----------------------------------------------------------------------------
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("/site-packages/", "/src/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summary(path: Path, top: int) -> None:
    """Self and inclusive sample shares per function, per process, from py-spy's raw format
    (one ``frame;frame;...;frame count`` line per distinct stack, outermost first)."""
    per_proc: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        proc = "main"
        while frames and frames[0].startswith("process "):  # a child nests in its parent
            proc, frames = frames[0], frames[1:]
        frames = [f for f in frames if not f.startswith("thread ")]
        per_proc[proc].append(([_short(f) for f in frames], int(count)))
    for proc, stacks in per_proc.items():
        total = sum(c for _, c in stacks)
        if total < 20:
            continue
        self_c: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        for frames, c in stacks:
            if frames:
                self_c[frames[-1]] += c
            for f in set(frames):
                incl[f] += c
        print(f"== {proc[:110]}: {total} samples")
        print("   self %   function (where)")
        for f, c in self_c.most_common(top):
            print(f"   {100 * c / total:5.1f}   {f[:110]}")
        print("   incl %")
        for f, c in incl.most_common(top + 8):
            print(f"   {100 * c / total:5.1f}   {f[:110]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("rpc", "bus", "ack", "telemetry", "frames", "gate",
                                     "summary", "count", "loop"))
    ap.add_argument("file", nargs="?", help="summary: the py-spy raw file; count, loop: "
                    f"the step ({', '.join(_loops())})")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("-n", type=int, default=None,
                    help="gate: calls per timing (100000); count: steps (2000)")
    a = ap.parse_args()
    os.chdir(REPO)
    if a.n is None:
        a.n = 2000 if a.what in ("count", "loop") else 100_000
    if a.what in ("count", "loop"):
        if a.file not in _loops():
            ap.error(f"{a.what} needs a step: {', '.join(_loops())}")
        if a.what == "count":
            count(a.file, a.n)
        else:
            run(loop(a.file, a.n))
    elif a.what == "summary":
        if not a.file:
            ap.error("summary needs the py-spy raw file")
        summary(Path(a.file), a.top)
    elif a.what == "gate":
        gate(a.n)
    elif a.what == "frames":
        run(frames(a.seconds, a.size))
    else:
        run({"rpc": rpc, "bus": bus, "ack": ack, "telemetry": telemetry}[a.what](a.seconds))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
