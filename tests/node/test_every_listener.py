"""Every socket a node listens on is known to ``labbridge ports`` and to ``labbridge check``'s
exposure warnings, whichever part opens it (a service, or a device such as the generation A
``hexrot_controller``, which listens for its controller).

The test walks the kinds registry: every device and service kind must be in one of the node
files below (the examples, plus a few written here), so a new kind cannot be forgotten. Each
node is started in this process on 127.0.0.1 with every port set to 0, and the TCP sockets it
listens on (read from /proc, whoever opened them) must be exactly the ``listen`` endpoints
``Node.endpoints()`` reports, which is what ``labbridge ports`` prints; UDP sockets the node
declares must be open. Then the same file, served on a non-loopback address with no security
section, must give one exposure warning per declared listening endpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from labbridge.node import kinds
from labbridge.node.node import build_node
from labbridge.node.registry import DEVICE_KINDS, SERVICE_KINDS
from labbridge.node.seed import detect_kind
from tests.conftest import REPO

#: Example node files this test cannot start as they are: they need key files made first
#: (the kinds they use are in other files) or connect to a fixed port of another node.
_NEEDS_MORE = {"examples/bus/valve-controller-curve.yaml", "examples/hexrot-tls/rotator-csc.yaml",
               "examples/hexrot-tls/rotator-mock.yaml", "examples/pymodaq-tls/camera.yaml",
               "examples/pymodaq-tls/main.yaml", "examples/tls/valve-controller.yaml",
               "examples/rotator-mock-a.yaml"}
EXAMPLES = sorted(p for p in [*(REPO / "examples").glob("*.yaml"),
                              *(REPO / "examples").glob("*/*.yaml")]
                  if detect_kind(p) == "node" and str(p.relative_to(REPO)) not in _NEEDS_MORE)

#: Nodes for the kinds (and generations) no runnable example has.
EXTRA: dict[str, dict[str, Any]] = {
    "hexrot-gen-a-csc": {  # the CSC side of generation A listens on P and P+1
        "node": "csc-a",
        "devices": [{"kind": "hexrot_controller", "name": "rot", "device": "rotator",
                     "generation": "A", "host": "127.0.0.1", "port": 0}],
    },
    "pymodaq-devices": {  # devices that open no socket of their own
        "node": "devices",
        "devices": [{"kind": "stage", "name": "stage"},
                    {"kind": "spectrometer", "name": "spectrum"}],
    },
    "hexrot-gen-a-mock": {  # a generation A mock connects (to a port nobody listens on)
        "node": "mock-a",
        "devices": [{"kind": "hexrot_rotator_mock", "name": "rotator", "generation": "A"},
                    {"kind": "hexrot_simple_mock", "name": "simple", "generation": "D"}],
        "services": [{"kind": "hexrot_mock_controller", "device": "rotator",
                      "host": "127.0.0.1", "port": 1},
                     {"kind": "hexrot_mock_controller", "device": "simple",
                      "host": "127.0.0.1", "port": 0}],
    },
}

#: The EPICS libraries open client sockets of their own (name search, beacons) on free UDP
#: ports; only the IOC's declared UDP ports are checked for a node with an ``epics_ioc``.
_OWN_UDP_CLIENTS = {"epics_ioc"}


def _zero_ports(x: Any) -> Any:
    """Every ``...port`` number of a node file set to 0 (tests never bind fixed ports)."""
    if isinstance(x, dict):
        return {k: 0 if k.endswith("port") and type(v) is int and v > 1 else _zero_ports(v)
                for k, v in x.items()}
    if isinstance(x, list):
        return [_zero_ports(v) for v in x]
    return x


def _kinds_of(cfg: dict[str, Any]) -> set[str]:
    return {part["kind"] for key in ("devices", "services") for part in cfg.get(key) or []}


def _configs() -> dict[str, tuple[Path, dict[str, Any]]]:
    out = {str(p.relative_to(REPO)): (p.parent, yaml.safe_load(p.read_text()))
           for p in EXAMPLES}
    out.update({name: (REPO / "examples", cfg) for name, cfg in EXTRA.items()})
    return out


CONFIGS = _configs()


def _write(where: Path, cfg: dict[str, Any], tmp_path: Path, lab_repo: Path) -> Path:
    """The node file next to the original (its relative paths still work), removed after;
    the lab's files go into the copy of examples/lab that has their keys (tests/node/conftest.py)."""
    if where == REPO / "examples" / "lab":
        where = lab_repo / "examples" / "lab"
    f = where / f".test-listeners-{os.getpid()}-{tmp_path.name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def own_listeners() -> set[tuple[str, int]]:
    """(tcp|udp, port) of every TCP socket listening and every UDP socket bound in this
    process, whichever library opened it (read from /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    out = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path(f"/proc/self/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            f = line.split()
            if f[9] not in inodes or (table.startswith("tcp") and f[3] != "0A"):  # LISTEN
                continue
            out.add((table.rstrip("6"), int(f[1].rsplit(":", 1)[1], 16)))
    return out


def test_every_kind_is_started_here():
    kinds.load_all()
    covered = set().union(*(_kinds_of(cfg) for _, cfg in CONFIGS.values()))
    missing = (set(DEVICE_KINDS) | set(SERVICE_KINDS)) - covered
    assert not missing, (f"kinds no node file of {__name__} starts: {sorted(missing)}; add "
                         "one to EXTRA so that ports and exposure warnings are checked for it")


def test_own_listeners_sees_a_socket():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ("tcp", port) in own_listeners()
    assert ("tcp", port) not in own_listeners()


@pytest.mark.parametrize("name", sorted(CONFIGS))
async def test_ports_know_every_listener(name, tmp_path, lab_repo):
    where, cfg = CONFIGS[name]
    f = _write(where, _zero_ports(cfg), tmp_path, lab_repo)
    try:
        node = build_node(f, host="127.0.0.1", state_dir=tmp_path / "state")
    finally:
        f.unlink()
    before = own_listeners()
    await node.start()
    try:
        opened = own_listeners() - before
        declared = {("udp" if e.protocol == "udp" else "tcp", e.port)
                    for e in node.endpoints() if e.role == "listen" and not e.path}
    finally:
        await node.stop()
    tcp = {s for s in opened if s[0] == "tcp"}
    assert tcp == {d for d in declared if d[0] == "tcp"}, (
        f"{name}: TCP sockets listening {sorted(tcp)}, declared by endpoints() "
        f"{sorted(d for d in declared if d[0] == 'tcp')}")
    udp = {s for s in opened if s[0] == "udp"}
    declared_udp = {d for d in declared if d[0] == "udp"}
    assert declared_udp <= udp, (name, sorted(declared_udp), sorted(udp))
    if not _kinds_of(cfg) & _OWN_UDP_CLIENTS:
        assert udp == declared_udp, (name, sorted(udp), sorted(declared_udp))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exposure_warns_for_every_listener(name, tmp_path, lab_repo):
    where, cfg = CONFIGS[name]
    cfg = {k: v for k, v in _zero_ports(cfg).items() if k != "security"}
    f = _write(where, cfg, tmp_path, lab_repo)
    try:
        node = build_node(f, host="0.0.0.0", state_dir=tmp_path / "state")
    finally:
        f.unlink()
    listening = [e for e in node.endpoints() if e.role == "listen" and not e.path]
    for e in listening:
        text = f"{e.service} listens on 0.0.0.0:{e.port} ({e.protocol})"
        assert any(text in w for w in node.warnings), (text, node.warnings)
    assert len([w for w in node.warnings if " listens on " in w]) == len(listening)


def test_check_and_ports_show_the_generation_a_csc_side(tmp_path, capsys):
    """The command line: ``labbridge check`` warns that the generation A CSC side listens
    beyond loopback, ``labbridge ports`` lists its two ports, and a service on its command
    port P+1 is a port clash."""
    from labbridge.cli import main
    from labbridge.node.config import ConfigError

    f = tmp_path / "csc.yaml"
    f.write_text("node: csc\ndevices:\n  - {kind: hexrot_controller, name: rot, "
                 "device: rotator, generation: A, host: 0.0.0.0, port: 7570}\n")
    assert main(["check", str(f)]) == 0
    err = capsys.readouterr().err
    assert "rot listens on 0.0.0.0:7570 (tcp)" in err and "rot listens on 0.0.0.0:7571" in err
    assert main(["ports", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in out if " rot " in f" {ln} "] == [
        ["TCP", "0.0.0.0:7570"], ["TCP", "0.0.0.0:7571"]]
    f.write_text(f.read_text() + "services:\n  - {kind: notifier, name: bus, host: 127.0.0.1, "
                 "port: 7571}\n")
    with pytest.raises(ConfigError, match="TCP port 7571 is already used by device 'rot'"):
        build_node(f, state_dir=tmp_path / "s")
