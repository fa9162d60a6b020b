"""The command line as a user runs it: serve, call, monitor, SIGTERM."""

from __future__ import annotations

import signal
import time

from labbridge.protocol.pychron.crc import append_crc16
from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "valve-controller.yaml"


def test_serve_call_monitor_and_sigterm(tmp_path):
    with serving(EXAMPLE, tmp_path) as (proc, info):
        assert info["node"] == "valve-controller"
        port = port_of(info)
        assert port_of(info, "udp") == port  # UDP on the same port
        target = f"127.0.0.1:{port}"
        r = run_cli("call", target, "Open", "A")
        assert (r.returncode, r.stdout.strip()) == (0, "OK")
        r = run_cli("call", "--framing", "plain", target, "GetValveStates")
        assert r.stdout.strip() == append_crc16("A1,B0,C0,D0,E0,F0")
        r = run_cli("call", "--udp", target, "GetValveState", "A")
        assert r.stdout.strip() == "OK"
        r = run_cli("call", "--framing", "json", target, "Close", "A")
        assert r.stdout.strip() == "OK"
        r = run_cli("call", target, "GetValveState", "Z")
        assert r.returncode == 1
        assert r.stdout.strip() == "ERROR 005 : Z is not a registered valve name"
        r = run_cli("monitor", "--once", target)
        assert r.returncode == 0, r.stderr
        for name in "ABCDEF":
            assert f"│ {name} " in r.stdout
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
    # The state file was flushed on shutdown.
    state_files = list((tmp_path / "state").glob("*.json"))
    assert state_files, "no state file written"


def test_call_to_nothing_fails_cleanly():
    r = run_cli("call", "--timeout", "0.5", "127.0.0.1:9", "GetValveStates")
    assert r.returncode == 2
    assert "cannot connect" in r.stderr or "no reply" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: x\ndevices:\n  - kind: valve_bank\n    name: v\n    valves: 3\n")
    r = run_cli("serve", str(bad))
    assert r.returncode != 0
    assert "bad.yaml:5: devices[0].valves: expected a list" in r.stderr
    assert "Traceback" not in r.stderr


def test_port_in_use_fails_loudly_with_the_port(tmp_path):
    with serving(EXAMPLE, tmp_path / "first") as (_, info):
        port = port_of(info)
        r = run_cli("serve", str(EXAMPLE), "--port", str(port), "--state-dir",
                    str(tmp_path / "second"))
    assert r.returncode == 1
    assert f"TCP port {port} on 127.0.0.1 is already in use" in r.stderr
    assert "Traceback" not in r.stderr
