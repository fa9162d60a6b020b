"""The epics_ioc node-file section: errors name the field; a taken port stops the node."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml

from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from tests.conftest import REPO


def write(tmp_path, services):
    cfg = {"node": "n", "devices": [{"kind": "gauge_controller", "name": "gauges",
                                     "gauges": ["IG"]}], "services": services}
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_unknown_device_and_bad_prefix_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"devices.*no device named 'nope'"):
        build_node(write(tmp_path, [{"kind": "epics_ioc", "devices": ["nope"]}]))
    with pytest.raises(ConfigError, match="prefix"):
        build_node(write(tmp_path, [{"kind": "epics_ioc", "prefix": "has space"}]))
    with pytest.raises(ConfigError, match="gauge_alarms"):
        build_node(write(tmp_path, [{"kind": "epics_ioc",
                                     "gauge_alarms": {"gauges": {"IG": [1, 0.5]}}}]))


def test_default_listens_on_loopback_with_standard_ports(tmp_path) -> None:
    node = build_node(write(tmp_path, [{"kind": "epics_ioc", "name": "epics"}]))
    eps = {(e.protocol, e.port) for e in node.endpoints()}
    assert {("ca", 5064), ("udp", 5064), ("pva", 5075), ("udp", 5076)} <= eps
    assert {e.host for e in node.endpoints()} == {"127.0.0.1"}


def test_a_taken_ca_port_stops_the_node_with_one_line(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = write(tmp_path, [{"kind": "epics_ioc", "ca_port": port, "pva_port": 0,
                                "pva_udp_port": 0}])
        res = subprocess.run([sys.executable, "-m", "labbridge", "serve", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode != 0
    assert f"ca_port {port} on 127.0.0.1 is already in use" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("field", ["ca_port", "pva_udp_port"])
def test_a_taken_udp_port_stops_the_node_with_one_line(tmp_path, field) -> None:
    """A program holding the CA or PVA name-search UDP port without sharing it: EPICS's CA
    server would stop iocInit for ever (rsrv's cantProceed: the node hung, deaf to SIGTERM),
    its PVA server would silently not start while the node listed it. Now: one line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        ports = {"ca_port": 0, "pva_port": 0, "pva_udp_port": 0, field: port}
        cfg = write(tmp_path, [{"kind": "epics_ioc", **ports}])
        res = subprocess.run([sys.executable, "-m", "labbridge", "serve", str(cfg)],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and f"{field} {port} (UDP) on 127.0.0.1 is already in use" \
        in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_chosen_ports_are_held_until_iocinit(tmp_path) -> None:
    """Ports chosen for 0 stay bound (shareable the way EPICS binds them, by nobody else)
    from the choice until iocInit has bound them: a socket of another program that gets one
    of them meanwhile (an ephemeral port, another node's choice) made iocInit hang."""
    from labbridge.links.epics.ioc import EpicsIoc, IocSettings

    ioc = EpicsIoc.__new__(EpicsIoc)  # the port logic alone; no IOC is started
    ioc.settings = IocSettings(prefix="T", ca_port=0, pva_port=0, pva_udp_port=0)
    ioc._ports, ioc._held = {}, []
    ioc._choose_ports()
    try:
        wanted = [(ioc._ports["ca"], socket.SOCK_STREAM), (ioc._ports["ca"], socket.SOCK_DGRAM),
                  (ioc._ports["pva"], socket.SOCK_STREAM),
                  (ioc._ports["pva_udp"], socket.SOCK_DGRAM)]
        for port, kind in wanted:
            with socket.socket(socket.AF_INET, kind) as intruder, \
                    pytest.raises(OSError, match="in use"):
                intruder.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, kind) as epics_like:  # as EPICS binds
                epics_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if kind == socket.SOCK_DGRAM:
                    epics_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                epics_like.bind(("127.0.0.1", port))
                if kind == socket.SOCK_STREAM:
                    epics_like.listen()
    finally:
        ioc._release_ports()
    for port, kind in wanted:  # released: free again
        with socket.socket(socket.AF_INET, kind) as again:
            again.bind(("127.0.0.1", port))


@pytest.mark.parametrize("ca_port", [0, 5064])
def test_a_host_that_is_not_this_machines_is_said_so(tmp_path, ca_port) -> None:
    """A named port on an address of another machine was reported "already in use"."""
    cfg = write(tmp_path, [{"kind": "epics_ioc", "host": "192.0.2.1", "ca_port": ca_port,
                            "pva_port": 0, "pva_udp_port": 0}])
    res = subprocess.run([sys.executable, "-m", "labbridge", "serve", str(cfg)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "not one of this machine's" in lines[0], res.stderr
    assert "in use" not in lines[0] and "Traceback" not in res.stderr
