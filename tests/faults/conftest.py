"""Fixtures of the fault suite (issue 16; ADR 0160).

* ``netns``: a fresh network namespace joined to the test process by a veth pair
  (tests/faults/netns.py), deleted with everything in it when the test ends, pass or fail.
  Namespaces left by fault-suite processes that died are removed when the session starts.
* ``start_node(ns, yaml)``: runs ``labbridge serve`` (through tests/faults/probe.py, which
  counts valve actuations) inside the namespace, bound to the namespace's veth address
  (``@HOST@`` in the node text), and waits for its ready file. Unless the text has its own
  ``security`` section, the test process's and the namespace's addresses are made admin.
* ``outcome(scenario)``: what the test measured (detection and recovery times, what
  happened); the outcomes of passing tests are written to
  ``test-artifacts/faults/run-<time>-<pid>.json`` when the session ends, and
  ``python -m tests.faults.report`` turns those files into the table of docs/faults.md.

The fault tests need root (namespaces, nftables) and the tools of iproute2 and nftables;
without them they FAIL with a message saying what is missing (.ci/run installs the tools).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.faults import netns as nn
from tests.faults.scenarios import SCENARIOS

RESULTS_DIR = REPO / "test-artifacts" / "faults"
_RESULTS: list[dict[str, Any]] = []
_SESSION_START = time.time()


# -- the network ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def network_ready() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("they must run as root (network namespaces and nftables)")
    missing = nn.missing_tools()
    if missing:
        problems.append(f"{', '.join(missing)} not found (apt-get install -y nftables "
                        "iproute2; .ci/run does it)")
    if problems:
        pytest.fail("fault tests cannot run: " + "; ".join(problems), pytrace=False)
    return nn.clean_stale()


@pytest.fixture
def netns(network_ready: list[str]) -> Iterator[nn.NetNS]:
    ns = nn.NetNS()
    try:
        ns.create()
    except nn.NetError as exc:
        ns.destroy()
        pytest.fail(f"cannot build the test network: {exc}", pytrace=False)
    try:
        yield ns
    finally:
        ns.destroy()


# -- nodes in a namespace ----------------------------------------------------------------------
class Node:
    """A ``labbridge serve`` process inside a namespace (see the module docstring)."""

    def __init__(self, ns: nn.NetNS, directory: Path, text: str) -> None:
        self.ns = ns
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "node.yaml"
        text = text.replace("@HOST@", ns.ns_ip)
        if "\nsecurity:" not in text:
            # With no security section a node trusts its own machine only (docs/security.md):
            # the test process and clients inside the namespace are other addresses.
            text += ("\nsecurity:\n  addresses:\n"
                     f"    admin: [{ns.host_ip}, {ns.ns_ip}, 127.0.0.1]\n")
        self.file.write_text(text, encoding="utf-8")
        self.ready = self.dir / "ready.json"
        self.log_path = self.dir / "node.log"
        self.probe_log = self.dir / "actuations.log"
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    async def start(self, timeout: float = 30.0) -> Node:
        self.ready.unlink(missing_ok=True)
        log = self.log_path.open("a", encoding="utf-8")
        try:
            self.proc = self.ns.popen(
                [sys.executable, "-m", "tests.faults.probe", "--log-level", "info", "serve",
                 str(self.file), "--ready-file", str(self.ready), "--state-dir",
                 str(self.dir / "state")],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "LB_PROBE_DIR": str(self.dir), "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()
        # A subprocess has no other channel than its ready file: poll it with a deadline.
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node not ready after {timeout} s:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        self.info = json.loads(self.ready.read_text())
        return self

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def port(self, service: str, protocol: str = "tcp") -> int:
        for s in self.info["services"]:
            if s["service"] == service and s["protocol"] == protocol and "port" in s:
                return int(s["port"])
        raise KeyError(f"{service}/{protocol} not in {self.info['services']}")

    async def call_inside(self, service: str, *command: str) -> str:
        """``labbridge call`` from inside the namespace (its loopback is never faulted): what
        another client on the node's own network does while we are cut off. Run as an
        asyncio subprocess, so the clients under test keep running meanwhile."""
        proc = await asyncio.create_subprocess_exec(
            *self.ns.exec_prefix(), sys.executable, "-m", "labbridge", "call",
            f"{self.ns.ns_ip}:{self.port(service)}", *command, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(30):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    # -- the actuation probe (tests/faults/probe.py) ------------------------------------------
    def probe_lines(self) -> list[str]:
        if not self.probe_log.exists():
            return []
        return self.probe_log.read_text(encoding="utf-8").splitlines()

    def actuations(self, address: str) -> int:
        """Physical actuations of ``address`` started so far (set_output calls)."""
        return sum(1 for line in self.probe_lines() if line.startswith(f"enter {address} "))

    def levels(self, address: str) -> list[bool]:
        """The level of each physical actuation of ``address``, in order."""
        return [line.endswith(" 1") for line in self.probe_lines()
                if line.startswith(f"enter {address} ")]

    def hold(self, address: str) -> None:
        (self.dir / f"hold-{address}").touch()

    def release(self, address: str) -> None:
        (self.dir / f"hold-{address}").unlink(missing_ok=True)

    async def wait_probe(self, line: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.probe_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"probe line {line!r} not seen in {timeout} s")
            await asyncio.sleep(0.01)

    @staticmethod
    def line_time(line: str) -> float:
        """The Unix time of a node log line (it starts with the local ``HH:MM:SS.mmm``)."""
        now = datetime.datetime.now()
        clock = datetime.datetime.strptime(line.split()[0], "%H:%M:%S.%f").time()
        when = datetime.datetime.combine(now.date(), clock)
        if when - now > datetime.timedelta(hours=12):  # logged before midnight
            when -= datetime.timedelta(days=1)
        return when.timestamp()

    async def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line of the node's log matching ``pattern`` (polled with a deadline)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} in {timeout} s:\n"
                                     f"{self.log_text()[-3000:]}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def start(ns: nn.NetNS, text: str, name: str = "node") -> Node:
        node = Node(ns, tmp_path / name, text)
        nodes.append(node)
        return await node.start()

    try:
        yield start
    finally:
        for node in nodes:
            node.stop()


# -- observing our own process ---------------------------------------------------------------
class LogEvent(logging.Handler):
    """An asyncio.Event set when a log record of ``logger`` matches ``pattern`` (re.search)."""

    def __init__(self, logger: str, pattern: str) -> None:
        super().__init__(logging.DEBUG)
        self.pattern = re.compile(pattern)
        self.event = asyncio.Event()
        self.at: float | None = None
        self.logger = logging.getLogger(logger)
        self._old_level = self.logger.level

    def emit(self, record: logging.LogRecord) -> None:
        if self.pattern.search(record.getMessage()) and not self.event.is_set():
            self.at = time.monotonic()
            self.event.set()

    def __enter__(self) -> LogEvent:
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._old_level)

    async def wait(self, timeout: float) -> float:
        async with asyncio.timeout(timeout):
            await self.event.wait()
        assert self.at is not None
        return self.at


def unsent(ip: str, port: int) -> list[str]:
    """Sockets of this namespace towards ``ip:port`` that still hold unsent bytes (ss)."""
    out = subprocess.run(["ss", "-Htn", "state", "all", "dst", f"{ip}:{port}"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    left = []
    for line in out.splitlines():
        parts = line.split()
        # (a connection being opened counts its SYN in Send-Q: no data of ours)
        if len(parts) >= 3 and parts[0] != "SYN-SENT" and parts[2].isdigit() \
                and int(parts[2]) > 0:
            left.append(line.strip())
    return left


# -- outcomes -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one scenario showed; see docs/faults.md for the meaning of each field."""

    scenario: str
    happened: str = ""
    #: Seconds from the fault to the moment the component reported it.
    detected: float | None = None
    #: Seconds from the end of the fault (heal) to the component working again.
    recovered: float | None = None
    checks: list[str] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def check(self, text: str) -> None:
        self.checks.append(text)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def outcome(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Outcome]]:
    made: list[Outcome] = []

    def make(scenario: str) -> Outcome:
        assert scenario in SCENARIOS, f"unknown scenario {scenario!r} (tests/faults/scenarios.py)"
        o = Outcome(scenario)
        made.append(o)
        return o

    yield make
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.passed:
        for o in made:
            _RESULTS.append({**asdict(o), "test": request.node.nodeid,
                             "duration": round(rep.duration, 2)})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _RESULTS:
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(_SESSION_START))
    path = RESULTS_DIR / f"run-{stamp}-{os.getpid()}.json"
    data = {"started": _SESSION_START, "kernel": platform.release(),
            "python": platform.python_version(), "exitstatus": int(exitstatus),
            "results": _RESULTS}
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 3)
