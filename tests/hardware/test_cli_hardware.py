"""The hardware examples as a user runs them: ``labbridge serve`` + ``labbridge call``."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.protocol.pychron.crc import append_crc16
from tests.cli_helpers import port_of, run_cli, serving
from tests.conftest import REPO

EXAMPLES = REPO / "examples"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lbc", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_furnace_example(tmp_path):
    with serving(EXAMPLES / "furnace-controller.yaml", tmp_path) as (proc, info):
        target = f"127.0.0.1:{port_of(info)}"
        r = run_cli("call", target, "SetSetpoint", "600")
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
        r = run_cli("call", "--framing", "json", target, "GetSetpoint")
        assert r.stdout.strip() == "600.0"
        r = run_cli("call", "--framing", "plain", target, "GetFurnaceSummary")
        summary = json.loads(r.stdout)
        assert summary["setpoint"] == 600.0 and {"response", "output"} <= set(summary)
        r = run_cli("call", "--udp", target, "GetPercentOutput")
        assert 0.0 <= float(r.stdout) <= 100.0
        r = run_cli("call", target, "Open", "A")
        assert r.stdout.strip() == "OK"
        r = run_cli("call", target, "GetValveStates")
        assert r.stdout.strip() == append_crc16("A1,B0,C0")
        r = run_cli("call", target, "SetSetpoint", "hot")
        assert r.returncode == 1 and r.stdout.startswith("ERROR 004")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_laser_example(tmp_path):
    with serving(EXAMPLES / "laser.yaml", tmp_path) as (_proc, info):
        target = f"127.0.0.1:{port_of(info)}"
        assert run_cli("call", target, "Enable").stdout.strip() == "OK"
        assert run_cli("call", target, "GoToHole", "12,False").stdout.strip() == "OK"
        r = run_cli("call", "--framing", "plain", target, "GetPosition")
        assert len(r.stdout.strip().split(",")) == 3
        r = run_cli("call", target, "GoToHole", "999,False")
        assert r.returncode == 1 and r.stdout.startswith("ERROR 104")


def test_spectrometer_example(tmp_path):
    with serving(EXAMPLES / "spectrometer.yaml", tmp_path) as (_proc, info):
        target = f"127.0.0.1:{port_of(info)}"
        r = run_cli("call", "--udp", target, "GetMagnetDAC")
        assert r.stdout.strip() == "5"
        r = run_cli("call", "--framing", "plain", target, "GetParameter", "Trap", "Current",
                    "Readback")
        assert r.stdout.strip() == "200"
        r = run_cli("call", "--udp", target, "Reset")
        assert (r.returncode, r.stdout.strip()) == (1, "Error: Invalid Command")
        r = run_cli("call", "--framing", "plain", target, "SetMagnetDAC", "4.5")
        assert r.stdout.strip() == "OK"


def _relay_files(sock_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The example split into its two real processes, on a private socket path."""
    path = sock_dir / "hw-extractionline"
    text = (EXAMPLES / "legacy-relay.yaml").read_text()
    whole = tmp_path / "relay.yaml"
    whole.write_text(text.replace("path: hardware-extractionline", f"path: {path}"))
    processor = tmp_path / "processor.yaml"
    processor.write_text(
        "node: hardware\n"
        "devices:\n"
        "  - {kind: valve_bank, name: valves, persist: false, backend: {kind: sim},\n"
        "     valves: [{name: A}, {name: B}, {name: C}]}\n"
        "services:\n"
        f"  - {{kind: relay_processor, name: processor, path: {path}}}\n")
    front = tmp_path / "front.yaml"
    front.write_text(
        "node: rhs\n"
        "services:\n"
        f"  - {{kind: relay_front_server, name: front, port: 1061, udp: true, path: {path},\n"
        "     process_type: System}\n")
    return whole, processor, front


def test_legacy_relay_example(tmp_path, sock_dir):
    whole, _p, _f = _relay_files(sock_dir, tmp_path)
    with serving(whole, tmp_path) as (_proc, info):
        target = f"127.0.0.1:{port_of(info)}"
        r = run_cli("call", "--relay", target, "Open", "A")
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r.stderr
        r = run_cli("call", "--framing", "plain", target, "Open", "B")
        assert r.stdout == "000AOK75b7\n" + "\n"  # the raw frame + "\n", then echo's newline
        r = run_cli("call", "--relay", "--udp", target, "GetValveStates")
        assert r.stdout.strip() == append_crc16("A1,B1,C0")
        r = run_cli("call", "--relay", target, "PychronReady")
        assert r.stdout.strip() == "OK"
        r = run_cli("call", "--relay", target, "GetValveState", "Z")
        assert (r.returncode, r.stdout.strip()) == (
            1, "ERROR 005 : Z is not a registered valve name")


def test_killing_the_processor_process_gives_error_011_then_recovers(tmp_path, sock_dir):
    _w, processor, front = _relay_files(sock_dir, tmp_path)
    for d in ("p", "p2", "f"):  # one ready file per run: a stale one would say "ready" early
        (tmp_path / d).mkdir()
    with serving(front, tmp_path / "f") as (_fproc, finfo):
        target = f"127.0.0.1:{port_of(finfo)}"
        with serving(processor, tmp_path / "p") as (pproc, _pinfo):
            r = run_cli("call", "--relay", target, "Open", "A")
            assert r.stdout.strip() == "OK", r.stderr
            pproc.send_signal(signal.SIGKILL)  # the hardware process dies hard
            pproc.wait(10)
        r = run_cli("call", "--relay", target, "GetValveState", "A")
        assert r.returncode == 1
        assert r.stdout.startswith("ERROR 011 : could not communicate with pychron through ")
        with serving(processor, tmp_path / "p2") as (_pproc2, _pinfo2):
            r = run_cli("call", "--relay", target, "GetValveState", "A")
            # A fresh processor process: state not persisted (persist: false), valve closed.
            assert (r.returncode, r.stdout.strip()) == (0, "False"), r.stderr
            r = run_cli("call", "--relay", target, "PychronReady")
            assert r.stdout.strip() == "OK"
