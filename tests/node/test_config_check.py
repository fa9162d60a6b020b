"""`labbridge check`: every example passes; every broken fixture names file, line and field;
the seed's own files load as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from labbridge.node.seed import load_device_file, load_initialization, load_server_file
from tests.cli_helpers import run_cli
from tests.conftest import REPO

FIX = Path(__file__).parent / "fixtures"
LAB = REPO / "examples" / "lab"


def test_every_example_passes_check(lab_repo):
    lab = lab_repo / "examples" / "lab"  # the lab's files need their keys made first
    files = sorted(str(p) for p in [*lab.glob("*.yaml"), *(lab / "seed").glob("*"),
                                    *(REPO / "examples").glob("*.yaml")])
    assert len([f for f in files if "/lab/" in f]) >= len(list(LAB.glob("*.yaml")))
    r = run_cli("check", *files)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok: ") == len(files)


@pytest.mark.parametrize(("fixture", "where", "message"), [
    ("wrong_type.yaml", "wrong_type.yaml:6: devices[0].valves[0].settling_time",
     "expected a number, got 'soon'"),
    ("missing_field.yaml", "missing_field.yaml:3: devices[0].name", "required field is missing"),
    ("unknown_plugin.xml", "unknown_plugin.xml:5: general/plugin[RemoteCommandServr]",
     "unknown plugin 'RemoteCommandServr'"),
    ("duplicate_port.yaml", "duplicate_port.yaml:12: services[1].port",
     "TCP port 1061 is already used by service 'commands'"),
    ("unreachable_host.yaml", "unreachable_host.yaml:3: host",
     "'192.168.1.500' is not a valid IPv4 address"),
    ("unknown_klass.yaml", "unknown_klass.yaml:3: General.klass",
     "unknown klass 'PychronGPActuatr'"),
])
def test_broken_fixture_names_file_line_field(fixture, where, message):
    r = run_cli("check", str(FIX / fixture))
    assert r.returncode == 1
    assert where in r.stderr and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_seed_files_load_as_written():
    roles = {f: load_initialization(LAB / "seed" / f).role() for f in (
        "pyexperiment-initialization.xml", "pyvalve-initialization.xml",
        "furpi-initialization.xml", "pycrunch-initialization.xml")}
    assert roles == {"pyexperiment-initialization.xml": "acquisition",
                     "pyvalve-initialization.xml": "valve-controller",
                     "furpi-initialization.xml": "furnace-controller",
                     "pycrunch-initialization.xml": "data-reduction"}
    el = load_device_file(LAB / "seed" / "extraction_line.yaml")
    assert (el.klass, el.role, el.host, el.port, el.timeout) == (
        "RemoteExtractionLineManager", "valves", "192.168.1.50", 1061, 2.0)
    fu = load_device_file(LAB / "seed" / "furnace.yaml")
    assert (fu.klass, fu.role, fu.host, fu.port, fu.timeout) == (
        "RemoteFurnaceManager", "furnace", "192.168.1.51", 1061, 5.0)
    srv = load_server_file(LAB / "seed" / "remote_command_server.yaml")
    assert (srv.host, srv.port) == ("0.0.0.0", 1061)


def test_real_device_file_shape(tmp_path):
    p = tmp_path / "switch_controller.yaml"
    p.write_text("General:\n  name: switch_controller\n  klass: PychronGPActuator\n"
                 "Communications:\n  type: ethernet\n  host: 192.168.1.50\n  port: 8000\n"
                 "  kind: UDP\n  timeout: 1.0\n")
    link = load_device_file(p)
    assert (link.role, link.port, link.kind, link.shape) == ("valves", 8000, "UDP", "real")


def test_plugin_list_and_services_must_agree(tmp_path):
    (tmp_path / "init.xml").write_text(
        (LAB / "seed" / "pyvalve-initialization.xml").read_text())
    node = tmp_path / "node.yaml"
    node.write_text("node: v\ninitialization: init.xml\ndevices:\n  - kind: flag\n"
                    "    name: AFlag\n")
    with pytest.raises(ConfigError) as info:
        build_node(node)
    assert "enables RemoteCommandServer" in str(info.value)
    assert info.value.line == 2 and info.value.field == "initialization"


def test_ports_lists_listen_and_connect(lab_repo):
    lab = lab_repo / "examples" / "lab"
    r = run_cli("ports", str(lab / "valve-controller.yaml"))
    assert r.returncode == 0
    assert "TCP      0.0.0.0:1061" in r.stdout and "UDP      0.0.0.0:1061" in r.stdout
    # Bus services list their configured ports before they bind (REP is PUB + 1).
    for line in ("zmq-pub  0.0.0.0:5555", "zmq-rep  0.0.0.0:5556",
                 "zmq-pub  0.0.0.0:8100", "zmq-rep  0.0.0.0:8101"):
        assert line in r.stdout, r.stdout
    r = run_cli("ports", str(lab / "acquisition.yaml"))
    assert "connects to:" in r.stdout and "192.168.1.50:1061" in r.stdout


def test_notifier_rep_port_clash_is_a_config_error(tmp_path):
    node = tmp_path / "clash.yaml"
    node.write_text("node: clash\n"
                    "devices:\n"
                    "  - {kind: valve_bank, name: valves, valves: [{name: A}]}\n"
                    "services:\n"
                    "  - {kind: notifier, name: bus, port: 7100}\n"
                    "  - {kind: pychron_command_server, name: cmd, port: 7101}\n")
    with pytest.raises(ConfigError) as info:
        build_node(node)
    assert "TCP port 7101 is already used by service 'bus'" in str(info.value)
    assert info.value.line == 6 and info.value.field == "services[1].port"


async def test_ready_file_exists_only_while_the_node_serves(tmp_path):
    import asyncio
    import json

    from labbridge.node.node import run_node

    cfg = tmp_path / "node.yaml"
    cfg.write_text("node: readiness\n"
                   "devices:\n"
                   "  - {kind: valve_bank, name: valves, valves: [{name: A}]}\n"
                   "services:\n"
                   "  - {kind: pychron_command_server, name: cmd, host: 127.0.0.1, port: 0}\n")
    node = build_node(cfg, state_dir=tmp_path / "state")
    ready = tmp_path / "ready.json"
    ready.write_text('{"node": "an earlier run"}')
    seen_stale: list[bool] = []
    written = asyncio.Event()
    write = node.write_ready_file

    def spy(path):
        seen_stale.append(ready.exists())
        write(path)
        written.set()

    node.write_ready_file = spy
    stop = asyncio.Event()
    task = asyncio.create_task(run_node(node, ready_file=ready, stop=stop))
    await asyncio.wait_for(written.wait(), 10)
    assert seen_stale == [False]  # the earlier run's file was gone before this one's
    info = json.loads(ready.read_text())
    assert info["node"] == "readiness" and info["services"][0]["port"] > 0
    stop.set()
    await asyncio.wait_for(task, 10)
    assert not ready.exists()


def test_same_port_on_two_specific_addresses_is_allowed_but_not_with_a_wildcard(tmp_path):
    def node(first_host: str, second_host: str):
        p = tmp_path / f"n-{first_host}-{second_host}.yaml"
        p.write_text("node: hosts\n"
                     "devices:\n"
                     "  - {kind: valve_bank, name: valves, valves: [{name: A}]}\n"
                     "services:\n"
                     f"  - {{kind: pychron_command_server, name: a, host: {first_host}, "
                     "port: 7200}\n"
                     f"  - {{kind: pychron_command_server, name: b, host: {second_host}, "
                     "port: 7200}\n")
        return p

    built = build_node(node("127.0.0.1", "127.0.0.2"))  # two addresses of this machine
    assert sorted(e.host for e in built.endpoints()) == ["127.0.0.1", "127.0.0.2"]
    for hosts in (("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "0.0.0.0"), ("127.0.0.1", "127.0.0.1")):
        with pytest.raises(ConfigError, match="TCP port 7200 is already used by service 'a'"):
            build_node(node(*hosts))
