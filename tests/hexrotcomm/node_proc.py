"""A ``labbridge serve`` node in a subprocess, with its log lines, RSS and CPU time (Linux)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml


class NodeProc:
    """Run ``labbridge serve NODE_FILE`` and watch it: ready file, stderr lines, /proc."""

    def __init__(self, tmp: Path, cfg: dict[str, Any], *args: str,
                 log_level: str = "info") -> None:
        self.node_file = tmp / "node.yaml"
        self.node_file.write_text(yaml.safe_dump(cfg))
        self.ready_file = tmp / "ready.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labbridge", "serve", str(self.node_file),
             "--ready-file", str(self.ready_file), "--state-dir", str(tmp / "state"), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "LABBRIDGE_LOG_LEVEL": log_level})
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, needle: str, timeout: float = 30.0, n: int = 1) -> str:
        """The ``n``-th stderr line containing ``needle`` (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self.lines if needle in line]
                if len(found) >= n:
                    return found[n - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line {n} with {needle!r}; log:\n"
                                         + "\n".join(self.lines[-30:]))
                self._cond.wait(left)

    def count(self, needle: str) -> int:
        """How many stderr lines so far contain ``needle``."""
        with self._cond:
            return sum(needle in line for line in self.lines)

    def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():  # across processes: poll with a deadline
            if self.proc.poll() is not None:
                raise AssertionError("serve exited early:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise AssertionError("serve did not become ready")
            time.sleep(0.05)
        return json.loads(self.ready_file.read_text())  # type: ignore[no-any-return]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode
