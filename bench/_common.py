"""What every bench script shares: the event loop, the round lines, the final JSON line.

The convention (docs/adr/0200):

* every round is printed as one line while the bench runs (``round 2/5: ...``);
* the last line of stdout is ONE JSON object: the figures (ratios and absolute values), for
  each ratio its per-round values under ``<key>_rounds``, and ``env`` (Python, event loop,
  CPUs, load average at the start and the end, seconds, whether ``--quick``);
* ``--quick`` runs in seconds with the same code and the same keys (the test suite runs it and
  checks that the keys are there and finite; it never judges a figure).

``bench/report.py`` runs the scripts, keeps their last lines in ``bench/results/`` and writes
the README's performance table from them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the event loop labbridge itself runs on (``labbridge.cli.common.run_async``:
    uvloop when installed), so that a bench and its baselines use the loop a node uses."""
    from labbridge.cli.common import run_async

    return run_async(coro)


def loop_name() -> str:
    """The event loop labbridge runs on in this environment: ``uvloop`` or ``asyncio``."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def pct(samples: Iterable[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median, min and max of per-round values."""
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits)}


class Report:
    """Round lines as the bench goes, then the one JSON line."""

    def __init__(self, bench: str, quick: bool = False) -> None:
        self.bench = bench
        self.quick = quick
        self.t0 = time.perf_counter()
        self.load_start = os.getloadavg()[0]

    @staticmethod
    def line(text: str) -> None:
        print(text, flush=True)

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        out = {"bench": self.bench, **result}
        env = dict(out.get("env") or {})
        env.update({"python": platform.python_version(), "event_loop": loop_name(),
                    "cpus": os.cpu_count(), "load_1min_start": round(self.load_start, 2),
                    "load_1min_end": round(os.getloadavg()[0], 2),
                    "seconds": round(time.perf_counter() - self.t0, 1), "quick": self.quick})
        out["env"] = env
        print(json.dumps(out), flush=True)
        return out


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux ``/proc``; NaN
    elsewhere). Resolution: one clock tick (10 ms), so take it over many requests."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ratio(ours: float, baseline: float) -> float:
    """ours / baseline; NaN (which the tests reject) when the baseline measured nothing."""
    return ours / baseline if baseline > 0 else math.nan
