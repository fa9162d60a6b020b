"""Every command docs/epics.md shows works as written (house rule). Listening ports are the one
substitution: the example node is served on ports 0, never EPICS's standard 5064/5075/5076,
and the client's address lists name the ports it got (as the doc's `export` lines do)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO
from tests.epics.conftest import serve_node

DOC = REPO / "docs" / "epics.md"


def documented_commands() -> set[str]:
    text = DOC.read_text()
    block = re.findall(r"^((?:labbridge|python) [^#\n]*?)\s*(?:#.*)?$", text, re.M)
    inline = re.findall(r"`((?:labbridge|python) [^`]*)`", text)
    return {c.strip() for c in block + inline}


CAGET = """python -c "import epics; print(epics.caget('LAB:valves:A', as_string=True))\""""
CAPUT = """python -c "import epics; print(epics.caput('LAB:valves:A', 1, wait=True))\""""
PVGET = "python -m p4p.client.cli get LAB:gauges:IG LAB:valves:A_RBV"
CLIENT = {CAGET, CAPUT, PVGET}
EXPECTED = CLIENT | {
    "labbridge serve examples/epics-lab.yaml",
    "labbridge serve ... --ready-file ready.json",  # a shape, not a command
    "labbridge demo",  # tests/node/test_demo_and_lab.py
    "python examples/bluesky/plan.py run --prefix LAB --out run.jsonl",  # test_bluesky.py
    "python examples/bluesky/plan.py show run.jsonl",
    "python bench/epics.py --rounds 5",  # test_bench.py (quick mode)
}


def test_the_doc_shows_exactly_the_commands_tested_here() -> None:
    assert documented_commands() == EXPECTED


def _example_on_free_ports() -> dict[str, Any]:
    node = yaml.safe_load((REPO / "examples" / "epics-lab.yaml").read_text())
    for svc in node["services"]:
        for key in ("port", "ca_port", "pva_port", "pva_udp_port"):
            if key in svc:
                svc[key] = 0
        assert svc.get("host", "127.0.0.1") == "127.0.0.1"
    for dev in node["devices"]:
        if dev["kind"] == "valve_bank":
            dev["persist"] = False  # no state file beside the example
    return dict(node)


def test_serve_the_example_and_use_it_with_the_documented_clients(tmp_path: Path) -> None:
    with serve_node(_example_on_free_ports(), tmp_path) as lab:
        env = {**os.environ, **lab.env()}
        out = {}
        for cmd in (CAGET, CAPUT, PVGET):  # the doc's order: read, open, read back
            argv = [sys.executable, *shlex.split(cmd)[1:]]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env,
                                 cwd=tmp_path)
            assert res.returncode == 0, f"{cmd}: {res.stderr}"
            out[cmd] = res.stdout
        assert out[CAGET].strip() == "Closed"
        assert out[CAPUT].strip() == "1"
        assert "LAB:gauges:IG" in out[PVGET] and "LAB:valves:A_RBV" in out[PVGET]
        assert lab.pychron("GetValveStates").startswith("A1")  # the caput opened it
