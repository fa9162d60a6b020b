"""bench/tls.py runs and reports what it promises (its figures are not judged here: the
machine running the tests may be loaded)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.bench.helpers import check_report
from tests.conftest import REPO


def test_tls_bench_quick_mode_reports_the_ratio():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "tls.py"), "--quick"],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 2 and all("ratio" in line for line in rounds)
    report = json.loads(lines[-1])
    assert report["bench"] == "tls"
    for key in ("tls_rtt_vs_plain", "plain_rtt_p50_us", "tls_rtt_p50_us",
                "tls_connect_vs_plain", "plain_connect_ms", "tls_connect_ms"):
        assert isinstance(report[key], float) and report[key] > 0, key
    assert len(report["tls_rtt_vs_plain_rounds"]) == 2
    assert report["tls_version"].startswith("TLSv1.")
    assert "Traceback" not in result.stderr
    check_report("tls", lines[:-1], report)  # what bench/report.py shows of it
