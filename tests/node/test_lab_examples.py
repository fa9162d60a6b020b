"""The lab's node files (examples/lab/) are safe templates: each passes ``labbridge check``
with no exposure warning once its keys are made as docs/deploy/README.md says, a checkout
without the keys gets one line naming the command that makes them, and the security sections
really restrict (roles from the file itself; and the valve controller's file, served, refuses
a state change from an address it does not list)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labbridge.access import Principal, Role
from labbridge.node.node import build_node
from labbridge.node.seed import detect_kind
from tests.cli_helpers import labbridge_cmd, run_cli
from tests.conftest import REPO

LAB_FILES = sorted(p.name for p in (REPO / "examples" / "lab").glob("*.yaml")
                   if detect_kind(p) == "node")


def test_the_lab_has_a_node_file_per_role():
    assert set(LAB_FILES) == {"acquisition.yaml", "dashboard.yaml", "data-reduction.yaml",
                              "furnace-controller.yaml", "valve-controller.yaml"}


def test_every_lab_node_file_checks_with_no_exposure_warning(lab_repo):
    for name in LAB_FILES:
        rel = f"examples/lab/{name}"
        r = run_cli("check", rel, cwd=lab_repo)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"ok: {rel}: "), r.stdout
        assert "warning" not in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    # ...although four of them listen on every interface (so a warning would be due if
    # their security sections gave nobody beyond loopback a role).
    exposed = set()
    for name in LAB_FILES:
        r = run_cli("ports", "--json", f"examples/lab/{name}", cwd=lab_repo)
        assert r.returncode == 0, r.stderr
        if any(e["role"] == "listen" and e.get("host") == "0.0.0.0" for e in json.loads(r.stdout)):
            exposed.add(name)
    assert exposed == {"acquisition.yaml", "dashboard.yaml", "furnace-controller.yaml",
                       "valve-controller.yaml"}


def test_the_same_files_without_a_security_section_would_warn(lab_repo, tmp_path):
    """The check above can fail: the valve controller's file with its security section
    removed gets the exposure warnings."""
    text = (lab_repo / "examples" / "lab" / "valve-controller.yaml").read_text()
    cut = re.sub(r"\nsecurity:\n(?:[ #].*\n|\n)*", "\n", text)
    assert "security:" not in cut and "curve_key" not in cut
    lab = tmp_path / "lab"
    shutil.copytree(lab_repo / "examples" / "lab", lab, symlinks=True)
    (lab / "open.yaml").write_text(cut)
    r = run_cli("check", str(lab / "open.yaml"))
    assert r.returncode == 0, r.stderr
    assert "command-server listens on 0.0.0.0:1061 (tcp) but the node has no security " \
           "section" in r.stderr


def test_a_checkout_without_keys_is_told_which_command_makes_them(tmp_path):
    shutil.copytree(REPO / "examples" / "lab", tmp_path / "examples" / "lab",
                    ignore=shutil.ignore_patterns("keys", ".labbridge-state"))
    expected = {
        "valve-controller.yaml": "security.curve.secret_key: examples/lab/keys/"
        "valve-controller.key_secret: no such file; make this computer's key pair with "
        "`labbridge keys curve valve-controller --dir examples/lab/keys`",
        "acquisition.yaml": "security.curve.secret_key: examples/lab/keys/"
        "acquisition.key_secret: no such file; make this computer's key pair with "
        "`labbridge keys curve acquisition --dir examples/lab/keys`",
    }
    for name, message in expected.items():
        r = run_cli("check", f"examples/lab/{name}", cwd=tmp_path)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: examples/lab/{name}:"), r.stderr
        assert lines[0].endswith(message), lines[0]
    # A client's public key that was not copied yet: whose it is and where it comes from.
    keys = tmp_path / "examples" / "lab" / "keys"
    r = run_cli("keys", "curve", "valve-controller", "--dir", str(keys))
    assert r.returncode == 0, r.stderr
    r = run_cli("check", "examples/lab/valve-controller.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().endswith(
        "security.identities.acquisition.curve_key: examples/lab/keys/acquisition.key: no such "
        "file; it is the public key of acquisition: copy acquisition.key from the computer "
        "that made it, or make the pair here with `labbridge keys curve acquisition --dir "
        "examples/lab/keys`"), r.stderr


def _role(policy, address: str, transport: str = "tcp") -> Role:
    return policy.role_of(Principal(address=address, transport=transport))


def test_roles_the_lab_files_give(lab_repo, tmp_path):
    lab = lab_repo / "examples" / "lab"
    valve = build_node(lab / "valve-controller.yaml", state_dir=tmp_path / "v").ctx.gate.policy
    assert _role(valve, "192.168.1.10") == Role.OPERATOR      # the acquisition computer
    assert _role(valve, "192.168.1.30") == Role.OPERATOR      # the dashboard host
    assert _role(valve, "192.168.1.77") == Role.OBSERVER      # anyone else in the lab
    assert _role(valve, "10.1.2.3") == Role.NOBODY            # a stranger: nothing at all
    assert _role(valve, "192.168.2.10") == Role.NOBODY        # the next subnet too
    assert _role(valve, "127.0.0.1") == Role.ADMIN
    assert _role(valve, "192.168.1.10", "udp") == Role.OPERATOR   # the one UDP writer
    assert _role(valve, "192.168.1.30", "udp") == Role.OBSERVER   # UDP is read-only for it
    # The bus: Curve, and each client's key is an observer; nobody else's is.
    assert valve.curve is not None
    names = sorted(i.name for i in valve.curve_keys().values())
    assert names == ["acquisition", "dashboard", "data-reduction"]
    assert all(i.role == Role.OBSERVER for i in valve.identities.values())

    furnace = build_node(lab / "furnace-controller.yaml",
                         state_dir=tmp_path / "f").ctx.gate.policy
    assert _role(furnace, "192.168.1.10") == Role.OPERATOR
    assert _role(furnace, "192.168.1.21") == Role.OBSERVER
    assert _role(furnace, "172.16.0.9") == Role.NOBODY
    assert _role(furnace, "192.168.1.10", "udp") == Role.OBSERVER  # no UDP writers beyond lo

    dash = build_node(lab / "dashboard.yaml", state_dir=tmp_path / "d").ctx.gate.policy
    assert _role(dash, "192.168.1.77", "web") == Role.OBSERVER   # the lab looks, no login
    assert _role(dash, "127.0.0.1", "web") == Role.OBSERVER      # the page caps loopback too
    assert _role(dash, "10.1.2.3", "web") == Role.NOBODY         # strangers: the login form
    assert dash.identities == {}                                  # logins are made, not shipped


# -- the valve controller's file, served --------------------------------------------------
# Linux routes all of 127.0.0.0/8 to loopback, so the lab's addresses are mapped onto
# loopback aliases, everything else in the file is as written (ports 0: tests never bind
# fixed ports on the shared loopback).
_MAP = {"192.168.1.10": "127.0.0.10", "192.168.1.30": "127.0.0.30",
        "192.168.1.0/24": "127.0.1.0/24"}
ACQUISITION, DASHBOARD, LAB_PC, STRANGER = "127.0.0.10", "127.0.0.30", "127.0.1.77", "127.0.0.99"


async def _ask(port: int, data: bytes, source: str) -> bytes:
    """One plain Pychron request on a new connection from ``source``; the reply to EOF."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _ask_udp(port: int, data: bytes, source: str) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, d: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(d)

    tr, _ = await loop.create_datagram_endpoint(P, local_addr=(source, 0),
                                                remote_addr=("127.0.0.1", port))
    try:
        tr.sendto(data)
        return await asyncio.wait_for(got, 5)
    finally:
        tr.close()


def _mapped_copy(lab: Path, dest: Path) -> Path:
    text = (lab / "valve-controller.yaml").read_text()
    for real, alias in _MAP.items():
        assert real in text
        text = text.replace(real, alias)
    text = re.sub(r"\bport: \d+", "port: 0", text).replace("host: 0.0.0.0", "host: 127.0.0.1")
    dest.mkdir()
    for name in ("keys", "seed", "dashboard-values.yaml"):
        (dest / name).symlink_to(lab / name)
    (dest / "valve-controller.yaml").write_text(text)
    return dest / "valve-controller.yaml"


async def test_the_valve_controller_file_refuses_unlisted_addresses(lab_repo, tmp_path):
    path = _mapped_copy(lab_repo / "examples" / "lab", tmp_path / "lab")
    node = build_node(path, host="127.0.0.1", state_dir=tmp_path / "state")
    await node.start()
    try:
        port = next(e.port for e in node.endpoints()
                    if e.service == "command-server" and e.protocol == "tcp")
        udp = next(e.port for e in node.endpoints()
                   if e.service == "command-server" and e.protocol == "udp")
        valves = node.ctx.devices["valves"]
        # A machine the file does not list may do nothing, not even read.
        assert await _ask(port, b"Open A\r", STRANGER) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.99")
        assert await _ask(port, b"GetValveState A\r", STRANGER) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.99")
        # Another computer of the lab reads, and may not actuate.
        assert await _ask(port, b"GetValveState A\r", LAB_PC) == b"False"
        reply = await _ask(port, b"Open A\r", LAB_PC)
        assert reply.startswith(b"ERROR 012 : Access restricted to the operator role (Open)")
        assert not valves.is_open("A")
        # The dashboard host actuates over TCP, but not over UDP (not a udp_writer).
        assert (await _ask_udp(udp, b"Open B", DASHBOARD)).startswith(b"ERROR")
        assert not valves.is_open("B")
        # The acquisition computer, a real Pychron client (plain, no credentials), actuates;
        # locks are for this machine only.
        assert await _ask(port, b"Open A\r", ACQUISITION) == b"OK"
        assert valves.is_open("A")
        assert (await _ask(port, b"Lock C\r", ACQUISITION)).startswith(b"ERROR 012")
        assert not valves.is_locked("C")
        assert await _ask(port, b"Lock C\r", "127.0.0.1") == b"OK"
    finally:
        await node.stop()


