"""EPICS face benchmark (issue 18): labbridge's IOC against a plain softioc IOC, same run.

Two IOC processes on loopback, each on free ports:

* **labbridge**: an :class:`~labbridge.links.epics.ioc.EpicsIoc` over a gauge controller and a
  furnace (not started: no physics ticks), on an asyncio loop as in a node;
* **plain**: pythonSoftIOC with one ai and one ao record and nothing behind them.

The client is pyepics (libca) in this process. Per round, in turn for each IOC:

* *monitor*: for ``--burst`` seconds the server makes changes back to back, one per turn of
  its loop (labbridge: ``device.emit`` on the asyncio loop, which the face turns into record
  updates; plain: ``record.set`` in a thread loop); the client counts monitor callbacks;
  updates/s = callbacks / time from the first to the last. EPICS merges values it cannot send
  in time (a monitor carries the latest value): ``made`` and ``delivered`` say how many;
* *caput*: ``--puts`` put-callbacks (``caput(wait=True)``) to the ao record (labbridge: the
  furnace setpoint, through ``Furnace.set_setpoint``), timed one by one; p50 in ms.

Every round is printed; the last line is one JSON object with the medians and the ratios
``monitor_rate_vs_plain`` (higher is better) and ``caput_p50_vs_plain`` (lower is better).

    python bench/epics.py [--rounds 5] [--burst 2.0] [--puts 300]
    python bench/epics.py --quick        # one short round (the test suite runs this)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import REPO, Report  # before bench/ leaves sys.path (below)

HERE = Path(__file__).resolve().parent
# This file is called epics.py: its folder must not shadow pyepics (``import epics``).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

PREFIX = {"labbridge": "LBB", "plain": "PLN"}
MONITOR_PV = {"labbridge": "LBB:gauges:IG", "plain": "PLN:AI"}
PUT_PV = {"labbridge": "LBB:furnace:SETPOINT", "plain": "PLN:AO"}


# -- servers (run as subprocesses: one IOC per process) ------------------------------------
def _serve_labbridge() -> None:
    import asyncio

    from labbridge.devices.backends.sim import SimGaugeBackend
    from labbridge.devices.furnace import Furnace
    from labbridge.devices.gauges import GaugeController
    from labbridge.links.epics.ioc import EpicsIoc, IocSettings

    async def main() -> None:
        gauges = GaugeController("gauges", ["IG"], SimGaugeBackend({"IG": "ion"}))
        furnace = Furnace("furnace")
        ioc = EpicsIoc("epics", [gauges, furnace],
                       IocSettings(prefix=PREFIX["labbridge"], ca_port=0, pva_port=0,
                                   pva_udp_port=0))
        await ioc.start()
        print(ioc.ready_extra()["ca_port"], flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            if line[0] == "burst":
                end = time.monotonic() + float(line[1])
                i = 0
                while time.monotonic() < end:
                    i += 1
                    gauges.emit("IG", 1e-8 * i)  # a device change, as a reading makes
                    await asyncio.sleep(0)  # one change per loop turn, as a node makes them
                gauges.emit("IG", -1.0)  # the end marker
                print(f"done {i}", flush=True)
        await ioc.stop()

    asyncio.run(main())


def _serve_plain() -> None:
    from labbridge.links.epics.ioc import free_port

    port = free_port("127.0.0.1")
    os.environ.update(EPICS_CAS_INTF_ADDR_LIST="127.0.0.1", EPICS_CAS_SERVER_PORT=str(port),
                      EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
                      EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
                      EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1",
                      EPICS_PVAS_SERVER_PORT=str(free_port("127.0.0.1")),
                      EPICS_PVAS_BROADCAST_PORT=str(free_port("127.0.0.1")))
    from softioc import asyncio_dispatcher, builder, softioc

    builder.SetDeviceName(PREFIX["plain"])
    ai = builder.aIn("AI", initial_value=0.0, EGU="Torr", PREC=3)
    builder.aOut("AO", initial_value=0.0, always_update=True, EGU="C", PREC=1)
    builder.LoadDatabase()
    softioc.iocInit(asyncio_dispatcher.AsyncioDispatcher())
    print(port, flush=True)
    for raw in sys.stdin:
        line = raw.split()
        if line and line[0] == "burst":
            end = time.monotonic() + float(line[1])
            i = 0
            while time.monotonic() < end:
                i += 1
                ai.set(1e-8 * i)
                time.sleep(0)  # one change per turn, letting other threads run
            ai.set(-1.0)  # the end marker
            print(f"done {i}", flush=True)
    os._exit(0)  # epicsExit would wait for CA clients


# -- client ------------------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "_serve", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        self.port = int(self._expect(str.isdigit, "start"))

    def _expect(self, pred: Any, what: str) -> str:
        """The next stdout line that ``pred`` accepts (EPICS prints its banner there too)."""
        assert self.proc.stdout is not None
        for _ in range(200):
            line = self.proc.stdout.readline()
            if not line:
                break
            if pred(line.strip()):
                return line.strip()
        raise RuntimeError(f"{self.kind} IOC did not {what}")

    def burst(self, seconds: float) -> int:
        """Make changes for ``seconds``; returns how many were made."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"burst {seconds}\n")
        self.proc.stdin.flush()
        return int(self._expect(lambda s: s.startswith("done "), "finish a burst").split()[1])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure_monitor(ca: Any, server: Server, burst: float) -> dict[str, float]:
    times: list[float] = []
    cond = threading.Condition()

    def on_value(value: Any = None, **_kw: Any) -> None:
        with cond:
            times.append(time.perf_counter())
            cond.notify_all()

    pv = ca.PV(MONITOR_PV[server.kind], auto_monitor=True)
    if not pv.wait_for_connection(10):
        raise RuntimeError(f"{MONITOR_PV[server.kind]} did not connect")
    pv.get(timeout=5)  # also flushes the subscription request
    pv.add_callback(on_value)
    made = server.burst(burst)
    # Wait for the end marker (EPICS may merge values it cannot send in time), or 10 s.
    with cond:
        cond.wait_for(lambda: pv.value is not None and pv.value < 0, 10)
    pv.clear_callbacks()
    pv.disconnect()
    n = len(times) - 1  # without the end marker
    span = (times[-2] - times[0]) if n > 1 else float("nan")
    return {"made": made, "delivered": n,
            "updates_per_s": (n - 1) / span if n > 1 and span > 0 else 0.0}


