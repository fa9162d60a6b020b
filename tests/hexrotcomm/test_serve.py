"""`labbridge serve examples/rotator-mock.yaml` as a subprocess, driven by `labbridge rotator`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from labbridge.cli import main
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "rotator-mock.yaml"


def _free_port_pair() -> int:
    """A port P with P+1 free too (generation A listens on both)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")


def _wait_ready(proc: subprocess.Popen, path: Path, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():  # no event to wait on across processes: poll with a deadline
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("serve did not become ready")
        time.sleep(0.05)
    return json.loads(path.read_text())


def _rotator(capsys, *args: str) -> tuple[int, dict]:
    code = main(["--log-level", "warning", "rotator", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


@pytest.mark.parametrize("gen", ["D", "A"])
def test_serve_rotator_mock_and_drive_it(gen, tmp_path, capsys):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["devices"][0]["generation"] = gen
    cfg["devices"][0]["config"].update({"velocity_limit": 20.0, "accel_limit": 40.0})
    if gen == "D":
        cfg["devices"][0]["config"]["max_velocity_limit"] = 20.0
    args: list[str] = []
    if gen == "D":
        args = ["--port", "0"]
    else:
        port = _free_port_pair()
        cfg["services"][0]["port"] = port
    node_file = tmp_path / "rotator.yaml"
    node_file.write_text(yaml.safe_dump(cfg))
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labbridge", "serve", str(node_file), "--ready-file", str(ready),
         "--state-dir", str(tmp_path / "state"), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LABBRIDGE_LOG_LEVEL": "warning"})
    try:
        info = _wait_ready(proc, ready)
        eps = info["services"]
        if gen == "D":
            assert eps[0]["role"] == "listen"
            port = eps[0]["port"]
        else:
            assert [e["port"] for e in eps] == [port, port + 1]
            assert all(e["role"] == "connect" for e in eps)
        target = f"127.0.0.1:{port}"
        common = ["--generation", gen, "--enable-delay", "0", "--move-pause", "0",
                  "--timeout", "10"]
        code, st = _rotator(capsys, target, "status", *common)
        assert code == 0 and st["connected"] and st["limits"]["upper_pos_limit"] == 90.0
        assert st["state"] == ("STANDBY" if gen == "D" else "OFFLINE")
        code, st = _rotator(capsys, target, "enable", *common)
        assert code == 0 and st["state"] == "ENABLED"
        code, st = _rotator(capsys, target, "move", "7.5", *common, "--tolerance", "1e-6")
        assert code == 0 and st["position"] == pytest.approx(7.5, abs=1e-6)
        code, st = _rotator(capsys, target, "move", "-95", *common)
        assert code == 1 and "lower_pos_limit" in st["error"]
        code, st = _rotator(capsys, target, "move", "-60", "--no-wait", *common)
        assert code == 0
        code, st = _rotator(capsys, target, "stop", *common)
        assert code == 0 and st["enabled_substate"] == 0
        assert -60.0 < st["position"] < 7.5
        code, st = _rotator(capsys, target, "status", *common)
        assert code == 0 and st["state"] == "ENABLED"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        err = proc.stderr.read()
        proc.stderr.close()
    assert rc == 0, err


def test_bad_node_file_names_the_field(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["devices"][0]["config"]["upper_limit"] = 5  # not a field of the struct
    node_file = tmp_path / "bad.yaml"
    node_file.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "labbridge", "serve", str(node_file)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "upper_limit" in res.stderr and "MTRotator.Config" in res.stderr
