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
