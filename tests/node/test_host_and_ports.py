"""``--host`` on every example node file (issue 15 item 2) and what ``labbridge ports`` says
about a recorder (item 6)."""

from __future__ import annotations

import json

import pytest

from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from labbridge.node.seed import detect_kind
from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO

NODE_FILES = sorted(p for p in [*(REPO / "examples").glob("*.yaml"),
                                *(REPO / "examples" / "lab").glob("*.yaml")]
                    if detect_kind(p) == "node")


def test_there_are_node_files_to_check():
    names = {p.name for p in NODE_FILES}
    assert {"valve-controller.yaml", "dashboard-web.yaml", "rotator-mock.yaml",
            "acquisition.yaml", "data-reduction.yaml"} <= names


@pytest.mark.parametrize("path", NODE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_host_override_reads_every_node_file(path, tmp_path, lab_repo):
    if path.parent.name == "lab":  # the lab's files name keys: use the copy that has them
        path = lab_repo / path.relative_to(REPO)
    node = build_node(path, host="127.0.0.1", state_dir=tmp_path)
    for e in node.endpoints():
        if e.role == "listen" and e.host is not None:
            assert e.host == "127.0.0.1", e


def test_host_override_still_checks_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: n\nservices:\n  - kind: notifier\n    host: [1, 2]\n    port: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: services\[0\].host: expected a string"):
        build_node(bad, host="127.0.0.1", state_dir=tmp_path)


def test_host_override_leaves_the_hosts_a_node_connects_to(tmp_path):
    """--host replaces where the node listens, never where it connects: a generation D
    hexrot_controller's controller and a generation A mock's CSC (its ``host`` is the CSC it
    calls) keep theirs; a generation A hexrot_controller (the CSC side listens), a generation D
    mock and a notifier listen on the override."""
    f = tmp_path / "n.yaml"
    f.write_text("""node: n
devices:
  - {kind: hexrot_controller, name: rot, device: rotator, generation: D,
     host: 192.0.2.7, port: 5570}
  - {kind: hexrot_controller, name: csc_a, device: rotator, generation: A,
     host: 192.0.2.11, port: 0}
  - {kind: hexrot_rotator_mock, name: mock_a, generation: A}
  - {kind: hexrot_rotator_mock, name: mock_d, generation: D}
services:
  - {kind: hexrot_mock_controller, name: to-csc, device: mock_a, host: 192.0.2.8,
     port: 5000}
  - {kind: hexrot_mock_controller, name: served, device: mock_d, host: 192.0.2.9, port: 0}
  - {kind: notifier, name: bus, host: 192.0.2.10, port: 0}
""")
    node = build_node(f, host="127.0.0.2", state_dir=tmp_path / "s")
    rot = node.ctx.devices["rot"]
    assert (rot.host, rot.port) == ("192.0.2.7", 5570)  # type: ignore[attr-defined]
    assert node.ctx.devices["csc_a"].host == "127.0.0.2"  # type: ignore[attr-defined]
    eps = {(e.service, e.role, e.port): e.host for e in node.endpoints()}
    assert eps[("to-csc", "connect", 5000)] == "192.0.2.8"
    assert eps[("to-csc", "connect", 5001)] == "192.0.2.8"
    assert eps[("served", "listen", 0)] == "127.0.0.2"
    assert {h for (s, r, _), h in eps.items() if s == "bus" and r == "listen"} == {"127.0.0.2"}
    # the mock device the generation A service runs is the node's one, not a copy
    assert node.services[0].mock is node.ctx.devices["mock_a"]  # type: ignore[attr-defined]
    unchanged = build_node(f, state_dir=tmp_path / "s")
    assert {(e.service, e.role, e.port): e.host for e in unchanged.endpoints()}[
        ("served", "listen", 0)] == "192.0.2.9"


def test_serve_with_host_on_a_mock_whose_file_names_a_host(tmp_path):
    with serving(REPO / "examples" / "rotator-mock.yaml", tmp_path, "--host", "127.0.0.1") \
            as (_, info):
        assert port_of(info) > 0
        assert all(s.get("host") in (None, "127.0.0.1") for s in info["services"])


def test_ports_lists_each_endpoint_the_recorder_subscribes_to(lab_repo):
    r = run_cli("ports", str(lab_repo / "examples" / "lab" / "data-reduction.yaml"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    connects = lines[lines.index("  connects to:") + 1: lines.index("  writes:")]
    assert [ln.split()[:2] for ln in connects] == [
        ["zmq-sub", "192.168.1.50:5555"], ["zmq-sub", "192.168.1.51:5555"],
        ["zmq-sub", "192.168.1.10:5555"]]
    writes = lines[lines.index("  writes:") + 1:]
    assert len(writes) == 1 and writes[0].split()[0] == "sqlite"
    assert writes[0].split()[1].endswith("lab.sqlite")
    r = run_cli("ports", "--json", str(lab_repo / "examples" / "lab" / "data-reduction.yaml"))
    eps = json.loads(r.stdout)
    assert {(e["role"], e["protocol"], e.get("host"), e.get("port")) for e in eps} == {
        ("connect", "zmq-sub", "192.168.1.50", 5555), ("connect", "zmq-sub", "192.168.1.51", 5555),
        ("connect", "zmq-sub", "192.168.1.10", 5555), ("file", "sqlite", None, None)}


def test_ports_of_a_recorder_of_local_publishers():
    r = run_cli("ports", str(REPO / "examples" / "dashboard-web.yaml"))
    assert r.returncode == 0, r.stderr
    rec = [ln.split() for ln in r.stdout.splitlines() if " recorder " in ln]
    assert ["zmq-sub", "127.0.0.1:5555", "recorder"] == rec[0][:3]
    assert ["zmq-sub", "127.0.0.1:8100", "recorder"] == rec[1][:3]
    assert rec[2][0] == "sqlite"
