"""The seed's initialization.xml against the node that names it, as a user meets it:
``labbridge check`` and ``labbridge serve`` on node files (issue 20 items 2, 3 and 8).

* RemoteHardwareServer (the legacy front) loads as the relay front, or as the command server
  when the node file says so, with one warning line naming what it did and how to migrate;
* each role of the seed's table is cross-checked: a plugin list of one role on a node of
  another is refused, naming both files and lines; a key plugin without its equivalent is a
  warning;
* ``check`` says, for every plugin, what labbridge runs for it or that it does not.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.node.seed import PLUGINS
from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO

SEED = REPO / "examples" / "lab" / "seed"

OLD_VALVE_XML = """<root>
<plugins>
<general>
<plugin enabled="true">ExtractionLine</plugin>
<plugin enabled="true">RemoteHardwareServer</plugin>
</general>
</plugins>
</root>
"""


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for the relay's Unix socket (paths are limited to 107
    bytes; pytest's tmp_path can be longer)."""
    d = Path(tempfile.mkdtemp(prefix="lbs", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _warnings(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("warning: ")]


def test_remote_hardware_server_loads_as_the_relay_front(tmp_path, sock_dir):
    (tmp_path / "old.xml").write_text(OLD_VALVE_XML)
    node = tmp_path / "old-valve.yaml"
    node.write_text(f"""node: old-valve
initialization: old.xml
devices:
  - kind: valve_bank
    name: valves
    persist: false
    valves: [{{name: A}}, {{name: B}}]
services:
  - {{kind: relay_processor, name: processor, path: {sock_dir}/hw}}
  - kind: relay_front_server
    name: front
    port: 0
    path: {sock_dir}/hw
""")
    r = run_cli("check", str(node))
    assert r.returncode == 0, r.stderr
    (warning,) = _warnings(r.stderr)
    assert warning == (
        f"warning: {tmp_path}/old.xml:5: RemoteHardwareServer (legacy, superseded by "
        f"RemoteCommandServer) loaded as the legacy relay front (relay_front_server 'front' at "
        f"{node}:10); to migrate, write RemoteCommandServer at {tmp_path}/old.xml:5 and serve "
        "a pychron_command_server instead (docs/seeds.md)")
    assert f"plugin {tmp_path}/old.xml:5: RemoteHardwareServer: provided by service " \
           f"relay_front_server 'front' ({node}:10)" in r.stdout
    # It serves: a legacy client reaches the valves through the relay.
    with serving(node, tmp_path / "run") as (_proc, info):
        r = run_cli("call", "--relay", f"127.0.0.1:{port_of(info)}", "Open", "A")
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    log = (tmp_path / "run" / "serve.log").read_text()
    assert "RemoteHardwareServer (legacy, superseded by RemoteCommandServer) loaded as the " \
           "legacy relay front" in log


def test_remote_hardware_server_as_the_command_server_when_the_node_file_says_so(tmp_path):
    (tmp_path / "old.xml").write_text(OLD_VALVE_XML)
    node = tmp_path / "migrating.yaml"
    node.write_text("""node: migrating
initialization: old.xml
remote_hardware_server: command_server
devices:
  - {kind: valve_bank, name: valves, persist: false, valves: [{name: A}]}
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
""")
    r = run_cli("check", str(node))
    assert r.returncode == 0, r.stderr
    (warning,) = _warnings(r.stderr)
    assert "loaded as the command server (pychron_command_server 'command-server' at " \
           f"{node}:7), as remote_hardware_server: command_server asks ({node}:3); to " \
           f"migrate, write RemoteCommandServer at {tmp_path}/old.xml:5 and drop " \
           "remote_hardware_server from the node file" in warning
    with serving(node, tmp_path / "run") as (_proc, info):
        r = run_cli("call", f"127.0.0.1:{port_of(info)}", "Open", "A")
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
    assert "loaded as the command server" in (tmp_path / "run" / "serve.log").read_text()


def test_remote_hardware_server_without_a_front_is_one_line_naming_both_files(tmp_path):
    (tmp_path / "old.xml").write_text(OLD_VALVE_XML)
    node = tmp_path / "no-front.yaml"
    node.write_text("""node: no-front
initialization: old.xml
devices:
  - {kind: valve_bank, name: valves, persist: false, valves: [{name: A}]}
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
""")
    for args in (("check", str(node)), ("serve", str(node), "--port", "0")):
        r = run_cli(*args)
        assert r.returncode == 1
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, r.stderr
        assert f"{node}:2: initialization: {tmp_path}/old.xml:5 enables RemoteHardwareServer " \
               "(the legacy relay front), but this node has no relay_front_server service" \
               in lines[0]
        assert "remote_hardware_server: command_server" in lines[0]
        assert "Traceback" not in r.stderr


def test_initialization_xml_alone_warns_about_the_legacy_plugin(tmp_path):
    xml = tmp_path / "old.xml"
    xml.write_text(OLD_VALVE_XML)
    r = run_cli("check", str(xml))
    assert r.returncode == 0
    (warning,) = _warnings(r.stderr)
    assert f"{xml}:5: RemoteHardwareServer is the legacy command front, superseded by " \
           f"RemoteCommandServer" in warning and "to migrate, write RemoteCommandServer" in warning


def _node(tmp_path: Path, xml: str, body: str) -> Path:
    shutil.copy(SEED / xml, tmp_path / xml)
    p = tmp_path / "node.yaml"
    p.write_text(f"node: n\ninitialization: {xml}\n{body}")
    return p


VALVE_NODE = """devices:
  - {kind: valve_bank, name: valves, persist: false, valves: [{name: A}]}
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
"""
FURNACE_NODE = """devices:
  - {kind: furnace, name: furnace}
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
"""
ACQUISITION_NODE = """services:
  - {kind: remote_manager, name: extraction-line, host: 127.0.0.1, port: 1061}
"""
REDUCTION_NODE = """services:
  - {kind: recorder, name: recorder, connect: [tcp://127.0.0.1:5555]}
"""


@pytest.mark.parametrize(("xml", "body", "said"), [
    # the issue's own example: a valve node with pyCrunch's (data reduction) plugin list
    ("pycrunch-initialization.xml", VALVE_NODE,
     "pycrunch-initialization.xml:3 describes a data-reduction workstation (DVC, GitHub, "
     "Database, Pipeline, DashboardClient), but this node is a valve controller: valve_bank "
     "'valves' ({node}:4) served by pychron_command_server 'command-server' ({node}:6); use a "
     "valve controller's plugin list: ExtractionLine, RemoteCommandServer, as "
     "examples/lab/seed/pyvalve-initialization.xml"),
    ("furpi-initialization.xml", VALVE_NODE,
     "furpi-initialization.xml:4 describes a furnace controller (Furnace, "
     "RemoteCommandServer), but this node is a valve controller"),
    ("pyvalve-initialization.xml", FURNACE_NODE,
     "pyvalve-initialization.xml:4 describes a valve controller (ExtractionLine, "
     "RemoteCommandServer), but this node is a furnace controller: furnace 'furnace' "
     "({node}:4) served by pychron_command_server"),
    ("pyexperiment-initialization.xml", REDUCTION_NODE,
     "pyexperiment-initialization.xml:3 describes an acquisition computer (DVC, GitHub, "
     "Database, Spectrometer, ExtractionLine, Experiment, Laser, DashboardServer), but this "
     "node is a data-reduction workstation: recorder 'recorder' ({node}:4)"),
    ("pycrunch-initialization.xml", ACQUISITION_NODE,
     "but this node is an acquisition computer: a valves link 'extraction-line' ({node}:4)"),
    ("pyvalve-initialization.xml", ACQUISITION_NODE,
     "pyvalve-initialization.xml:5 enables RemoteCommandServer, but this node has no "
     "pychron_command_server service"),
])
def test_roles_are_cross_checked_with_file_and_line(tmp_path, xml, body, said):
    node = _node(tmp_path, xml, body)
    r = run_cli("check", str(node))
    assert r.returncode == 1, r.stdout
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"error: {node}:2: initialization: {tmp_path}/"), line
    assert said.format(node=node) in line, line
    r = run_cli("serve", str(node), "--port", "0")  # serve refuses it the same way
    assert r.returncode == 1 and said.format(node=node) in r.stderr


@pytest.mark.parametrize(("xml", "body"), [
    ("pyvalve-initialization.xml", VALVE_NODE),
    ("furpi-initialization.xml", FURNACE_NODE),
    ("pycrunch-initialization.xml", REDUCTION_NODE),
])
def test_matching_roles_pass(tmp_path, xml, body):
    r = run_cli("check", str(_node(tmp_path, xml, body)))
    assert r.returncode == 0, r.stderr
    assert not _warnings(r.stderr), r.stderr


def test_a_key_plugin_without_its_equivalent_is_a_warning(tmp_path):
    node = _node(tmp_path, "pyexperiment-initialization.xml", ACQUISITION_NODE)
    r = run_cli("check", str(node))
    assert r.returncode == 0, r.stderr
    xml = tmp_path / "pyexperiment-initialization.xml"
    assert _warnings(r.stderr) == [
        f"warning: {xml}:9: Spectrometer is a key plugin of an acquisition computer, but "
        "nothing on this node stands for it: lab.spectrometer is not available to scripts; add "
        "a remote_manager with klass ArgusSpectrometer (Qtegra, port 1069) or a "
        "mass_spectrometer device and its qtegra_server",
        f"warning: {xml}:12: Laser is a key plugin of an acquisition computer, but nothing on "
        "this node stands for it: lab.laser is not available to scripts; add a remote_manager "
        "with klass RemoteLaserManager or a remote_manager with klass RemoteFurnaceManager (or "
        "device_file: the seed's furnace.yaml)"]


def test_check_says_what_labbridge_runs_for_each_plugin(lab_repo):
    """Item 8: the lab's own acquisition and data-reduction nodes, as `check` prints them."""
    r = run_cli("check", "examples/lab/acquisition.yaml", "examples/lab/data-reduction.yaml",
                cwd=lab_repo)
    assert r.returncode == 0, r.stderr
    xml = "examples/lab/seed/pyexperiment-initialization.xml"
    for line in (
        f"  plugin {xml}:3: DVC: not run by labbridge (data version control of analyses in git "
        "repositories); accepted and ignored",
        f"  plugin {xml}:4: GitHub: not run by labbridge (the GitHub connection of DVC); "
        "accepted and ignored",
        f"  plugin {xml}:8: Database: labbridge equivalent: a recorder service; none on this "
        "node",
        f"  plugin {xml}:9: Spectrometer: provided by spectrometer link 'spectrometer' "
        "(examples/lab/acquisition.yaml:37)",
        f"  plugin {xml}:10: ExtractionLine: provided by valves link 'extraction-line' "
        "(examples/lab/acquisition.yaml:26)",
        f"  plugin {xml}:11: Experiment: labbridge equivalent: labbridge run SCRIPT --lab "
        "examples/lab/acquisition.yaml (the scripting API: lab.line, lab.furnace, lab.laser, "
        "lab.spectrometer)",
        "  plugin examples/lab/seed/pycrunch-initialization.xml:8: Database: provided by "
        "service recorder 'recorder' (examples/lab/data-reduction.yaml:11)",
        "  plugin examples/lab/seed/pycrunch-initialization.xml:9: Pipeline: not run by "
        "labbridge (pyCrunch's data-reduction pipeline); accepted and ignored",
    ):
        assert line in r.stdout.splitlines(), (line, r.stdout)
    # No key plugin of the acquisition computer is missing in the lab's example.
    assert "key plugin" not in r.stderr


def test_docs_list_every_plugin_as_check_does():
    """docs/seeds.md has one row per plugin labbridge knows, saying the same."""
    text = (REPO / "docs" / "seeds.md").read_text()
    for name, info in PLUGINS.items():
        row = next((ln for ln in text.splitlines() if ln.startswith("| `")
                    and f"`{name}`" in ln.split("|")[1]), None)
        assert row is not None, f"docs/seeds.md has no row for plugin {name}"
        if info.provides is None:
            assert "not run" in row, row
        else:
            assert "not run" not in row, row


def test_the_seeds_table_names_tests_that_exist():
    """docs/seeds.md: every item of the table names at least one test, and every test it
    names exists (``tests/<file>.py::<function>``)."""
    import re

    text = (REPO / "docs" / "seeds.md").read_text()
    section = text.split("## Every item", 1)[1]
    rows = [ln for ln in section.splitlines()
            if ln.startswith("| ") and not ln.startswith("| Item ") and "---" not in ln]
    assert len(rows) >= 60, len(rows)
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(named) >= 80
    for path, name in named:
        source = (REPO / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{path}::{name} is not a test"
    for row in rows:
        assert re.search(r"`tests/[\w/]+\.py::\w+`", row.split("|")[-2]), \
            f"docs/seeds.md: this item names no test: {row}"
