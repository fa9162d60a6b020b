"""One node with an EPICS IOC, started once for the EPICS interop tests (a subprocess: EPICS
initialises one IOC per process), on loopback and on ports the IOC picks free.

The clients are real EPICS clients: pyepics (its own libca) and p4p (pvxs). Their address
lists name only this IOC's ports (``EPICS_CA_AUTO_ADDR_LIST=NO``), so nothing is searched for
beyond loopback. pyepics reads its environment once, when its CA context is created: the
environment is set here before the first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# Not imported here: softioc would load EPICS base (epicscorelibs) into the test process, and
# pyepics's own libca must not share the process with another copy of libCom.
if importlib.util.find_spec("softioc") is None:
    raise ImportError("the EPICS extra is not installed: pip install -e '.[dev]'")

from tests.cli_helpers import labbridge_cmd, port_of
from tests.conftest import REPO

PREFIX = "LBT"

NODE: dict[str, Any] = {
    "node": "epics-lab",
    "devices": [
        {"kind": "valve_bank", "name": "valves", "persist": False,
         "backend": {"kind": "sim", "delay": 0.01},
         "valves": [{"name": "A", "address": 0, "description": "sample inlet"},
                    {"name": "B", "address": 1, "interlock": ["C"]},
                    {"name": "C", "address": 2},
                    {"name": "D", "address": 3}]},
        {"kind": "gauge_controller", "name": "gauges", "gauges": ["IG", "CG1"],
         "poll_period": 0.1},
        {"kind": "furnace", "name": "furnace", "time_scale": 100},
        {"kind": "mass_spectrometer", "name": "argus", "integration_time": 0.1,
         "magnet_dac": 5.0},
        {"kind": "camera", "name": "camera", "width": 64, "height": 48, "seed": 3},
        {"kind": "hexrot_rotator_mock", "name": "rotator", "generation": "D"},
    ],
    "services": [
        {"kind": "pychron_command_server", "name": "command-server", "port": 0},
        {"kind": "epics_ioc", "name": "epics", "prefix": PREFIX, "ca_port": 0,
         "pva_port": 0, "pva_udp_port": 0},
    ],
}


class Lab:
    """The running node: its ready info, EPICS settings and a Pychron side door."""

    def __init__(self, info: dict[str, Any], tmp: Path) -> None:
        self.info = info
        self.tmp = tmp
        self.epics = info["details"]["epics"]
        self.prefix = self.epics["prefix"]
        self.pychron_port = port_of(info, "tcp", "command-server")
        self.log: Path | None = None

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}:{suffix}"

    def pychron(self, command: str) -> str:
        """Ask the node's Pychron command server (another link to the same devices)."""
        with socket.create_connection(("127.0.0.1", self.pychron_port), timeout=10) as s:
            s.sendall(command.encode() + b"\r")
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def env(self) -> dict[str, str]:
        return {"EPICS_CA_ADDR_LIST": self.epics["EPICS_CA_ADDR_LIST"],
                "EPICS_CA_AUTO_ADDR_LIST": "NO",
                "EPICS_PVA_ADDR_LIST": self.epics["EPICS_PVA_ADDR_LIST"],
                "EPICS_PVA_AUTO_ADDR_LIST": "NO"}

    def pva(self) -> Any:
        from p4p.client.thread import Context

        return Context("pva", conf={"EPICS_PVA_ADDR_LIST": self.epics["EPICS_PVA_ADDR_LIST"],
                                    "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, useenv=False)


@contextlib.contextmanager
def serve_node(node: dict[str, Any], tmp: Path) -> Iterator[Lab]:
    """Run ``node`` as ``labbridge serve`` (its log at info level in tmp/node.log) until the
    block ends; yields the running :class:`Lab`."""
    cfg = tmp / "node.yaml"
    cfg.write_text(yaml.safe_dump(node, sort_keys=False))
    ready = tmp / "ready.json"
    log = tmp / "node.log"
    # The node's output goes to a file (EPICS prints to stdout; an unread pipe would fill).
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            labbridge_cmd("--log-level", "info", "serve", str(cfg), "--ready-file",
                          str(ready), "--state-dir", str(tmp / "state")),
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # The ready file is the readiness event of a child process (written once serving).
        while not ready.exists():
            if proc.poll() is not None:
                raise AssertionError(f"node exited with {proc.returncode}: "
                                     f"{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError("node not ready within 60 s: "
                                     f"{log.read_text(errors='replace')}")
            time.sleep(0.02)
        lab = Lab(json.loads(ready.read_text()), tmp)
        lab.log = log
        yield lab
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def epics_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with serve_node(NODE, tmp_path_factory.mktemp("epics-lab")) as lab:
        os.environ.update(lab.env())
        yield lab


@pytest.fixture(scope="session")
def ca(epics_lab: Lab) -> Any:
    """pyepics, with its CA context created on this IOC's address list."""
    import epics

    return epics
