"""The seed's furnace, laser and spectrometer through node files and the CLI (issue 20 items
4, 5 and 6).

* an acquisition node file that names the furnace (the seed's ``RemoteFurnaceManager`` device
  YAML), a laser and the Qtegra spectrometer gets ``lab.furnace``, ``lab.laser`` and
  ``lab.spectrometer`` in ``labbridge run``;
* the furnace publishes its readings (and, with ``broadcast: true``, the furPi's broadcast) on
  its node's notifier; its funnel, magnets and bake-out answer the furPi commands; the laser
  answers ``Snapshot``; every new state-changing command needs the operator role and is
  audited through the node's gate;
* the demo's spectrometer publishes every scan, one intensity per detector, and the demo's
  recorder stores them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from labbridge.access import DONE, Role
from labbridge.devices.furnace import Furnace, FurnaceModel, FurnaceParams
from labbridge.devices.laser import Laser
from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.furnace import FurnaceCommands
from labbridge.links.pychron.laser import (
    LaserCommands,
    format_snapshot_reply,
    parse_snapshot_reply,
)
from labbridge.node import demo
from labbridge.protocol.png import SIGNATURE
from tests.access_helpers import gate_for
from tests.cli_helpers import labbridge_cmd, port_of, run_cli, serving
from tests.conftest import REPO
from tests.hardware.helpers import FakeClock

FURNACE_NODE = """node: furnace-controller
devices:
  - kind: furnace
    name: furnace
    time_scale: 200            # 200 furnace seconds per second: 22 -> 100 C in seconds
    broadcast: true
    broadcast_period: 0.1
    funnel: {up: 0, down: 40000, tolerance: 100}
  - kind: valve_bank
    name: valves
    persist: false
    valves: [{name: FA}, {name: FB}]
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
  - {kind: notifier, name: notifier, port: 0, rep_port: 0, heartbeat: 0}
"""

SCRIPT = """
async def main(lab):
    assert lab.furnace is not None and lab.spectrometer is not None and lab.laser is not None
    await lab.furnace.set_setpoint(100)
    temp = await lab.furnace.wait_for_temperature(100, tolerance=5, timeout=60, poll=0.1)
    print(f"furnace at {temp:.0f} C")
    await lab.furnace.command("LowerFunnel")
    await lab.wait_for(lambda: lab.furnace.client.call("InDownPosition"), 30,
                       what="funnel down")
    await lab.laser.enable()
    await lab.laser.goto_hole(45)
    shot = await lab.laser.snapshot("hole45")
    print(f"snapshot {shot.local_path} {len(shot.image)} bytes, png={shot.image[:8]!r}")
    means = await lab.spectrometer.measure(2, integration=0.1)
    print("detectors", ",".join(sorted(means)))
"""


def _seed_device_yaml(path: Path, klass: str, port: int, timeout: float) -> None:
    """A device YAML in the seed's flat shape (name, klass, host, port, timeout)."""
    path.write_text(f"name: {klass}\nklass: {klass}\nhost: 127.0.0.1\nport: {port}\n"
                    f"timeout: {timeout}\n")


