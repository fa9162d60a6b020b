"""``labbridge demo``: a whole simulated lab on loopback, in one command (issue 7).

Each node runs as its own ``labbridge serve`` process (as it would on its own computer), on
port 0, and reports readiness through its ready file; the acquisition side runs in the demo's
own process and drives the lab through the same links a real acquisition computer uses.
Components whose device or service kinds are not installed are left out with a one-line note.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labbridge.node import kinds
from labbridge.node.demo_keys import secure_demo_bus
from labbridge.node.registry import DEVICE_KINDS, SERVICE_KINDS

READY_TIMEOUT = 60.0  # per node; a loaded two-core machine starts eight at once
#: Record-name prefix of every demo node's EPICS IOC (docs/epics.md).
EPICS_PREFIX = "LAB"


def _with_epics(cfg: dict[str, Any]) -> dict[str, Any]:
    """Give a node with devices an EPICS IOC (loopback, free ports) when the extra is there."""
    if not cfg.get("devices") or "epics_ioc" not in SERVICE_KINDS \
            or importlib.util.find_spec("softioc") is None:
        return cfg
    svc = {"kind": "epics_ioc", "name": "epics", "prefix": EPICS_PREFIX, "host": "127.0.0.1",
           "ca_port": 0, "pva_port": 0, "pva_udp_port": 0}
    return {**cfg, "services": [*cfg.get("services", []), svc]}


def _with_web_login(cfg: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Give a node with a web dashboard its one-time login (issue 12): an operator identity
    ``demo`` and a random single-use link token, kept in the node file only as its hash;
    ``info["login_url"]`` gets the link for the demo to print once. Loopback keeps the
    default roles (on the page, a visitor without a login is an observer)."""
    web = [s for s in cfg.get("services", []) if s.get("kind") == "web_dashboard"]
    if not web:
        return cfg
    from labbridge.access import hash_secret

    token = secrets.token_urlsafe(32)
    svc = {**web[0], "one_time_logins": {"demo": hash_secret(token, kind="token")}}
    info["login_url"] = f"/login?once={token}"
    services = [svc if s is web[0] else s for s in cfg["services"]]
    security = {"addresses": {"admin": ["127.0.0.0/8", "::1"]},
                "identities": {"demo": {"role": "operator"}}}
    return {**cfg, "security": security, "services": services}


#: Every node of the demo publishes its devices on a notifier, metadata (units) every 2 s.
def _notifier() -> dict[str, Any]:
    return {"kind": "notifier", "name": "notifier", "host": "127.0.0.1", "port": 0,
            "rep_port": 0, "meta_period": 2}


@dataclass
class Component:
    key: str
    title: str
    needs: tuple[str, ...]
    build: Callable[[dict[str, Any]], dict[str, Any]]
    after: tuple[str, ...] = ()
    proc: asyncio.subprocess.Process | None = None
    info: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def endpoint(self, protocol: str, service: str | None = None) -> tuple[str, int] | None:
        for s in self.info.get("services", []):
            if s.get("role", "listen") != "listen":
                continue  # where it connects to is another node's endpoint
            if s.get("protocol") == protocol and (service is None or s["service"] == service):
                host = str(s.get("host") or "127.0.0.1")
                return ("127.0.0.1" if host in ("0.0.0.0", "*") else host), int(s["port"])
        return None

    def url(self, protocol: str) -> str | None:
        ep = self.endpoint(protocol)
        return f"tcp://{ep[0]}:{ep[1]}" if ep else None


def _valves(_: dict[str, Any]) -> dict[str, Any]:
    names = [("A", "sample inlet", 1, 0), ("B", "pipette air in", 2, 0),
             ("C", "pipette air out", 3, 0), ("D", "getter", 2, 1),
             ("E", "to spectrometer", 3, 1), ("F", "roughing pump", 1, 1)]
    return {
        "node": "valve-controller",
        "devices": [
            {"kind": "valve_bank", "name": "valves", "backend": {"kind": "sim", "delay": 0.05},
             "valves": [{"name": n, "address": i, "description": d, "layout": {"x": x, "y": y}}
                        for i, (n, d, x, y) in enumerate(names)]},
            {"kind": "gauge_controller", "name": "gauges", "gauges": ["IG", "CG1"],
             "backend": {"kind": "sim"}, "poll_period": 1.0},
        ],
        "services": [
            {"kind": "pychron_command_server", "name": "command-server", "port": 0,
             "udp": True},
            _notifier(),
        ],
    }


def _furnace(_: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": "furnace-controller",
        "devices": [
            {"kind": "furnace", "name": "furnace", "setpoint": 22,
             "pid": {"kp": 4.0, "ki": 0.04, "kd": 0.0},
             "watchdog": {"timeout": 600, "safe_setpoint": 0}, "time_scale": 200},
        ],
        "services": [
            {"kind": "pychron_command_server", "name": "command-server", "port": 0},
            _notifier(),
        ],
    }


def _spectrometer(_: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": "spectrometer",
        "devices": [{"kind": "mass_spectrometer", "name": "argus",
                     "integration_time": 0.2, "magnet_dac": 5.0, "poll_period": 1}],
        "services": [{"kind": "qtegra_server", "name": "qtegra", "device": "argus",
                      "host": "127.0.0.1", "port": 0, "udp": False}, _notifier()],
    }


def _rotator(_: dict[str, Any]) -> dict[str, Any]:
    return {
        "node": "rotator",
        "devices": [{"kind": "hexrot_rotator_mock", "name": "rotator", "generation": "D",
                     "telemetry_hz": 50}],
        "services": [{"kind": "hexrot_mock_controller", "name": "rotator-controller",
                      "device": "rotator", "host": "127.0.0.1", "port": 0}, _notifier()],
    }


def _pymodaq_main(_: dict[str, Any]) -> dict[str, Any]:
    return {"node": "pymodaq-main",
            "services": [{"kind": "pymodaq_server", "name": "pymodaq-server",
                          "host": "127.0.0.1", "port": 0}]}


def _camera(done: dict[str, Any]) -> dict[str, Any]:
    host, port = done["pymodaq-main"].endpoint("tcp")
    return {"node": "pymodaq-camera",
            "devices": [{"kind": "camera", "name": "camera", "publish_period": 1}],
            "services": [{"kind": "pymodaq_client", "name": "camera-client", "device": "camera",
                          "server": f"{host}:{port}", "generation": "g3"}, _notifier()]}


def _recorder(done: dict[str, Any]) -> dict[str, Any]:
    urls = [c.url("zmq-pub") for c in done.values() if c.url("zmq-pub")]
    return {"node": "data-reduction",
            "services": [{"kind": "recorder", "name": "recorder", "connect": urls,
                          "path": "lab.sqlite"}]}


#: The demo's extraction line as the page draws it (the dashboard's schematic: it places the
#: valves itself, over the valve bank's own layout hints).
DEMO_LINE: dict[str, Any] = {
    "valves": {"A": [1, 0], "B": [2, 0], "C": [3, 0], "D": [2, 1], "E": [4, 0], "F": [3, 1]},
    "gauges": {"CG1": [1, -1], "IG": [4, -1]},
    "parts": {"furnace": [0, 0], "pipette": [2.5, -1], "getter": [2, 2], "pump": [3, 2],
              "spectrometer": [5, 0]},
    "pipes": [["furnace", "A", "B", "C", "E", "spectrometer"], ["B", "pipette", "C"],
              ["B", "D", "getter"], ["C", "F", "pump"], ["A", "CG1"], ["E", "IG"]],
}


def _web(done: dict[str, Any]) -> dict[str, Any]:
    subscribe = [c.url("zmq-pub") for c in done.values() if c.url("zmq-pub")]
    servers = []
    for key in ("valve-controller", "furnace-controller"):
        c = done.get(key)
        ep = c.endpoint("tcp") if c else None
        if ep:
            servers.append({"node": key, "url": f"{ep[0]}:{ep[1]}"})
    svc: dict[str, Any] = {"kind": "web_dashboard", "name": "web", "host": "127.0.0.1",
                           "port": 0, "title": "labbridge demo lab", "subscribe": subscribe,
                           "command_servers": servers,
                           "control": True,  # the demo is on loopback only
                           "schematic": {"valve-controller": DEMO_LINE},
                           "alarms": [{"topic": "valve-controller.gauges.IG",
                                       "above": 1e-6, "level": "warning"}]}
    rec = done.get("data-reduction")
    if rec is not None:
        svc["recorder"] = str(Path(rec.info["state_dir"]) / "lab.sqlite")
    return {"node": "dashboard", "services": [svc]}


COMPONENTS: list[Component] = [
    Component("valve-controller", "valve controller (Pychron command server + notifier)",
              ("valve_bank", "pychron_command_server", "notifier"), _valves),
    Component("furnace-controller", "furnace controller (furPi)",
              ("furnace", "pychron_command_server", "notifier"), _furnace),
    Component("spectrometer", "spectrometer (Qtegra RemoteControlServer)",
              ("mass_spectrometer", "qtegra_server"), _spectrometer),
    Component("rotator", "Moog-style rotator mock (generation D)",
              ("hexrot_rotator_mock", "hexrot_mock_controller"), _rotator),
    Component("pymodaq-main", "PyMoDAQ main computer (TCPServer)", ("pymodaq_server",),
              _pymodaq_main),
    Component("pymodaq-camera", "PyMoDAQ camera (GRABBER client)",
              ("camera", "pymodaq_client"), _camera, after=("pymodaq-main",)),
    # The recorder and the dashboard subscribe to the notifiers of the nodes ready before
    # them: their `after` names every node they are to hear (components start as soon as
    # their `after` are ready, not in waves).
    Component("data-reduction", "data reduction (recorder to SQLite)", ("recorder",),
              _recorder, after=("valve-controller", "furnace-controller", "spectrometer",
                                "rotator")),
    Component("dashboard", "web dashboard", ("web_dashboard",), _web,
              after=("valve-controller", "furnace-controller", "data-reduction",
                     "spectrometer", "rotator", "pymodaq-camera")),
]


class NodeNotReady(RuntimeError):
    """A node that started but did not become ready in time; ``stacks`` is what its Python
    threads were doing then (from its log), or "" when it could not tell."""

    def __init__(self, message: str, stacks: str) -> None:
        super().__init__(message)
        self.stacks = stacks


#: How long a stuck node gets to write its threads' stacks to its log (``serve``'s SIGUSR1).
STACKS_TIMEOUT = 3.0
_STACKS_END = "most recent call first"


async def _stacks(c: Component) -> str:
    """Ask a node that is not ready for its threads' stacks (``labbridge serve`` writes them
    to its log on SIGUSR1) and return them, so that a report says where it was stuck even
    when the lab's folder is gone (a test's private /tmp, say)."""
    log, proc = c.info.get("log"), c.proc
    if not log or proc is None or proc.returncode is not None or not hasattr(signal, "SIGUSR1"):
        return ""
    try:
        start = os.path.getsize(log)  # noqa: ASYNC240 - one stat of a local file
        proc.send_signal(signal.SIGUSR1)
    except (OSError, ProcessLookupError):
        return ""
    deadline = time.monotonic() + STACKS_TIMEOUT
    text, size = "", -1
    # The log is written by another process: look at it until the dump has stopped growing.
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        try:
            with open(log, "rb") as f:  # noqa: ASYNC230 - a local file, a few KiB
                f.seek(start)
                text = f.read(256 * 1024).decode("utf-8", "replace")
        except OSError:
            return ""
        if _STACKS_END in text and len(text) == size:
            break
        size = len(text)
    if _STACKS_END not in text:
        return ""
    starts = [i for i in (text.find("Thread 0x"), text.find("Current thread 0x")) if i >= 0]
    return text[min(starts):].rstrip() if starts else ""


def available(c: Component) -> bool:
    return all(k in DEVICE_KINDS or k in SERVICE_KINDS for k in c.needs)


