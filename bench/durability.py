"""What "acknowledged means durable" costs (issue 13, docs/adr/0110).

Two valve banks with a state file each, one ``durable=True`` (the reply to Open/Close waits
until the change is written and fsynced), one ``durable=False`` (the reply goes at once, the
same write follows in the background), each behind its own Pychron command server on
loopback, in one process on one event loop (uvloop when installed, as labbridge runs). One
persistent braced client per server alternates ``Open A`` / ``Close A`` (every request a real
change, so every durable reply waits for a write).

Each round measures a block of round trips on one server, then a block on the other (the
order alternates between rounds, so both see the same machine load), and prints one line.
The last line is one JSON object: medians of the per-round p50s, and
``durable_vs_plain_rtt`` = the median of the per-round p50 ratios (durable / plain; higher
means durability costs more).

    python bench/durability.py [--rounds 7] [--requests 300] [--dir /path/on/the/real/disk]
    python bench/durability.py --quick      # seconds: checks that it runs (the test suite)

``--dir`` matters: fsync on tmpfs costs nothing, on an SD card it costs milliseconds. The
default is a temporary directory under the current directory (usually a real disk).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from _common import Report, pct, run

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.server import PychronCommandServer
from labbridge.links.pychron.valves import ValveCommands


@contextlib.asynccontextmanager
async def node(state_dir: Path, durable: bool) -> AsyncIterator[PychronClient]:
    bank = ValveBank("valves", [ValveConfig("A"), ValveConfig("B")], SimValveBackend(),
                     state_file=state_dir / f"valves-{'durable' if durable else 'plain'}.json",
                     durable=durable)
    await bank.start()
    server = PychronCommandServer(Dispatcher([ValveCommands([bank])]), "127.0.0.1", 0)
    await server.start()
    assert server.port
    client = PychronClient("127.0.0.1", server.port, timeout=10.0)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()
        await bank.stop()


async def block(client: PychronClient, n: int, toggle: list[bool]) -> list[float]:
    out = []
    for _ in range(n):
        toggle[0] = not toggle[0]
        request = "Open A" if toggle[0] else "Close A"
        t0 = time.perf_counter()
        reply = await client.ask(request)
        out.append(time.perf_counter() - t0)
        if reply != "OK":
            raise RuntimeError(f"{request}: {reply}")
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path.cwd()
    with tempfile.TemporaryDirectory(prefix=".lb-durability-", dir=base) as d:
        state_dir = Path(d)
        async with node(state_dir, True) as durable, node(state_dir, False) as plain:
            toggles = {"durable": [False], "plain": [False]}
            clients = {"durable": durable, "plain": plain}
            for name in clients:  # warm up: connections, first writes
                await block(clients[name], 20, toggles[name])
            rounds = []
            for r in range(args.rounds):
                order = ("durable", "plain") if r % 2 == 0 else ("plain", "durable")
                p50 = {}
                for name in order:
                    samples = await block(clients[name], args.requests, toggles[name])
                    p50[name] = statistics.median(samples)
                    p50[name + "_p99"] = pct(samples, 0.99)
                ratio = p50["durable"] / p50["plain"]
                rounds.append({**p50, "ratio": ratio})
                print(f"round {r + 1}/{args.rounds}: durable p50 {p50['durable'] * 1e3:.3f} ms "
                      f"(p99 {p50['durable_p99'] * 1e3:.3f}), plain p50 "
                      f"{p50['plain'] * 1e3:.3f} ms (p99 {p50['plain_p99'] * 1e3:.3f}), "
                      f"ratio {ratio:.2f}", flush=True)
    return {
        "requests_per_round": args.requests,
        "rounds": args.rounds,
        "state_dir": str(base.resolve()),
        "durable_rtt_p50_ms": statistics.median(r["durable"] for r in rounds) * 1e3,
        "plain_rtt_p50_ms": statistics.median(r["plain"] for r in rounds) * 1e3,
        "durable_rtt_p99_ms": statistics.median(r["durable_p99"] for r in rounds) * 1e3,
        "plain_rtt_p99_ms": statistics.median(r["plain_p99"] for r in rounds) * 1e3,
        "durable_vs_plain_rtt": statistics.median(r["ratio"] for r in rounds),
        "durable_vs_plain_rtt_rounds": [round(r["ratio"], 3) for r in rounds],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--dir", help="where the state files go (default: the current directory)")
    ap.add_argument("--quick", action="store_true", help="2 short rounds: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests = 2, 20
    report = Report("durability", args.quick)
    report.finish(run(main_async(args)))


if __name__ == "__main__":
    main()