@pytest.mark.timeout(180)
def test_run_gets_furnace_laser_and_spectrometer_from_the_node_file(tmp_path):
    furnace_file = tmp_path / "furnace-node.yaml"
    furnace_file.write_text(FURNACE_NODE)
    with serving(furnace_file, tmp_path / "f") as (_f, finfo), \
            serving(REPO / "examples" / "laser.yaml", tmp_path / "l") as (_l, linfo), \
            serving(REPO / "examples" / "spectrometer.yaml", tmp_path / "s") as (_s, sinfo):
        _seed_device_yaml(tmp_path / "furnace.yaml", "RemoteFurnaceManager",
                          port_of(finfo, service="command-server"), 5)
        acq = tmp_path / "acquisition.yaml"
        acq.write_text(f"""node: acquisition
services:
  - {{kind: remote_manager, name: furnace, device_file: furnace.yaml}}
  - {{kind: remote_manager, name: laser, klass: RemoteLaserManager, host: 127.0.0.1,
     port: {port_of(linfo)}, timeout: 5}}
  - {{kind: remote_manager, name: spectrometer, klass: ArgusSpectrometer, host: 127.0.0.1,
     port: {port_of(sinfo)}, transport: UDP}}
""")
        script = tmp_path / "heat.py"
        script.write_text(SCRIPT)
        r = run_cli("--log-level", "warning", "run", str(script), "--lab", str(acq),
                    "--no-progress", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for step in ("ok   furnace setpoint 100 C", "ok   wait for furnace 100 +- 5 C",
                 "ok   LowerFunnel OK", "ok   wait for funnel down", "ok   laser enable",
                 "ok   laser to hole 45", "ok   laser snapshot hole45",
                 "ok   measure 2 cycles", "detectors AX,CDD,H1,H2,L1,L2"):
        assert step in out, (step, out)
    shot = next(ln for ln in out.splitlines() if ln.startswith("snapshot "))
    path = Path(shot.split()[1])
    assert path.parent == (tmp_path / "l" / "state" / "snapshots" / "co2").absolute()
    assert "png=b'\\x89PNG\\r\\n\\x1a\\n'" in shot
    assert path.read_bytes()[:8] == SIGNATURE


def test_a_furnace_link_is_checked_and_listed(tmp_path):
    _seed_device_yaml(tmp_path / "furnace.yaml", "RemoteFurnaceManager", 1061, 5)
    acq = tmp_path / "acq.yaml"
    acq.write_text("node: acq\nservices:\n"
                   "  - {kind: remote_manager, name: furnace, device_file: furnace.yaml}\n"
                   "  - {kind: remote_manager, name: spectrometer, klass: ArgusSpectrometer,\n"
                   "     host: 192.168.1.10}\n")
    r = run_cli("ports", str(acq))
    assert r.returncode == 0, r.stderr
    assert "TCP      127.0.0.1:1061" in r.stdout and "furnace commands (RemoteFurnaceManager)" \
        in r.stdout
    assert "192.168.1.10:1069" in r.stdout  # Qtegra's port by default
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: acq\nservices:\n"
                   "  - {kind: remote_manager, name: furnace, device_file: furnace.yaml,\n"
                   "     monitor: {update_period: 1}}\n")
    r = run_cli("check", str(bad))
    assert r.returncode == 1
    assert f"{bad}:4: services[0].monitor: monitor is a setting of a valve link; " \
           "RemoteFurnaceManager is a furnace" in r.stderr


def _watch(pub: int, topic: str, count: int) -> list[str]:
    r = run_cli("watch", f"tcp://127.0.0.1:{pub}", topic, "--count", str(count), timeout=60)
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if f" {topic}" in ln]