class Lab:
    """The running demo lab: processes, their endpoints, and where their logs go."""

    def __init__(self, workdir: Path, log_level: str = "warning") -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.components: dict[str, Component] = {}
        self.left_out: list[Component] = []

    def _tmp(self) -> Path:
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        return tmp

    async def _start_one(self, c: Component) -> None:
        cfg = _with_web_login(_with_epics(c.build(self.components)), c.info)
        cfg = secure_demo_bus(cfg, self.workdir, self.components)  # Curve on the bus
        path = self.workdir / f"{c.key}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        ready = self.workdir / f"{c.key}.ready.json"
        c.info["state_dir"] = str(self.workdir / "state" / c.key)
        log = open(self.workdir / f"{c.key}.log", "wb")  # noqa: ASYNC230 - a local file, once
        c.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "labbridge", "--log-level", self.log_level, "serve",
            str(path), "--ready-file", str(ready), "--state-dir", c.info["state_dir"],
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            # Whatever a node puts in the temporary directory goes with the lab's folder.
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self._tmp())})
        c.info["log"] = str(self.workdir / f"{c.key}.log")
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        # The ready file is the readiness event of a child process (no other channel).
        while not ready.exists():
            if c.proc.returncode is not None:
                raise RuntimeError(f"{c.title} exited with code {c.proc.returncode}; see "
                                   f"{c.info['log']}")
            if time.monotonic() > deadline:
                raise NodeNotReady(f"{c.title} not ready within {READY_TIMEOUT:g} s; see "
                                   f"{c.info['log']}", await _stacks(c))
            await asyncio.sleep(0.02)
        c.info.update(json.loads(ready.read_text()))
        self.components[c.key] = c

    async def start(self, on_ready: Callable[[Component], None] | None = None) -> None:
        kinds.load_all()
        pending = []
        for c in COMPONENTS:
            if available(c):
                pending.append(c)
            else:
                missing = [k for k in c.needs if k not in DEVICE_KINDS and k not in SERVICE_KINDS]
                c.note = f"not available in this installation (missing: {', '.join(missing)})"
                self.left_out.append(c)
        keys = {c.key for c in pending}
        # Each component starts as soon as the ones it needs are ready (not in waves): a
        # node with an EPICS IOC takes about a second longer to start (EPICS base's own
        # iocInit waits 0.5 s), and nothing that does not need it should wait for it.
        done_keys: set[str] = set()
        order = list(pending)
        while order:
            free = [c for c in order if all(a in done_keys or a not in keys for a in c.after)]
            if not free:
                raise RuntimeError("demo components depend on each other in a cycle")
            for c in free:
                order.remove(c)
                done_keys.add(c.key)
        ready = {c.key: asyncio.Event() for c in pending}

        async def start_when_ready(c: Component) -> None:
            for a in c.after:
                if a in ready:
                    await ready[a].wait()
            await self._start_one(c)
            if on_ready:
                on_ready(c)
            ready[c.key].set()

        tasks = [asyncio.ensure_future(start_when_ready(c)) for c in pending]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def stop(self) -> None:
        procs = [c.proc for c in self.components.values() if c.proc is not None]
        for key in list(self.components):
            c = self.components[key]
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                async with asyncio.timeout(10):  # not wait_for: 3.11 can lose a cancellation
                    await p.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()
        # Also any process that was starting when we were interrupted.
        for c in COMPONENTS:
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
                await c.proc.wait()

    async def first_exit(self) -> Component:
        """Wait until a node of the running lab exits (it should not before :meth:`stop`);
        return it."""
        waits = {asyncio.ensure_future(c.proc.wait()): c for c in self.components.values()
                 if c.proc is not None}
        if not waits:
            await asyncio.Event().wait()  # nothing can die: wait for cancellation
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return waits[next(iter(done))]
        finally:
            for t in waits:
                t.cancel()

    def acquisition_config(self) -> dict[str, Any]:
        """The acquisition computer's node file: one remote_manager per remote node, as a
        user writes it (``lab.line``, ``lab.furnace``, ``lab.spectrometer`` come from it)."""
        valves = self.components["valve-controller"]
        host, port = valves.endpoint("tcp")  # type: ignore[misc]
        services: list[dict[str, Any]] = [
            {"kind": "remote_manager", "name": "extraction-line",
             "klass": "RemoteExtractionLineManager", "host": host, "port": port,
             "timeout": 2, "bus": valves.url("zmq-pub"), "monitor": {"update_period": 0.5}}]
        furnace = self.components.get("furnace-controller")
        if furnace is not None and furnace.endpoint("tcp"):
            host, port = furnace.endpoint("tcp")  # type: ignore[misc]
            services.append({"kind": "remote_manager", "name": "furnace",
                             "klass": "RemoteFurnaceManager", "host": host, "port": port,
                             "timeout": 5})
        spectrometer = self.components.get("spectrometer")
        if spectrometer is not None and spectrometer.endpoint("tcp"):
            host, port = spectrometer.endpoint("tcp")  # type: ignore[misc]
            services.append({"kind": "remote_manager", "name": "spectrometer",
                             "klass": "ArgusSpectrometer", "host": host, "port": port,
                             "transport": "TCP", "timeout": 5})
        return secure_demo_bus({"node": "acquisition", "services": services}, self.workdir,
                               self.components)

    def epics_info(self) -> dict[str, Any] | None:
        """Every demo IOC together: the prefix, client address lists and all PV names."""
        iocs = [d for c in self.components.values()
                for d in c.info.get("details", {}).values() if d.get("kind") == "epics_ioc"]
        if not iocs:
            return None
        return {"prefix": EPICS_PREFIX,
                "EPICS_CA_ADDR_LIST": " ".join(d["EPICS_CA_ADDR_LIST"] for d in iocs),
                "EPICS_PVA_ADDR_LIST": " ".join(d["EPICS_PVA_ADDR_LIST"] for d in iocs),
                "pvs": [pv for d in iocs for pv in d["pvs"]]}

    def ready_info(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "pid": os.getpid(),
            "nodes": {k: {"services": c.info.get("services", []), "log": c.info.get("log"),
                          "pid": c.proc.pid if c.proc else None}
                      for k, c in self.components.items()},
            "left_out": {c.key: c.note for c in self.left_out},
            "epics": self.epics_info(),
        }


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="labbridge-demo-"))


def last_log_line(c: Component) -> str:
    """The last non-empty line of a node's log ("" when there is none), for one-line
    reports."""
    log = c.info.get("log")
    if not log:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    return next((ln for ln in reversed(lines) if ln), "")
