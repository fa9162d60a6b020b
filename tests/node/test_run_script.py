"""`labbridge run SCRIPT --lab CONFIG` with an async and a blocking script."""

from __future__ import annotations

import pytest

from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO

ASYNC_SCRIPT = """
async def main(lab):
    await lab.line.open("B")
    await lab.line.wait_for(lambda: lab.line.is_open("B"), timeout=5, what="B open")
    await lab.line.close("B")
    await lab.line.open("C")
"""

BLOCKING_SCRIPT = """
def main(lab):
    lab.line.open("D")
    lab.sleep(0.1)
    assert lab.line.is_open("D")
    lab.line.close("D")
    lab.line.open("Z")   # no such valve: the run must fail with a clear message
"""


@pytest.mark.parametrize("kind", ["async", "blocking"])
def test_run_script(tmp_path, kind):
    with serving(REPO / "examples" / "valve-controller.yaml", tmp_path) as (_, info):
        port = port_of(info)
        lab = tmp_path / "acq.yaml"
        lab.write_text(f"node: acq\nservices:\n  - kind: remote_manager\n    host: 127.0.0.1\n"
                       f"    port: {port}\n    monitor: {{update_period: 0.2}}\n")
        script = tmp_path / "script.py"
        script.write_text(ASYNC_SCRIPT if kind == "async" else BLOCKING_SCRIPT)
        r = run_cli("--log-level", "warning", "run", str(script), "--lab", str(lab),
                    "--no-progress", timeout=60)
        if kind == "async":
            assert r.returncode == 0, r.stderr
            assert "ok   open B" in r.stdout and "ok   open C" in r.stdout
            assert "ok   wait for B open" in r.stdout
            state = run_cli("call", f"127.0.0.1:{port}", "GetValveState", "C")
            assert state.stdout.strip() == "OK"
        else:
            assert r.returncode == 1, r.stdout + r.stderr
            assert "ok   open D" in r.stdout and "ok   close D" in r.stdout
            assert "script failed: open Z" in r.stderr
            assert "Traceback" not in r.stderr
