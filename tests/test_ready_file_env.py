"""Every command that runs until Ctrl-C and writes a ready file takes its path from
``$LABBRIDGE_READY_FILE`` when ``--ready-file`` is not given, as the docs' runner expects
(tests/docs/mdshell.py READY_BY_FILE)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_helpers import labbridge_cmd, run_cli
from tests.conftest import REPO
from tests.docs.mdshell import LONG_RUNNING, READY_BY_FILE


def _takes_the_variable(sub: str) -> bool:
    res = run_cli(sub, "--help")
    assert res.returncode == 0, res.stderr
    return "--ready-file" in res.stdout and "$LABBRIDGE_READY_FILE" in res.stdout


@pytest.mark.parametrize("sub", sorted(LONG_RUNNING))
def test_long_running_commands_with_a_ready_file_take_the_variable(sub):
    assert _takes_the_variable(sub) is (sub in READY_BY_FILE)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():  # a subprocess's readiness: its file (no other channel)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no ready file {path}"
        time.sleep(0.02)
    return json.loads(path.read_text())


@pytest.mark.parametrize("argv", [
    ("dashboard", "{dir}/web.yaml", "--port", "0"),
    ("record", "tcp://127.0.0.1:9", "--db", "{dir}/lab.sqlite"),
], ids=["dashboard", "record"])
def test_the_variable_names_the_ready_file(tmp_path, argv):
    (tmp_path / "web.yaml").write_text(
        "node: dash\nservices:\n  - {kind: web_dashboard, name: web, port: 0,\n"
        "     subscribe: ['tcp://127.0.0.1:9']}\n")
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(labbridge_cmd(*(a.format(dir=tmp_path) for a in argv)), cwd=REPO,
                            env={**os.environ, "LABBRIDGE_READY_FILE": str(ready)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = _wait_for(ready, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    if argv[0] == "dashboard":
        assert any(s["protocol"] == "http" for s in info["services"])
    else:
        assert info["endpoints"] == ["tcp://127.0.0.1:9"]
