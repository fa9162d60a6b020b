"""examples/bluesky/plan.py with ophyd-async 0.21.3 (aioca) in a Bluesky 1.15.1 RunEngine,
against the node's IOC: the run file it writes, and the devices as another link sees them.

The plan runs in its own process (aioca loads EPICS base's libca; the test process already
holds pyepics's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.epics.conftest import PREFIX, Lab

pytestmark = pytest.mark.interop
PLAN = REPO / "examples" / "bluesky" / "plan.py"


def run_plan(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PLAN), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **lab.env()}, cwd=lab.tmp)


def test_plan_isolates_opens_scans_counts_and_writes_a_run(epics_lab: Lab) -> None:
    out = epics_lab.tmp / "run.jsonl"
    res = run_plan(epics_lab, "run", "--prefix", PREFIX, "--valves", "A", "B", "C", "D",
                   "--valve", "A", "--setpoints", "40", "50", "60", "--settle", "0.2",
                   "--counts", "2", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    starts = [d for n, d in docs if n == "start"]
    stops = [d for n, d in docs if n == "stop"]
    events = [d for n, d in docs if n == "event"]
    assert [s["plan_name"] for s in starts] == ["list_scan", "count"]
    assert [s["exit_status"] for s in stops] == ["success", "success"]
    scan = [e for e in events if e["descriptor"] in
            {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] ==
             starts[0]["uid"]}]
    assert [e["data"]["furnace-setpoint"] for e in scan] == [40.0, 50.0, 60.0]
    assert all(e["data"]["gauge_IG"] < 1e-7 for e in scan)
    assert all(e["data"]["spectrometer-AX"] == pytest.approx(5.0, rel=0.05) for e in scan)
    assert len(events) == 5
    # the devices, asked through the Pychron link: setpoint 60, every valve closed again
    assert epics_lab.pychron("GetValveStates").startswith("A0,B0,C0,D0")
    shown = run_plan(epics_lab, "show", str(out))
    assert shown.returncode == 0 and "exit: success, events: {'primary': 3}" in shown.stdout


def test_a_locked_valve_stops_the_plan(epics_lab: Lab) -> None:
    assert epics_lab.pychron("Lock A") == "OK"
    try:
        out = epics_lab.tmp / "refused.jsonl"
        res = run_plan(epics_lab, "run", "--prefix", PREFIX, "--valves", "A", "B", "C", "D",
                       "--valve", "A", "--setpoints", "40", "--out", str(out))
        assert res.returncode != 0
        assert "Write access denied" in res.stderr
        assert epics_lab.pychron("GetValveStates").startswith("A0")
    finally:
        epics_lab.pychron("Unlock A")