@pytest.mark.timeout(120)
def test_furnace_readings_and_broadcast_on_its_notifier(tmp_path):
    node = tmp_path / "furnace.yaml"
    node.write_text(FURNACE_NODE)
    with serving(node, tmp_path) as (_proc, info):
        pub = port_of(info, "zmq-pub")
        target = f"127.0.0.1:{port_of(info, service='command-server')}"
        temps = _watch(pub, "furnace-controller.furnace.temperature", 2)
        assert len(temps) == 2 and all(float(ln.split()[-1]) > -50 for ln in temps)
        beats = _watch(pub, "furnace-controller.furnace.heartbeat", 2)
        assert all(" HeartBeat " in ln for ln in beats), beats
        (summary,) = _watch(pub, "furnace-controller.furnace.summary", 1)
        body = json.loads(summary.split(" ", 3)[3])
        assert {"version", "001", "002", "003", "004", "021", "031", "041"} <= set(body)
        assert body["041"] == "FA,sFalse;FB,sFalse"
        # A setpoint change is published as the valve controller publishes a valve change:
        # the watcher subscribes, and the change is made (again) until it has heard one.
        watcher = subprocess.Popen(
            labbridge_cmd("watch", f"tcp://127.0.0.1:{pub}",
                          "furnace-controller.furnace.setpoint", "--count", "1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while watcher.poll() is None:
                assert time.monotonic() < deadline, "the setpoint change was never published"
                assert run_cli("call", target, "SetSetpoint", "300").stdout.strip() == "OK"
            out, _ = watcher.communicate(timeout=10)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.communicate()
        (sp,) = [ln for ln in out.splitlines() if " furnace-controller.furnace.setpoint" in ln]
        assert sp.endswith(" 300.0")
        # The bake-out's readings follow once a channel heats.
        r = run_cli("call", target, "SetBakeoutClosedLoopSetpoint", "1,150")
        assert r.stdout.strip() == "OK", r.stdout + r.stderr
        heating = _watch(pub, "furnace-controller.furnace.bakeout_temperature.1", 2)
        assert len(heating) == 2


@pytest.mark.timeout(120)
def test_funnel_magnets_and_bakeout_through_the_command_server(tmp_path):
    node = tmp_path / "furnace.yaml"
    node.write_text(FURNACE_NODE.replace("time_scale: 200", "time_scale: 20"))
    with serving(node, tmp_path) as (_proc, info):
        target = f"127.0.0.1:{port_of(info, service='command-server')}"

        def call(*args: str) -> str:
            r = run_cli("call", target, *args)
            return r.stdout.strip()

        assert call("InUpPosition") == "OK" and call("InDownPosition") == "False"
        assert call("LowerFunnel") == "OK"
        deadline = time.monotonic() + 30
        while call("InDownPosition") != "OK":  # 40000 steps at 20000/s: 2 furnace s
            assert time.monotonic() < deadline, "the funnel never came down"
        assert call("InUpPosition") == "False"
        # The drives as the real client names them: JSON with the drive.
        move = json.dumps({"command": "MoveAbsolute", "drive": "feeder", "position": 2,
                           "units": "turns"})
        assert call(move) == "OK"
        deadline = time.monotonic() + 30
        while call(json.dumps({"command": "Moving", "drive": "feeder"})) == "OK":
            assert time.monotonic() < deadline
        pos = call(json.dumps({"command": "GetPosition", "drive": "feeder", "units": "turns"}))
        assert float(pos) == pytest.approx(2.0)
        assert call(json.dumps({"command": "GetPosition", "drive": "hopper"})) == \
            "ERROR 008 : device hopper not connected"
        assert call("MoveAbsolute", "5000").startswith("ERROR 004 : invalid arguments: ")
        assert call(json.dumps({"command": "EnergizeMagnets", "period": 600})) == "OK"
        assert call("IsEnergized") == "OK"
        assert call("DenergizeMagnets") == "OK" and call("IsEnergized") == "False"
        # Bake-out: JSON as the firmware reads it, or the text form.
        assert call(json.dumps({"command": "SetBakeoutClosedLoopSetpoint", "channel": 2,
                                "setpoint": 120})) == "OK"
        assert call("GetBakeoutSetpoint", "2") == "120.0"
        assert call("SetBakeoutControlMode", "2,open") == "OK"
        temp, power = call("GetBakeoutTempPower", "2").split(",")
        assert float(power) == 0.0 and float(temp) > 0  # open loop at 0 % output
        assert call("GetBakeoutTemperature", "7").startswith("ERROR 008")
        assert call("SetBakeoutClosedLoopSetpoint", "1,9000").startswith("ERROR 004")
        summary = json.loads(call("GetFullSummary"))
        assert summary["031"] == pytest.approx(40000.0) and summary["version"] == "1.0"


def test_new_commands_need_the_operator_role_and_are_audited(tmp_path):
    """Through the node's gate: an observer may read the funnel and the bake-out, not move or
    set them, nor take a snapshot; an operator may, and each change is audited."""
    furnace = Furnace("furnace", FurnaceModel(FurnaceParams(noise=0.0)))
    laser = Laser("co2", snapshot_dir=tmp_path / "shots", seed=1)
    observer = gate_for("10.0.0.0/24", role=Role.OBSERVER)
    events = []
    observer.add_sink(events.append)
    # (one node serves the furnace, another the laser: both have GetPosition)
    nodes = [Dispatcher([FurnaceCommands(furnace)], observer),
             Dispatcher([LaserCommands(laser)], observer)]
    peer = Caller("10.0.0.9", "plain")
    for cmd in ("LowerFunnel", "RaiseFunnel", "EnergizeMagnets 1", "DenergizeMagnets",
                '{"command": "MoveAbsolute", "drive": "funnel", "position": 5}',
                "SetBakeoutClosedLoopSetpoint 1,100", "SetBakeoutControlMode 1,open",
                "Snapshot hole1,.png"):
        reply = nodes[cmd.startswith("Snapshot")].dispatch(cmd, peer)
        assert isinstance(reply, str) and reply.startswith("ERROR 012 : Access restricted to "
                                                           "the operator role"), (cmd, reply)
    for cmd in ("InUpPosition", "IsEnergized", "GetBakeoutSetpoint 1", "GetFullSummary"):
        reply = nodes[0].dispatch(cmd, peer)
        assert isinstance(reply, str) and not reply.startswith("ERROR"), (cmd, reply)
    assert not (tmp_path / "shots").exists()  # the refused snapshot wrote nothing
    refused = [e for e in events if e.outcome != DONE]
    assert len(refused) == 8
    operator = gate_for("10.0.0.0/24", role=Role.OPERATOR)
    done = []
    operator.add_sink(done.append)
    assert Dispatcher([FurnaceCommands(furnace)], operator).dispatch("LowerFunnel",
                                                                     peer) == "OK"
    shot = Dispatcher([LaserCommands(laser)], operator).dispatch("Snapshot hole1,.jpg", peer)
    assert isinstance(shot, str)
    local, upload, image = parse_snapshot_reply(shot)
    assert Path(local).name == "hole1.png" and upload == "" and image[:8] == SIGNATURE
    assert [(e.verb, e.outcome) for e in done] == [("LowerFunnel", DONE),
                                                         ("Snapshot", DONE)]


def test_snapshot_reply_reads_as_the_real_client_reads_it(tmp_path):
    """NMGRL/pychron pychron/lasers/laser_managers/pychron_laser_manager.py
    (_convert_snapshot_response, main @ 6ccadb44): two hex digits and the local path, two hex
    digits and the upload path, the rest is the image."""
    reply = format_snapshot_reply("/data/snap/hole1.png", "", b"\x89PNG\r\n\x1a\nxyz")

    def convert(ps: str) -> tuple[str, str, str]:  # the real client's slicing
        n = int(ps[:2], 16)
        e1 = 2 + n
        e3 = e1 + 2 + int(ps[e1:e1 + 2], 16)
        return ps[2:e1], ps[e1 + 2:e3], ps[e3:]

    local, upload, blob = convert(reply)
    assert (local, upload) == ("/data/snap/hole1.png", "")
    assert base64.b64decode(blob) == b"\x89PNG\r\n\x1a\nxyz"
    assert reply.startswith("14/data/snap/hole1.png00")
    laser = Laser("co2", snapshot_dir=tmp_path, seed=1)
    d = Dispatcher([LaserCommands(laser)])
    local_caller = Caller("local", "plain")
    for bad in ("Snapshot ../escape,.png", "Snapshot /etc/passwd,.png", "Snapshot a/b,.png",
                "Snapshot .hidden,.png", "Snapshot"):
        reply = d.dispatch(bad, local_caller)
        assert isinstance(reply, str) and reply.startswith("ERROR 004"), (bad, reply)
    assert list(tmp_path.iterdir()) == []
    no_camera = Dispatcher([LaserCommands(Laser("co2"))])
    assert no_camera.dispatch("Snapshot a,.png", local_caller) == "No Response"


def test_snapshots_are_unique_and_bounded(tmp_path):
    laser = Laser("co2", snapshot_dir=tmp_path, seed=1, max_snapshots=3)
    paths = []
    for _ in range(5):
        shot = laser.take_snapshot("hole", ".png")
        assert shot is not None
        paths.append(Path(shot[0]))
    assert [p.name for p in paths[:3]] == ["hole.png", "hole-002.png", "hole-003.png"]
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_camera_sees_the_beam_only_while_the_laser_fires():
    clock = FakeClock()
    laser = Laser("co2", clock=clock, seed=3, power_lag=0.1)
    laser.set_power(50)
    dark = laser.camera_image()
    import asyncio

    asyncio.run(laser.enable())
    clock.advance(2.0)
    lit = laser.camera_image()
    c = dark.shape[0] // 2
    # Next to the crosshair, at the beam's centre: brighter while firing.
    assert int(lit[c + 2, c + 2]) > int(dark[c + 2, c + 2]) + 50
    # Over hole 45's centre (the stage moved there) the hole is dark.
    laser.disable()
    laser.goto_hole("45")
    clock.advance(60)
    img = laser.camera_image()
    assert int(img[c + 3, c + 3]) < 100


def test_bakeout_holds_its_setpoint_and_drives_move_on_furnace_time():
    f = Furnace("furnace", FurnaceModel(FurnaceParams(noise=0.0)), bakeout_channels=1)
    f.set_bakeout_setpoint(1, 150.0)
    f.advance(3600)
    ch = f.bakeout_channel(1)
    assert ch.temperature == pytest.approx(150.0, abs=2.0) and 0 < ch.power < 100
    f.lower_funnel()
    assert f.drives["funnel"].moving(f.model.t) and not f.funnel_at("down")
    f.advance(1.0)  # 20000 steps of 40000
    assert f.drives["funnel"].position(f.model.t) == pytest.approx(20000, abs=1)
    f.advance(1.5)
    assert f.funnel_at("down") and not f.drives["funnel"].moving(f.model.t)
    f.energize_magnets(2.0)
    f.advance(5.9)
    assert f.energized  # 3 magnets x 2 s
    f.advance(0.2)
    assert not f.energized


@pytest.mark.timeout(180)
def test_demo_spectrometer_scans_are_published_and_recorded(tmp_path):
    """The demo's own spectrometer and recorder node files (labbridge.node.demo), served as
    the demo serves them: every scan is on the bus with one intensity per detector, and the
    recorder stores it (`labbridge history` reads it back)."""
    spec_cfg = demo._spectrometer({})
    spec_cfg["services"][0]["port"] = 0
    spec_file = tmp_path / "spectrometer.yaml"
    spec_file.write_text(yaml.safe_dump(spec_cfg))
    with serving(spec_file, tmp_path / "s") as (_s, sinfo):
        pub = port_of(sinfo, "zmq-pub")
        scans = _watch(pub, "spectrometer.argus.scan", 2)
        for ln in scans:
            value = json.loads(ln.split(" ", 3)[3])
            assert set(value) == {"H2", "H1", "AX", "L1", "L2", "CDD"}
            assert all(isinstance(v, float) for v in value.values())

        class _Done:
            def url(self, protocol: str) -> str | None:
                return f"tcp://127.0.0.1:{pub}" if protocol == "zmq-pub" else None

        rec_cfg = demo._recorder({"spectrometer": _Done()})
        rec_file = tmp_path / "recorder.yaml"
        rec_file.write_text(yaml.safe_dump(rec_cfg))
        db = tmp_path / "r" / "state" / "lab.sqlite"
        with serving(rec_file, tmp_path / "r"):
            deadline = time.monotonic() + 60
            rows: list[dict] = []
            while len(rows) < 2:  # the recorder flushes every 0.25 s
                assert time.monotonic() < deadline, "no scans recorded"
                time.sleep(0.2)
                if db.exists():
                    r = run_cli("history", "spectrometer.argus.scan", "--db", str(db),
                                "--format", "json")
                    rows = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    for row in rows:
        assert row["topic"] == "spectrometer.argus.scan"
        assert set(row["value"]) == {"H2", "H1", "AX", "L1", "L2", "CDD"}
    # Ar40 on the axial cup: AX carries the big beam (5 V), the others far less.
    assert rows[-1]["value"]["AX"] > 10 * rows[-1]["value"]["L2"]
