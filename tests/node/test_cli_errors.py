"""Every CLI error a user can reach by a typo, a wrong port, a dead node, a port clash or a
missing file: ONE line naming the cause and what to do, a non-zero exit code, no traceback.

Log lines (``HH:MM:SS.mmm level logger: ...``) may come before it; they are the node's log, not
the error report, and are not counted.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO
from tests.netns import private_network

EXAMPLES = REPO / "examples"
_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (debug|info|warning|error)\s")


def one_line_error(r: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Assert ``r`` failed with ``code`` and exactly one non-log line on stderr holding every
    fragment; return that line."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
    assert len(lines) == 1, f"expected one error line, got:\n{r.stderr}"
    assert r.returncode == code, (r.returncode, r.stderr)
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def free_port() -> int:
    """A port nothing listens on (bound then released; nobody else binds port 0 picks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- typos ----------------------------------------------------------------------------------
def test_unknown_command_suggests_the_closest():
    one_line_error(run_cli("serv", "x.yaml"), 2, "no such command 'serv'",
                   "did you mean 'serve'?", "labbridge --help")


def test_unknown_command_without_a_close_match_lists_the_commands():
    one_line_error(run_cli("xyzzy"), 2, "no such command 'xyzzy'", "the commands are: call,")


def test_unknown_option_names_the_option_and_the_help():
    one_line_error(run_cli("serve", "--hots", "127.0.0.1", "x.yaml"), 2,
                   "No such option '--hots'", "--host", "labbridge serve --help")


def test_missing_argument():
    one_line_error(run_cli("serve"), 2, "Missing argument 'CONFIG'", "labbridge serve --help")


def test_open_without_a_valve_is_refused_before_sending():
    # Nothing listens on this port: the check happens before any connection.
    one_line_error(run_cli("call", f"127.0.0.1:{free_port()}", "Open"), 2,
                   "Open needs a valve name", "nothing was sent")


@pytest.mark.parametrize(("target", "message"), [
    ("localhost", "expected HOST:PORT, e.g. 127.0.0.1:1061"),
    ("127.0.0.1:99999", "the port must be 1 to 65535"),
    ("127.0.0.1:abc", "the port must be a number"),
])
def test_malformed_target(target, message):
    one_line_error(run_cli("call", target, "GetValveStates"), 2, message, "'TARGET'")


# -- files ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    one_line_error(run_cli("serve", str(tmp_path / "nope.yaml")), 1, "nope.yaml: no such file",
                   "check the path")


def test_a_directory_is_not_a_node_file(tmp_path):
    one_line_error(run_cli("ports", str(tmp_path)), 1, "is a directory", "give a node file")


@pytest.mark.parametrize(("path", "what", "todo"), [
    ("examples/dashboard.yaml", "is a dashboard values file", "dashboard_server service"),
    ("examples/lab/seed/extraction_line.yaml", "is a device file", "remote_manager service"),
    ("examples/lab/seed/pyvalve-initialization.xml", "is an initialization.xml",
     "initialization: pyvalve-initialization.xml"),
    ("examples/lab/seed/remote_command_server.yaml", "is a command-server file",
     "pychron_command_server"),
])
def test_a_file_that_is_not_a_node_says_what_it_is(path, what, todo):
    for command in ("serve", "ports"):
        one_line_error(run_cli(command, path), 1, what, "not a node file", todo)