def measure_caput(ca: Any, server: Server, puts: int) -> float:
    name = PUT_PV[server.kind]
    pv = ca.PV(name)
    if not pv.wait_for_connection(10):
        raise RuntimeError(f"{name} did not connect")
    rtts = []
    for i in range(puts):
        t0 = time.perf_counter()
        pv.put(20.0 + (i % 50), wait=True, timeout=10)
        rtts.append(time.perf_counter() - t0)
    pv.disconnect()
    return statistics.median(rtts) * 1000.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="EPICS face benchmark")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--burst", type=float, default=2.0,
                    help="seconds of back-to-back device changes per round")
    ap.add_argument("--puts", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="one short round (for tests)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.burst, args.puts = 1, 0.3, 20
    report = Report("epics", args.quick)
    servers = {k: Server(k) for k in ("labbridge", "plain")}
    try:
        os.environ.update(
            EPICS_CA_ADDR_LIST=" ".join(f"127.0.0.1:{s.port}" for s in servers.values()),
            EPICS_CA_AUTO_ADDR_LIST="NO")
        import epics

        rates: dict[str, list[float]] = {k: [] for k in servers}
        delivered: dict[str, list[float]] = {k: [] for k in servers}
        p50s: dict[str, list[float]] = {k: [] for k in servers}
        ratios_rate: list[float] = []
        ratios_put: list[float] = []
        for r in range(args.rounds):
            got: dict[str, dict[str, float]] = {}
            for kind, srv in servers.items():
                mon = measure_monitor(epics, srv, args.burst)
                p50 = measure_caput(epics, srv, args.puts)
                got[kind] = {**mon, "caput_p50_ms": p50}
                rates[kind].append(mon["updates_per_s"])
                delivered[kind].append(mon["delivered"])
                p50s[kind].append(p50)
            rr = got["labbridge"]["updates_per_s"] / max(got["plain"]["updates_per_s"], 1e-9)
            pr = got["labbridge"]["caput_p50_ms"] / max(got["plain"]["caput_p50_ms"], 1e-9)
            ratios_rate.append(rr)
            ratios_put.append(pr)
            report.line(f"round {r + 1}: " + "; ".join(
                f"{k} {v['updates_per_s']:.0f} upd/s ({v['delivered']:.0f} of "
                f"{v['made']:.0f} changes delivered), caput p50 {v['caput_p50_ms']:.3f} ms" for k, v in got.items())
                + f"; ratios rate {rr:.2f}, caput {pr:.2f}")
        result = {
            "rounds": args.rounds, "burst": args.burst, "puts": args.puts,
            "monitor_updates_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "monitor_delivered": {k: statistics.median(v) for k, v in delivered.items()},
            "caput_p50_ms": {k: statistics.median(v) for k, v in p50s.items()},
            "monitor_rate_vs_plain": statistics.median(ratios_rate),
            "caput_p50_vs_plain": statistics.median(ratios_put),
            "monitor_rate_vs_plain_rounds": [round(x, 3) for x in ratios_rate],
            "caput_p50_vs_plain_rounds": [round(x, 3) for x in ratios_put],
        }
        report.finish(result)
    finally:
        for s in servers.values():
            s.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "_serve":
        _serve_labbridge() if sys.argv[2] == "labbridge" else _serve_plain()
    else:
        sys.exit(main())
