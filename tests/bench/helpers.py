"""Running a bench script's quick mode and checking what its last line reports.

No figure is judged here (the machine running the tests may be loaded): the keys that
bench/report.py puts in the README must be there, as finite numbers, with their rounds.
"""

from __future__ import annotations

import json
import math
import string
import subprocess
import sys
from typing import Any

from bench.report import FIGURES_SHOWN

from tests.conftest import REPO


def run_quick(bench: str, timeout: float = 240) -> tuple[list[str], dict[str, Any]]:
    """Run ``python bench/<bench>.py --quick``; its lines before the last, and the last one
    parsed (it must be one JSON object)."""
    res = subprocess.run([sys.executable, str(REPO / "bench" / f"{bench}.py"), "--quick"],
                         capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines, "no output"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return lines[:-1], result


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_report(bench: str, lines: list[str], result: dict[str, Any]) -> None:
    """Every round printed before the JSON line; every figure of ``bench`` that the README
    shows present and finite, with its per-round values and the absolute figures beside it;
    the environment recorded."""
    assert any(ln.startswith(("round ", "telemetry block", "ack block")) for ln in lines), lines
    assert not any(ln.lstrip().startswith("{") for ln in lines), "one JSON object, last"
    assert result["bench"] == bench
    env = result["env"]
    assert env["quick"] is True and env["event_loop"] in ("uvloop", "asyncio")
    assert finite(env["load_1min_start"]) and finite(env["load_1min_end"])
    figures = [f for f in FIGURES_SHOWN if f.bench == bench]
    assert figures, f"bench/report.py shows nothing of {bench}"
    for fig in figures:
        assert finite(result.get(fig.key)), (fig.key, result.get(fig.key))
        rounds = result.get(f"{fig.key}_rounds")
        if fig.ratio and rounds is not None:
            assert rounds and all(finite(v) for v in rounds), (fig.key, rounds)
        for _, field, _, _ in string.Formatter().parse(fig.detail):
            if field:
                assert finite(result.get(field)), (fig.key, field, result.get(field))
