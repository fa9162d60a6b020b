"""bench/epics.py runs and reports every figure (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bench.helpers import check_report
from tests.conftest import REPO

pytestmark = pytest.mark.interop


def test_bench_quick_mode_prints_rounds_and_one_json_object() -> None:
    res = subprocess.run([sys.executable, str(REPO / "bench" / "epics.py"), "--quick"],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert lines[0].startswith("round 1: labbridge ")
    result = json.loads(lines[-1])
    check_report("epics", lines[:-1], result)  # what bench/report.py shows of it
    assert set(result) == {"bench", "rounds", "burst", "puts", "monitor_updates_per_s",
                           "monitor_delivered", "caput_p50_ms", "monitor_rate_vs_plain",
                           "caput_p50_vs_plain", "monitor_rate_vs_plain_rounds",
                           "caput_p50_vs_plain_rounds", "env"}
    assert result["bench"] == "epics" and result["env"]["quick"] is True
    for key in ("monitor_updates_per_s", "monitor_delivered", "caput_p50_ms"):
        assert set(result[key]) == {"labbridge", "plain"}
    assert result["monitor_delivered"]["labbridge"] > 0 < result["monitor_delivered"]["plain"]
    assert result["caput_p50_ms"]["labbridge"] > 0 < result["caput_p50_ms"]["plain"]
