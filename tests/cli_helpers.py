"""Run ``labbridge`` as a subprocess the way a user does, and wait for its ready file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import REPO


def labbridge_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "labbridge", *args]


def run_cli(*args: str, timeout: float = 30,
            cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(labbridge_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


#: The commands docs/deploy/README.md gives for trying the lab's node files on one machine:
#: every computer's CurveZMQ pair, the site CA and the dashboard host's HTTPS certificate,
#: in examples/lab/keys (git-ignored: secret keys are never committed).
LAB_KEY_COMMANDS = (
    ("keys", "curve", "valve-controller", "furnace-controller", "acquisition", "data-reduction",
     "dashboard", "--dir", "examples/lab/keys"),
    ("keys", "tls-ca", "--dir", "examples/lab/keys"),
    ("keys", "tls-cert", "dashboard", "--host", "192.168.1.30", "--dir", "examples/lab/keys"),
)


def lab_with_keys(base: Path) -> Path:
    """A copy of examples/lab under ``base/examples/lab`` (without any keys a developer made
    in the checkout), with the keys made by ``labbridge keys`` as the docs say; returns
    ``base``, to run commands in with the documented relative paths."""
    shutil.copytree(REPO / "examples" / "lab", base / "examples" / "lab",
                    ignore=shutil.ignore_patterns("keys", ".labbridge-state"))
    for args in LAB_KEY_COMMANDS:
        r = run_cli(*args, cwd=base)
        assert r.returncode == 0, (args, r.stderr)
    return base


@contextlib.contextmanager
def serving(config: str | Path, tmp_path: Path, *extra: str,
            timeout: float = 30) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start ``labbridge serve CONFIG --port 0 --ready-file ...``; yield (process, ready info).

    The ready file is written only once every service listens, so its appearance is the
    readiness event (polled with a deadline; there is no other channel to a subprocess).
    """
    ready = tmp_path / "ready.json"
    ready.unlink(missing_ok=True)  # an earlier start's file must not count as this one's
    tmp_path.mkdir(parents=True, exist_ok=True)
    # The node's output goes to a file, not a pipe: nobody reads a pipe while the test runs,
    # and a chatty node would block on a full one (a hang, not a failure).
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w", encoding="utf-8")
    proc = subprocess.Popen(
        labbridge_cmd("--log-level", "info", "serve", str(config), "--port", "0",
                      "--ready-file", str(ready), "--state-dir", str(tmp_path / "state"),
                      *extra),
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"serve exited with {proc.returncode}: "
                                     f"{log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError("serve did not write its ready file in time")
            time.sleep(0.02)
        yield proc, json.loads(ready.read_text())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def port_of(info: dict[str, Any], protocol: str = "tcp", service: str | None = None) -> int:
    for s in info["services"]:
        if s["protocol"] == protocol and (service is None or s["service"] == service):
            return int(s["port"])
    raise KeyError(protocol)
