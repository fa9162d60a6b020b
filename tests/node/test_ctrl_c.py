"""Ctrl-C stops a long-running command at once with exit code 0, whenever it comes: also right
after start, while the first poll's connection is being made (on Python 3.11,
``asyncio.wait_for`` lost that cancellation and ``labbridge monitor`` never exited)."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.cli_helpers import labbridge_cmd, port_of, serving
from tests.conftest import REPO


def test_monitor_stops_on_ctrl_c_right_after_start(tmp_path):
    with serving(REPO / "examples" / "valve-controller.yaml", tmp_path) as (_, info):
        target = f"127.0.0.1:{port_of(info)}"
        for _ in range(5):
            proc = subprocess.Popen(labbridge_cmd("monitor", target), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=REPO)
            try:
                first = proc.stderr.readline()  # printed once its Ctrl-C handler is in place
                assert first.startswith(f"monitoring the valves on {target}"), first
                os.kill(proc.pid, signal.SIGINT)
                _out, err = proc.communicate(timeout=20)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            assert proc.returncode == 0, err
            assert "Traceback" not in err
