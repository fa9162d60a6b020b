"""docs/faults.md is generated from the fault suite's runs and matches the suite.

No network here (no root needed): these check the renderer and the committed table.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.faults.report import BEGIN, END, load_runs, main, render
from tests.faults.scenarios import SCENARIOS

DOC = REPO / "docs" / "faults.md"


def fake_run(path: Path, started: float, scale: float) -> None:
    results = [{"scenario": s, "happened": f"{s} happened", "detected": 1.0 * scale,
                "recovered": None if s.startswith("pipelined") else 0.5 * scale,
                "checks": ["checked"], "numbers": {"n": int(10 * scale), "how": "CLOSED"},
                "test": "t", "duration": 2.0} for s in SCENARIOS]
    path.write_text(json.dumps({"started": started, "kernel": "6.x", "python": "3.11",
                                "exitstatus": 0, "results": results}))


def test_committed_table_has_exactly_the_suite_scenarios():
    text = DOC.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M)
    assert rows == list(SCENARIOS), "regenerate: python -m tests.faults.report --write " \
        "docs/faults.md (after python -m pytest -m faults)"
    assert re.search(r"^\d+ run\(s\) of the suite", table.strip(), flags=re.M)


def test_render_takes_the_newest_complete_runs(tmp_path):
    for i, scale in enumerate([1, 2, 3, 4, 5, 6]):
        fake_run(tmp_path / f"run-{i}.json", 1000.0 + i, scale)
    # an incomplete run (a scenario failed) is not used
    (tmp_path / "run-9.json").write_text(json.dumps({
        "started": 2000.0, "kernel": "6.x", "python": "3.11", "exitstatus": 1,
        "results": [{"scenario": "monitor-partition", "happened": "x", "detected": 99,
                     "recovered": 99, "checks": [], "numbers": {}}]}))
    runs = load_runs(tmp_path, 5)
    assert [r["started"] for r in runs] == [1001.0, 1002.0, 1003.0, 1004.0, 1005.0]
    table = render(runs)
    row = next(line for line in table.splitlines() if "`monitor-partition`" in line)
    assert "| 4.00 (2.00-6.00) | 2.00 (1.00-3.00) |" in row  # median (min-max)
    assert "n 20-60; how CLOSED" in row
    loss = next(line for line in table.splitlines() if "`pipelined-loss-5`" in line)
    assert "| 4.00 (2.00-6.00) | - |" in loss


def test_write_replaces_only_the_table(tmp_path):
    fake_run(tmp_path / "run-1.json", 1000.0, 1)
    doc = tmp_path / "faults.md"
    shutil.copy(DOC, doc)
    assert main(["--runs", str(tmp_path), "--write", str(doc)]) == 0
    new = doc.read_text(encoding="utf-8")
    old = DOC.read_text(encoding="utf-8")
    assert new.split(BEGIN)[0] == old.split(BEGIN)[0]
    assert new.split(END)[1] == old.split(END)[1]
    assert "1 run(s) of the suite" in new


def test_the_documented_command_runs_and_says_when_there_is_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tests.faults.report", "--runs", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("error: no complete run in")
    assert "Traceback" not in out.stderr


def test_actuation_matching_of_the_loss_scenario():
    from tests.faults.test_valves import matches

    o, c = True, False
    # open OK, close OK: both ran
    assert matches([(o, True), (c, True)], [o, c])
    # an open confirmed by read-back only (it may not have run), then a close that ran
    assert matches([(o, True), (c, False), (o, False), (c, True)], [o, c])
    # a second physical open for one answered open: never
    assert not matches([(o, True), (c, False)], [o, o])
    # more actuations than requests: never
    assert not matches([(o, True)], [o, c])
    # an answered request that did not run: inconsistent
    assert not matches([(o, True), (c, True)], [o])
