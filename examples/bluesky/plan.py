"""A Bluesky plan driving the labbridge demo lab through EPICS (ophyd-async signals over CA).

It isolates the extraction line (every valve closed), opens one valve, waits for the ion
gauge to show the line pumped down, scans the furnace setpoint while reading the furnace and
the spectrometer, counts the spectrometer, closes the valve, and writes every Bluesky document
of the run to a JSON-lines file that ``show`` reads back::

    labbridge demo                      # prints the prefix and the EPICS_CA_ADDR_LIST to use
    export EPICS_CA_ADDR_LIST='...' EPICS_CA_AUTO_ADDR_LIST=NO
    python examples/bluesky/plan.py run --prefix LAB --out run.jsonl
    python examples/bluesky/plan.py show run.jsonl

Every write goes through the labbridge devices (the same methods the Pychron link calls): a
software-locked valve makes the plan stop with "Write access denied".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
from bluesky import RunEngine
from bluesky.run_engine import call_in_bluesky_event_loop
from ophyd_async.core import StandardReadable, wait_for_value
from ophyd_async.epics.core import epics_signal_r, epics_signal_rw


class Valve(StandardReadable):
    """One valve: ``command`` is the bo record (write True to open), ``state`` its readback."""

    def __init__(self, pv: str, name: str = "") -> None:
        with self.add_children_as_readables():
            self.state = epics_signal_r(bool, f"{pv}_RBV")
        self.command = epics_signal_rw(bool, pv)
        super().__init__(name=name)


class Furnace(StandardReadable):
    def __init__(self, prefix: str, name: str = "") -> None:
        with self.add_children_as_readables():
            self.temperature = epics_signal_r(float, f"{prefix}:furnace:TEMPERATURE")
            self.output = epics_signal_r(float, f"{prefix}:furnace:OUTPUT")
            self.setpoint = epics_signal_rw(float, f"{prefix}:furnace:SETPOINT")
        super().__init__(name=name)


class Spectrometer(StandardReadable):
    """The detector intensities of the mass spectrometer (one value per integration)."""

    def __init__(self, prefix: str, detectors: list[str], name: str = "") -> None:
        with self.add_children_as_readables():
            for det in detectors:
                setattr(self, det, epics_signal_r(float, f"{prefix}:argus:{det}"))
        super().__init__(name=name)


def wait_for_pressure(gauge: Any, below: float, timeout: float) -> Generator[Any, Any, None]:
    """Block the plan until the gauge reads below ``below`` torr (fails after ``timeout``)."""
    yield from bps.wait_for([lambda: wait_for_value(gauge, lambda p: p < below,
                                                    timeout=timeout)])


def settling(seconds: float) -> Any:
    """A scan step that moves, lets the furnace respond for ``seconds``, then reads."""

    def per_step(detectors: Any, step: dict[Any, Any], pos_cache: Any) -> Any:
        yield from bps.move_per_step(step, pos_cache)
        yield from bps.sleep(seconds)
        yield from bps.trigger_and_read(list(detectors) + list(step))

    return per_step


def line_plan(valves: dict[str, Valve], valve: str, gauge: Any, furnace: Furnace,
              spectrometer: Spectrometer, setpoints: list[float], counts: int,
              below: float, timeout: float, settle: float) -> Generator[Any, Any, None]:
    # 1. isolate the line: every valve closed (in parallel, each write waits for the device)
    yield from bps.mv(*[a for v in valves.values() for a in (v.command, False)])
    # 2. open the chosen valve and 3. wait for the pressure
    yield from bps.mv(valves[valve].command, True)
    yield from wait_for_pressure(gauge, below, timeout)
    # 4. scan the furnace setpoint, reading furnace and spectrometer at each point
    yield from bp.list_scan([furnace, spectrometer, gauge], furnace.setpoint, setpoints,
                            per_step=settling(settle),
                            md={"plan": "furnace setpoint scan", "valve": valve})
    # 5. count the spectrometer
    yield from bp.count([spectrometer], num=counts, delay=0.2,
                        md={"plan": "spectrometer count"})
    yield from bps.mv(valves[valve].command, False)


class JsonLinesWriter:
    """A Bluesky callback writing each (name, document) pair as one JSON line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("w", encoding="utf-8")

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self._f.write(json.dumps([name, doc], default=_plain) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _plain(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def run(args: argparse.Namespace) -> int:
    p = args.prefix
    RE = RunEngine({})
    writer = JsonLinesWriter(Path(args.out))
    RE.subscribe(writer)
    try:
        valves = {n: Valve(f"{p}:valves:{n}", name=f"valve_{n}") for n in args.valves}
        ion_gauge = epics_signal_r(float, f"{p}:gauges:{args.gauge}",
                                   name=f"gauge_{args.gauge}")
        furnace = Furnace(p, name="furnace")
        spectrometer = Spectrometer(p, args.detectors, name="spectrometer")
        devices = [*valves.values(), ion_gauge, furnace, spectrometer]
        # Connect every signal on the RunEngine's event loop before the plan starts.
        async def connect() -> None:
            await asyncio.gather(*(d.connect(timeout=args.connect_timeout) for d in devices))

        call_in_bluesky_event_loop(connect())
        uids = RE(line_plan(valves, args.valve, ion_gauge, furnace, spectrometer,
                            args.setpoints, args.counts, args.below, args.timeout,
                            args.settle))
    finally:
        writer.close()
    print(f"runs {', '.join(uids)} written to {args.out}")
    return 0


def show(args: argparse.Namespace) -> int:
    """Print each run of a JSON-lines file as a table of its events."""
    columns: list[str] = []
    for line in Path(args.file).read_text(encoding="utf-8").splitlines():
        name, doc = json.loads(line)
        if name == "start":
            print(f"run {doc['uid']}: {doc.get('plan_name')} ({doc.get('plan', '')})")
        elif name == "descriptor":
            columns = sorted(doc["data_keys"])
            print("  seq  " + "  ".join(f"{c:>22}" for c in columns))
        elif name == "event":
            vals = [doc["data"].get(c, math.nan) for c in columns]
            print(f"  {doc['seq_num']:>3}  " + "  ".join(f"{_fmt(v):>22}" for v in vals))
        elif name == "stop":
            print(f"  exit: {doc['exit_status']}, events: {doc.get('num_events')}")
    return 0


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the plan against the lab's IOCs")
    r.add_argument("--prefix", default="LAB")
    r.add_argument("--out", default="run.jsonl")
    r.add_argument("--valves", nargs="+", default=list("ABCDEF"))
    r.add_argument("--valve", default="A", help="the valve to open")
    r.add_argument("--gauge", default="IG")
    r.add_argument("--below", type=float, default=1e-7, help="torr to wait for")
    r.add_argument("--timeout", type=float, default=30.0)
    r.add_argument("--setpoints", nargs="+", type=float, default=[100.0, 200.0, 300.0])
    r.add_argument("--detectors", nargs="+", default=["H1", "AX", "L1"])
    r.add_argument("--counts", type=int, default=3)
    r.add_argument("--settle", type=float, default=1.0,
                   help="seconds the furnace gets after each setpoint before reading")
    r.add_argument("--connect-timeout", type=float, default=10.0)
    s = sub.add_parser("show", help="print the runs of a JSON-lines file")
    s.add_argument("file")
    args = ap.parse_args(argv)
    return run(args) if args.command == "run" else show(args)


if __name__ == "__main__":
    sys.exit(main())
