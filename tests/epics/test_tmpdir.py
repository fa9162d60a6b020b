"""A node with an IOC leaves nothing in the temporary directory once it stops (Ctrl-C or
SIGTERM): the access security file's folder goes when the service stops, the device-support
file as soon as EPICS has read it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import labbridge_cmd
from tests.conftest import REPO

NODE = {
    "node": "ioc-tmp",
    "devices": [{"kind": "valve_bank", "name": "valves", "persist": False,
                 "valves": [{"name": "A", "address": 0}]}],
    "services": [{"kind": "epics_ioc", "name": "epics", "prefix": "LBTMP", "ca_port": 0,
                  "pva_port": 0, "pva_udp_port": 0}],
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_ioc_leaves_nothing_in_tmpdir(tmp_path: Path, sig: signal.Signals) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(yaml.safe_dump(NODE))
    ready = tmp_path / "ready.json"
    with open(tmp_path / "node.log", "wb") as out:
        proc = subprocess.Popen(
            labbridge_cmd("serve", str(cfg), "--ready-file", str(ready), "--state-dir",
                          str(tmp_path / "state")),
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # a child's readiness: its ready file (no other channel)
            assert proc.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "node not ready within 60 s"
            time.sleep(0.02)
        acf = Path(json.loads(ready.read_text())["details"]["epics"]["access_file"])
        assert acf.is_file() and acf.parent.parent == tmpdir  # there while it serves
        proc.send_signal(sig)
        assert proc.wait(30) == 0, (tmp_path / "node.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sorted(p.name for p in tmpdir.iterdir()) == []
