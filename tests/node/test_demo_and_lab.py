"""The one-command demo, the scripting API across a node restart, and SIGTERM timing."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import logging
import os
import signal
import socket
import subprocess
import time

import pytest
from rich.console import Console
from rich.live import Live

from labbridge.cli import setup_logging
from labbridge.cli.common import logs_above
from labbridge.node.lab import Lab, ScriptError
from labbridge.node.node import build_node
from tests.cli_helpers import labbridge_cmd, port_of, serving
from tests.conftest import REPO


def _demo_env(tmp_path):
    """The demo makes its folder in the temporary directory: a private one per test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return tmp, {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(300)  # a whole lab of eight processes; 20-60 s on a loaded machine
def test_demo_runs_the_extraction_and_exits_cleanly(tmp_path):
    ready = tmp_path / "demo.json"
    tmp, env = _demo_env(tmp_path)
    r = subprocess.run(labbridge_cmd("--log-level", "warning", "demo", "--exit-after-sequence",
                                     "--no-progress", "--ready-file", str(ready)),
                       capture_output=True, text=True, timeout=240, cwd=REPO, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(tmp.iterdir()) == [], "the demo left its folder behind"
    out = r.stdout
    assert "extraction sequence complete" in out
    for step in ("open F", "close F", "furnace setpoint 600 C", "wait for furnace 600",
                 "open E", "measure 3 cycles", "lab stopped"):
        assert step in out, step
    assert "labbridge call 127.0.0.1:" in out
    info = json.loads(ready.read_text())
    assert {"valve-controller", "furnace-controller", "spectrometer", "rotator",
            "pymodaq-camera", "data-reduction", "dashboard"} <= set(info["nodes"])
    assert "web dashboard: http://127.0.0.1:" in out
    if importlib.util.find_spec("softioc") is not None:  # the lab's PVs (docs/epics.md)
        assert "EPICS: prefix LAB (" in out and "export EPICS_CA_ADDR_LIST=" in out
        assert {"LAB:valves:A", "LAB:gauges:IG", "LAB:furnace:SETPOINT", "LAB:argus:AX",
                "LAB:rotator:STATE", "LAB:camera:IMAGE"} <= set(info["epics"]["pvs"])
    for note in info["left_out"].values():
        assert "not available" in note
    assert "Traceback" not in r.stderr


@pytest.mark.timeout(300)
def test_demo_stops_the_lab_when_a_node_dies(tmp_path):
    """A node that dies after start: one line naming it and its log, the whole lab stopped,
    exit code 1, the folder (with the logs) kept."""
    ready = tmp_path / "demo.json"
    tmp, env = _demo_env(tmp_path)
    proc = subprocess.Popen(labbridge_cmd("--log-level", "warning", "demo", "--no-sequence",
                                          "--no-progress", "--ready-file", str(ready)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():  # the demo's readiness event (a child process)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the demo did not come up"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        victim = info["nodes"]["furnace-controller"]["pid"]
        others = [n["pid"] for k, n in info["nodes"].items() if k != "furnace-controller"]
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert any(ln.startswith("labbridge demo: furnace controller (furPi) was killed by "
                             "SIGKILL while the lab was running; stopping the lab (log: ")
               for ln in lines), err
    assert "lab stopped" in out
    kept = [p for p in tmp.iterdir()]
    assert len(kept) == 1 and (kept[0] / "furnace-controller.log").exists()
    for pid in others:  # every other node was stopped with it
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_logs_go_above_a_live_display(capsys):
    """While a rich Live display is up, a log record is printed through its console (above
    the display), not written to stderr underneath it."""
    setup_logging("info")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with logs_above(console), Live("TABLE", console=console, auto_refresh=False) as live:
        logging.getLogger("labbridge.test").warning("a node said something")
        live.update("TABLE 2", refresh=True)
    logging.getLogger("labbridge.test").warning("after the display")
    err = capsys.readouterr().err
    assert "a node said something" in buf.getvalue()
    assert "a node said something" not in err
    assert "after the display" in err  # the handlers are back


def _acquisition(tmp_path, port: int):
    p = tmp_path / "acq.yaml"
    p.write_text(f"""
node: acquisition
services:
  - kind: remote_manager
    name: extraction-line
    host: 127.0.0.1
    port: {port}
    timeout: 1
    monitor: {{update_period: 0.1}}
""")
    return build_node(p, state_dir=tmp_path / "acq-state")


async def test_script_fails_clearly_when_the_valve_node_dies_and_recovers(tmp_path):
    example = REPO / "examples" / "valve-controller.yaml"
    with serving(example, tmp_path / "a") as (proc, info):
        port = port_of(info)
        node = _acquisition(tmp_path, port)
        await node.start()
        try:
            lab = Lab(node)
            await asyncio.wait_for(node.services[0].monitor.wait_synced(), 10)
            await lab.line.open("A")
            assert lab.line.is_open("A")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            t0 = time.monotonic()
            with pytest.raises(ScriptError) as info_err:
                await asyncio.wait_for(lab.line.open("B"), 10)
            assert time.monotonic() - t0 < 10  # a clear error, not a hang
            assert "open B" in str(info_err.value)
            # Restart the valve node on the same port: the acquisition side reconnects.
            with serving(example, tmp_path / "b", "--port", str(port)):
                pass_ = False
                for _ in range(100):
                    try:
                        await lab.line.open("B")
                        pass_ = True
                        break
                    except ScriptError:
                        await asyncio.sleep(0.1)
                assert pass_
                assert await lab.line.state("B") is True
        finally:
            await node.stop()


def test_sigterm_exits_zero_quickly_with_state_flushed(tmp_path):
    example = REPO / "examples" / "valve-controller.yaml"
    with serving(example, tmp_path) as (proc, info):
        r = subprocess.run(labbridge_cmd("call", f"127.0.0.1:{port_of(info)}", "Open", "C"),
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "OK"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        elapsed = time.monotonic() - t0
    state = json.loads(next((tmp_path / "state").glob("valves.json")).read_text())
    assert state["valves"]["C"] == {"state": True, "locked": False}
    assert state["valves"]["A"] == {"state": False, "locked": False}
    print(f"SIGTERM to exit: {elapsed:.3f} s")


async def test_a_node_that_is_not_ready_tells_where_it_is(tmp_path):
    """SIGUSR1 makes ``labbridge serve`` write every Python thread's stack to its log and go
    on serving; the demo reads them back when a node is late (``NodeNotReady.stacks``), so a
    report says where the node was even when the lab's folder is gone."""
    from labbridge.node.demo import Component, _stacks

    with serving(REPO / "examples" / "valve-controller.yaml", tmp_path) as (proc, info):

        class _Proc:  # the demo's asyncio process handle, over the test's Popen
            returncode = None

            @staticmethod
            def send_signal(sig: int) -> None:
                proc.send_signal(sig)

        comp = Component("valve-controller", "valve controller", (), lambda _: {},
                         proc=_Proc(), info={"log": str(tmp_path / "serve.log")})
        stacks = await _stacks(comp)
        assert "most recent call first" in stacks, stacks
        assert "asyncio tasks: " in stacks and "await run_node(" in stacks
        assert proc.poll() is None  # still serving
        with socket.create_connection(("127.0.0.1", port_of(info)), timeout=5):
            pass
