"""What TLS costs on the braced Pychron channel (issue 12: aim under 1.3x on round trips).

One ``labbridge serve`` node process (uvloop when installed, as labbridge runs) with one valve
bank behind two command servers: one plain, one with a ``tls`` section (site CA, node
certificate, client certificates required; the keys are made here as ``labbridge keys
tls-ca`` / ``tls-cert`` make them). This process holds one persistent braced client on each,
the TLS one presenting a certificate mapped to the observer role.

Each round sends ``GetValveState A``, one request in flight, alternately on the plain and the
TLS connection (the order flips every round), so both see the same machine load, and prints
one line: the p50 of each and their ratio. It also opens a few fresh connections of each kind
(connect, one request, close) to show what a handshake costs. The last line is one JSON
object: ``tls_rtt_vs_plain`` = the median of the per-round p50 ratios (TLS / plain; 1.0 means
free), the medians of the per-round p50s, and ``tls_connect_vs_plain`` likewise for fresh
connections.

    python bench/tls.py [--rounds 7] [--requests 2000] [--connects 20]
    python bench/tls.py --quick      # a few requests: checks that it runs (the test suite)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import REPO, Report, run

from labbridge.links.pychron.client import PychronClient
from labbridge.transport.tls import client_context

NODE = """\
node: tls-bench
security:
  addresses:
    admin: [127.0.0.1]
  identities:
    bench: {role: observer, cert: bench}
devices:
  - kind: valve_bank
    name: valves
    backend: {kind: sim, delay: 0.0}
    persist: false
    valves:
      - {name: A, address: 0}
services:
  - kind: pychron_command_server
    name: plain
    port: 0
  - kind: pychron_command_server
    name: tls
    port: 0
    tls: {cert: keys/node.crt, key: keys/node.pem, ca: keys/ca.crt}
"""

REQUEST = "GetValveState A"


def make_keys(keys: Path) -> None:
    """The site CA, the node's certificate and the client's (the code behind
    ``labbridge keys tls-ca`` and ``tls-cert``)."""
    from labbridge.cli._tls import make_ca, make_cert

    keys.mkdir(mode=0o700)
    ca_crt, ca_key = make_ca("labbridge bench CA", 1)
    (keys / "ca.crt").write_text(ca_crt)
    for name in ("node", "bench"):
        crt, key = make_cert(name, ["127.0.0.1"], 1, ca_crt.encode(), ca_key.encode())
        (keys / f"{name}.crt").write_text(crt)
        (keys / f"{name}.pem").write_text(key)
        os.chmod(keys / f"{name}.pem", 0o600)


@contextlib.contextmanager
def serve(tmp: Path) -> Iterator[dict[str, int]]:
    """``labbridge serve`` of the bench node; the ports by service name."""
    node = tmp / "node.yaml"
    node.write_text(NODE)
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labbridge", "--log-level", "warning", "serve", str(node),
         "--ready-file", str(ready), "--state-dir", str(tmp / "state")],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # the ready file is written once every service listens
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("labbridge serve did not become ready")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        yield {s["service"]: int(s["port"]) for s in info["services"]
               if s["protocol"] == "tcp"}
    finally:
        proc.terminate()
        proc.wait(10)


async def round_trips(clients: dict[str, PychronClient], order: tuple[str, str],
                      n: int) -> dict[str, list[float]]:
    """``n`` round trips on each client, alternating request by request."""
    out: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(n):
        for name in order:
            t0 = time.perf_counter()
            reply = await clients[name].ask(REQUEST)
            out[name].append(time.perf_counter() - t0)
            if reply != "False":
                raise RuntimeError(f"{name}: {REQUEST} -> {reply!r}")
    return out


async def fresh_connections(kw: dict[str, dict[str, Any]], order: tuple[str, str],
                            n: int) -> dict[str, list[float]]:
    """``n`` fresh connections of each kind (connect, one request, close), alternating."""
    out: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(n):
        for name in order:
            t0 = time.perf_counter()
            async with PychronClient(**kw[name]) as client:
                await client.ask(REQUEST)
            out[name].append(time.perf_counter() - t0)
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lb-tls-bench-") as d:
        tmp = Path(d)
        make_keys(tmp / "keys")
        keys = tmp / "keys"
        tls = client_context(keys / "ca.crt", keys / "bench.crt", keys / "bench.pem",
                             check_hostname=True)
        with serve(tmp) as ports:
            kw = {"plain": {"host": "127.0.0.1", "port": ports["plain"], "timeout": 10.0},
                  "tls": {"host": "127.0.0.1", "port": ports["tls"], "timeout": 10.0,
                          "ssl": tls}}
            clients = {name: PychronClient(**k) for name, k in kw.items()}
            try:
                await round_trips(clients, ("plain", "tls"), args.warmup)
                ssl_object = clients["tls"]._proto.transport.get_extra_info(  # type: ignore
                    "ssl_object")
                version, cipher = ssl_object.version(), ssl_object.cipher()[0]
                rounds = []
                for r in range(args.rounds):
                    order: tuple[str, str] = ("plain", "tls") if r % 2 == 0 else ("tls", "plain")
                    rtt = await round_trips(clients, order, args.requests)
                    con = await fresh_connections(kw, order, args.connects)
                    row = {f"{name}_p50": statistics.median(rtt[name]) for name in order}
                    row |= {f"{name}_p99": sorted(rtt[name])[int(0.99 * (len(rtt[name]) - 1))]
                            for name in order}
                    row |= {f"{name}_connect": statistics.median(con[name]) for name in order}
                    row["ratio"] = row["tls_p50"] / row["plain_p50"]
                    row["connect_ratio"] = row["tls_connect"] / row["plain_connect"]
                    rounds.append(row)
                    print(f"round {r + 1}/{args.rounds}: plain p50 {row['plain_p50'] * 1e6:.1f} us"
                          f" (p99 {row['plain_p99'] * 1e6:.1f}), tls p50 "
                          f"{row['tls_p50'] * 1e6:.1f} us (p99 {row['tls_p99'] * 1e6:.1f}), "
                          f"ratio {row['ratio']:.3f}; fresh connection: plain "
                          f"{row['plain_connect'] * 1e3:.2f} ms, tls "
                          f"{row['tls_connect'] * 1e3:.2f} ms", flush=True)
            finally:
                for c in clients.values():
                    await c.close()

    def med(key: str, scale: float = 1.0) -> float:
        return round(statistics.median(r[key] for r in rounds) * scale, 3)

    return {
        "request": REQUEST,
        "rounds": args.rounds,
        "requests_per_round": args.requests,
        "connects_per_round": args.connects,
        "tls_version": version,
        "cipher": cipher,
        "plain_rtt_p50_us": med("plain_p50", 1e6),
        "tls_rtt_p50_us": med("tls_p50", 1e6),
        "plain_rtt_p99_us": med("plain_p99", 1e6),
        "tls_rtt_p99_us": med("tls_p99", 1e6),
        "tls_rtt_vs_plain": med("ratio"),
        "tls_rtt_vs_plain_rounds": [round(r["ratio"], 3) for r in rounds],
        "tls_connect_vs_plain_rounds": [round(r["connect_ratio"], 3) for r in rounds],
        "plain_connect_ms": med("plain_connect", 1e3),
        "tls_connect_ms": med("tls_connect", 1e3),
        "tls_connect_vs_plain": med("connect_ratio"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connects", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of 20 requests and 2 connections: checks that it runs")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.requests, args.connects, args.warmup = 2, 20, 2, 5
    report = Report("tls", args.quick)
    report.finish(run(main_async(args)))


if __name__ == "__main__":
    main()