# -- the systemd unit ------------------------------------------------------------------------
UNIT = REPO / "examples" / "lab" / "labbridge.service"


def test_the_documented_unit_is_the_example_file():
    doc = (REPO / "docs" / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```ini\n(.*?)```", doc, re.S)
    assert blocks == [UNIT.read_text()]


def _exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze (systemd) is not installed")
def test_the_unit_file_verifies(tmp_path):
    """systemd's own checker accepts the unit (with ExecStart pointing at this install's
    labbridge: the checker wants the program to exist)."""
    exe = Path(sys.executable).parent / "labbridge"
    assert exe.exists()
    unit = tmp_path / "labbridge.service"
    unit.write_text(UNIT.read_text().replace("/opt/labbridge/bin/labbridge", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "labbridge.service" not in r.stderr, r.stderr  # no warning about our unit


def test_the_units_exec_start_serves_and_stops_on_sigterm(lab_repo, tmp_path):
    """The unit's ExecStart line, run as systemd would (the paths in /etc, /var/lib and /run
    replaced by temporary ones; the valve controller's file on loopback with free ports):
    the ready file appears, and SIGTERM (KillSignal) stops it with status 0."""
    node = _mapped_copy(lab_repo / "examples" / "lab", tmp_path / "etc")
    ready = tmp_path / "run" / "ready.json"
    ready.parent.mkdir()
    where = {"/etc/labbridge/node.yaml": str(node), "/var/lib/labbridge": str(tmp_path / "state"),
             "/run/labbridge/ready.json": str(ready)}
    argv = _exec_start()
    assert argv[0] == "/opt/labbridge/bin/labbridge"
    assert set(where) <= set(argv)
    args = [where.get(a, a) for a in argv[1:]]
    log = open(tmp_path / "node.log", "w", encoding="utf-8")
    proc = subprocess.Popen(labbridge_cmd(*args), cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():  # the ready file is the only readiness signal of a process
            assert proc.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, (tmp_path / "node.log").read_text()  # TimeoutStopSec
        assert not ready.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