def test_a_bad_field_names_file_line_and_field(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("node: x\ndevices:\n  - {kind: flag, name: F}\nservices:\n"
                   "  - kind: pychron_command_server\n    prot: 1061\n")
    for command in ("serve", "ports", "check"):
        one_line_error(run_cli(command, str(bad)), 1,
                       "typo.yaml:6: services[0].prot: unknown field 'prot' (did you mean "
                       "'port'?)")


def test_a_node_without_node_name_is_still_reported_as_a_node(tmp_path):
    bad = tmp_path / "anon.yaml"
    bad.write_text("devices:\n  - {kind: flag, name: F}\n")
    one_line_error(run_cli("serve", str(bad)), 1, "anon.yaml:1: node: required field is missing")


def test_a_lab_file_that_is_missing(tmp_path):
    script = EXAMPLES / "scripts" / "open-close.py"
    one_line_error(run_cli("run", str(script), "--lab", str(tmp_path / "acq.yaml")), 1,
                   "acq.yaml: no such file")


# -- wrong port, dead node --------------------------------------------------------------------
def test_call_to_a_port_nobody_listens_on():
    port = free_port()
    one_line_error(run_cli("call", "--timeout", "2", f"127.0.0.1:{port}", "GetValveStates"), 2,
                   f"cannot connect to 127.0.0.1:{port}", "is the node running",
                   "labbridge ports FILE")


def test_monitor_once_of_a_dead_node():
    port = free_port()
    one_line_error(run_cli("monitor", "--once", "--timeout", "0.5", f"127.0.0.1:{port}"), 2,
                   f"no answer from 127.0.0.1:{port}", "is the node running")


def test_run_against_a_lab_whose_node_is_down(tmp_path):
    lab = tmp_path / "acq.yaml"
    lab.write_text(f"node: acq\nservices:\n  - kind: remote_manager\n    host: 127.0.0.1\n"
                   f"    port: {free_port()}\n    timeout: 0.5\n")
    r = run_cli("--log-level", "error", "run", str(EXAMPLES / "scripts" / "open-close.py"),
                "--lab", str(lab), "--no-progress", "--ready-timeout", "2")
    one_line_error(r, 1, "no answer within 2 s from remote_manager-0 at 127.0.0.1:",
                   "start that node first (labbridge serve FILE)", "acq.yaml")


def test_braced_call_to_a_plain_text_server_says_which_framing(tmp_path):
    with serving(EXAMPLES / "spectrometer.yaml", tmp_path) as (_, info):
        target = f"127.0.0.1:{port_of(info)}"
        for command in (["GetData"], ["SetMagnetDAC", "5.0"]):
            line = one_line_error(run_cli("call", target, *command), 2,
                                  "did not answer in labbridge's braced frames",
                                  "--framing plain (or --udp)")
            assert "malformed" not in line
        # (not GetData: empty, a bare close, until the first integration period ends)
        r = run_cli("call", "--framing", "plain", target, "GetIntegrationTime")
        assert (r.returncode, r.stdout.strip()) == (0, "1.048576"), r.stderr


# -- clashes ----------------------------------------------------------------------------------
def test_tcp_port_clash(tmp_path):
    with serving(EXAMPLES / "valve-controller.yaml", tmp_path / "first") as (_, info):
        port = port_of(info)
        r = run_cli("serve", str(EXAMPLES / "valve-controller.yaml"), "--port", str(port),
                    "--state-dir", str(tmp_path / "second"))
    one_line_error(r, 1, "cannot start node valve-controller: service command-server: "
                   f"TCP port {port} on 127.0.0.1 is already in use",
                   "another program (or another labbridge node) holds that port")


def test_zmq_port_clash(tmp_path):
    with socket.socket() as holder:  # any listener on the port makes the ZeroMQ bind fail
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        node = tmp_path / "bus.yaml"
        node.write_text(f"node: busnode\nservices:\n  - kind: notifier\n    name: notifier\n"
                        f"    host: 127.0.0.1\n    port: {port}\n    rep_port: 0\n")
        r = run_cli("serve", str(node), "--state-dir", str(tmp_path / "state"))
    one_line_error(r, 1, "cannot start node busnode: service notifier:", f":{port}",
                   "is using port", "stop it, or choose another port")
    assert "holds that port" not in r.stderr  # the bus's own remedy, not a second one


def test_zmq_port_clash_in_labbridge_run(tmp_path):
    """The README's clash: an acquisition node whose notifier wants a port already taken."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        lab = tmp_path / "acq.yaml"
        lab.write_text(f"node: acq\nservices:\n  - kind: remote_manager\n    host: 127.0.0.1\n"
                       f"    port: {free_port()}\n  - kind: notifier\n    host: 127.0.0.1\n"
                       f"    port: {port}\n    rep_port: 0\n")
        r = run_cli("run", str(EXAMPLES / "scripts" / "open-close.py"), "--lab", str(lab),
                    "--no-progress")
    one_line_error(r, 1, "cannot start node acq:", "stop it, or choose another port")


def test_an_address_this_machine_does_not_have(tmp_path):
    r = run_cli("serve", str(EXAMPLES / "valve-controller.yaml"), "--host", "192.0.2.1",
                "--port", "0", "--state-dir", str(tmp_path / "state"))
    one_line_error(r, 1, "cannot start node valve-controller:", "192.0.2.1",
                   "not one of this machine's")


def test_dashboard_port_clash(tmp_path):
    """`labbridge dashboard` (web family) starts its node itself: a clash is still one line.
    The example uses fixed ports (1061, 5555, 8100, 8080): run it in a private network."""
    script = (
        "import socket, subprocess, sys\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 8080)); s.listen()\n"
        "r = subprocess.run([sys.executable, '-m', 'labbridge', 'dashboard', sys.argv[1],\n"
        "                    '--state-dir', sys.argv[2]], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr); sys.exit(r.returncode)\n")
    r = subprocess.run(private_network([sys.executable, "-c", script,
                                        str(EXAMPLES / "dashboard-web.yaml"),
                                        str(tmp_path / "state")]),
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    one_line_error(r, 1, "cannot start node lab-in-a-box: service web:", "8080",
                   "holds that port")


def test_a_port_clash_in_any_command_is_one_line():
    """A command that binds a port itself (rotator --generation A listens on P and P+1) and
    does not catch the clash: still one line with the hint, not an 'internal error'."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_cli("rotator", f"127.0.0.1:{port}", "--generation", "A", "--timeout", "2",
                    "status")
    assert "internal error" not in r.stderr
    one_line_error(r, 1, f"{port}", "already in use", "holds that port")
