"""The hexapod mock and the hexapod CLI (issue 20 item 7).

Expected behaviour from ``lsst-ts/ts_mthexapod@v1.8.0`` (commit 58c96a2):
python/lsst/ts/mthexapod/mock_controller.py (the command table: MOVE_POINT_TO_POINT, STOP,
POSITION_SET, SET_PIVOTPOINT, CONFIG_ACCEL, CONFIG_LIMITS, CONFIG_VEL; ``do_offset`` exists but
is not registered; ``assert_stationary`` on every configuration command and POSITION_SET;
``do_config_vel`` reads params xy, uv, z, w and stores ``vel_limits`` as xy, z, uv, w;
``end_run_command`` clears the set position), utils.py (``check_position``,
``check_new_position_limits`` and their messages), constants.py (camera limits 11400 um /
13100 um / 0.36 deg / 0.1 deg, pivot z -2758400 um, strut range +-14100 um, 500 um/s), and
structs.py (Config 129 bytes, Telemetry 648 bytes). Command codes from enums.py:
POSITION_SET 0x8004, SET_ENABLED_SUBSTATE 0x8001 (MOVE_POINT_TO_POINT 1, STOP 3),
SET_PIVOTPOINT 0x8007, CONFIG_ACCEL 0x800B, CONFIG_VEL 0x800C, CONFIG_LIMITS 0x800D,
OFFSET 0x8010.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from labbridge.cli import main
from labbridge.devices.hexrot.hexapod import HexapodMockController
from labbridge.devices.hexrot.mock import CommandError
from labbridge.links.hexrotcomm.controller import HexapodController, LimitError
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.hexrotcomm import HEXAPOD, EnabledSubstate, WireProfile
from tests.conftest import REPO
from tests.hexrotcomm.helpers import T, wait_for_signal
from tests.hexrotcomm.node_proc import NodeProc

SS, SUB, POS, PIVOT, ACC, VEL, LIMITS, OFFSET, DRIVES = (
    0x8000, 0x8001, 0x8004, 0x8007, 0x800B, 0x800C, 0x800D, 0x8010, 0x7000)
MOVE, STOP = 1.0, 3.0
EXAMPLE = REPO / "examples" / "hexapod-mock.yaml"


def cmd(m, code, *params, t=None):
    p = tuple(float(x) for x in params) + (0.0,) * (6 - len(params))
    return m.handle_command(code, p, t)


def enabled(index="camera", **config) -> HexapodMockController:
    m = HexapodMockController("h", "D", index=index, config=config)
    m.telemetry_record(0.0)
    cmd(m, DRIVES, 1)
    cmd(m, SS, 2)  # ENABLE
    return m


def test_structs_are_the_real_sizes_and_generation_a_is_refused():
    m = HexapodMockController("h")
    assert m.spec is HEXAPOD
    assert m.spec.config.size == 129 and m.spec.telemetry.size == 648
    assert len(m.spec.telemetry.encode(m.telemetry_record(0.0))) == 648
    with pytest.raises(ValueError, match="generation D only"):
        HexapodMockController("h", "A")


def test_position_set_checks_limits_and_state_as_upstream():
    m = HexapodMockController("h")
    with pytest.raises(CommandError, match="state=STANDBY; must be ENABLED"):
        cmd(m, POS, 0, 0, 0, 0, 0, 0)
    m = enabled()
    for pos, reason in (((12000, 0, 0, 0, 0, 0), "x=12000 not in range [-11400, 11400]"),
                        ((0, -11401, 0, 0, 0, 0), "y=-11401 not in range [-11400, 11400]"),
                        ((0, 0, 13101, 0, 0, 0), "z=13101 not in range [-13100, 13100]"),
                        ((0, 0, 0, 0.4, 0, 0), "u=0.4 not in range [-0.36, 0.36]"),
                        ((0, 0, 0, 0, 0, -0.2), "w=-0.2 not in range [-0.1, 0.1]"),
                        ((float("nan"), 0, 0, 0, 0, 0), "x=nan not in range")):
        with pytest.raises(CommandError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            cmd(m, POS, *pos)
    with pytest.raises(CommandError, match="Must call POSITION_SET before"):
        cmd(m, SUB, MOVE)
    cmd(m, POS, 100, 0, 0, 0, 0, 0)
    cmd(m, ACC, 100)  # any other command that runs clears the set position
    with pytest.raises(CommandError, match="Must call POSITION_SET before"):
        cmd(m, SUB, MOVE)


def test_move_ends_exactly_at_the_target_struts_within_their_speed():
    m = enabled()
    target = (1000.0, -500.0, 200.0, 0.01, -0.01, 0.005)
    cmd(m, POS, *target, t=0.0)
    duration = cmd(m, SUB, MOVE, t=0.0)
    assert duration > 0
    assert m.enabled_substate == EnabledSubstate.MOVING_POINT_TO_POINT
    with pytest.raises(CommandError, match="substate=MOVING_POINT_TO_POINT, not STATIONARY"):
        cmd(m, POS, *target)  # assert_stationary
    prev, t, samples = None, 0.0, []
    while t < duration + 0.3:
        t += 0.01
        rec = m.telemetry_record(t)
        lengths = [p.pos for p in rec.estimated_posfiltvel]
        if prev is not None:
            assert max(abs(a - b) for a, b in zip(lengths, prev, strict=True)) / 0.01 \
                <= 500.0 * (1 + 1e-9)
        prev = lengths
        samples.append(rec)
    done = [r for r in samples if r.enabled_substate == EnabledSubstate.STATIONARY]
    assert done and list(done[0].measured_xyz) + list(done[0].measured_uvw) == list(target)
    assert list(done[0].commanded_pos) == list(target)
    assert done[0].application_status & 0x2  # MOVE_COMPLETE
    mid = samples[len(samples) // 3]
    assert 0 < mid.measured_xyz[0] < 1000.0  # it moved through, it did not jump


def test_stop_halts_where_it_is():
    m = enabled()
    cmd(m, POS, 5000, 0, 0, 0, 0, 0, t=0.0)
    duration = cmd(m, SUB, MOVE, t=0.0)
    m.telemetry_record(duration / 2)
    cmd(m, SUB, STOP, t=duration / 2)
    assert m.enabled_substate == EnabledSubstate.STATIONARY  # upstream: at once
    here = m.telemetry_record(duration).measured_xyz[0]
    assert 0 < here < 5000 and m.telemetry_record(duration * 2).measured_xyz[0] == here


def test_unreachable_pose_refused_at_move():
    m = enabled()
    cmd(m, POS, 11400, 11400, 13100, 0, 0, 0.1)
    with pytest.raises(CommandError, match=r"strut\(s\) .* would be out of range"):
        cmd(m, SUB, MOVE)


def test_configuration_commands_as_upstream():
    m = enabled()
    v = m.config_version
    cmd(m, VEL, 1000, 0.05, 800, 0.02)  # params xy, uv, z, w
    assert m.config_record().vel_limits == (1000.0, 800.0, 0.05, 0.02)  # stored xy, z, uv, w
    with pytest.raises(CommandError, match=r"uv=0.2 not in range \[0, 0.1146\]"):
        cmd(m, VEL, 1000, 0.2, 800, 0.02)
    with pytest.raises(CommandError, match=r"accel limit 600 not in range \(0, 500\]"):
        cmd(m, ACC, 600)
    cmd(m, LIMITS, 5000, -6000, 6000, 0.2, -0.05, 0.05)
    assert m.config_record().pos_limits == (5000.0, -6000.0, 6000.0, 0.2, -0.05, 0.05)
    with pytest.raises(CommandError, match=r"maxXY=20000 not in range \[0, 11400\]"):
        cmd(m, LIMITS, 20000, -6000, 6000, 0.2, -0.05, 0.05)
    with pytest.raises(CommandError, match=r"minZ=10 not in range \[-13100, 0\]"):
        cmd(m, LIMITS, 5000, 10, 6000, 0.2, -0.05, 0.05)
    cmd(m, PIVOT, 0, 0, -1000000)
    assert m.config_record().pivot == (0.0, 0.0, -1000000.0)
    assert m.config_version == v + 3  # each accepted one re-sends CONFIG
    for code, p1 in ((OFFSET, 1.0), (SS, 8.0)):  # no handler upstream
        with pytest.raises(CommandError, match="Unrecognized command code"):
            cmd(m, code, p1)
    # Configuration needs STATIONARY
    cmd(m, POS, 100, 0, 0, 0, 0, 0)
    cmd(m, SUB, MOVE)
    with pytest.raises(CommandError, match="not STATIONARY"):
        cmd(m, PIVOT, 0, 0, 0)


def test_m2_hexapod_has_its_own_limits_and_pivot():
    m = HexapodMockController("h", index="m2")
    cfg = m.config_record()
    assert cfg.pos_limits == (10500.0, -8900.0, 8900.0, 0.175, -0.05, 0.05)
    assert cfg.pivot == (0.0, 0.0, -703000.0)


async def test_hexapod_controller_model_against_the_mock():
    mock = HexapodMockController("hex", config={"max_velocity_strut": 5000.0})
    server = MockControllerServer(mock)
    await server.start()
    ctrl = HexapodController("hex", WireProfile.make(HEXAPOD, "D"), "127.0.0.1", server.port,
                             enable_drives_delay=0.0, move_pause=0.0, autoconnect=False)
    try:
        await asyncio.wait_for(ctrl.connect(), T)
        await asyncio.wait_for(ctrl.enable(), T)
        target = [2000.0, 1000.0, -300.0, 0.02, 0.0, -0.01]
        arrived = asyncio.ensure_future(
            wait_for_signal(ctrl, "position", lambda v: v == target))
        duration = await asyncio.wait_for(ctrl.move(target, tolerance=1e-9), T)
        assert duration and duration > 0
        await arrived
        assert ctrl.snapshot()["demand_position"] == target
        with pytest.raises(LimitError, match=r"z = 20000 um is outside \[-13100, 13100\]"):
            await ctrl.move([0, 0, 20000, 0, 0, 0])
        with pytest.raises(LimitError, match="6 values"):
            await ctrl.move([0, 0, 0])
        await asyncio.wait_for(ctrl.standby(), T)
        assert mock.state.name == "STANDBY"
    finally:
        await ctrl.disconnect()
        await server.close()


def _hexapod(capsys, *args: str) -> tuple[int, dict]:
    code = main(["--log-level", "warning", "hexapod", *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_serve_the_example_and_drive_it_with_the_cli(tmp_path, capsys):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["devices"][0]["config"]["max_velocity_strut"] = 5000.0  # a quicker test
    node = NodeProc(tmp_path, cfg, "--port", "0", log_level="warning")
    try:
        port = node.ready()["services"][0]["port"]
        target = f"127.0.0.1:{port}"
        common = ["--enable-delay", "0", "--move-pause", "0", "--timeout", "10"]
        code, st = _hexapod(capsys, target, "status", *common)
        assert code == 0 and st["state"] == "STANDBY" and st["position"] == [0.0] * 6
        assert st["limits"]["maxXY"] == 11400.0 and st["pivot"] == [0.0, 0.0, -2758400.0]
        code, st = _hexapod(capsys, target, "enable", *common)
        assert code == 0 and st["state"] == "ENABLED"
        code, st = _hexapod(capsys, target, "move", "1000", "-500", "200", "0.01", "-0.01",
                            "0.005", *common)
        assert code == 0 and st["position"] == [1000.0, -500.0, 200.0, 0.01, -0.01, 0.005]
        code, st = _hexapod(capsys, target, "move", "20000", "0", "0", "0", "0", "0", *common)
        assert code == 1 and "x = 20000 um is outside" in st["error"]
        code, st = _hexapod(capsys, target, "move", "11400", "11400", "13100", "0", "0",
                            "0.1", *common)
        assert code == 1 and "would be out of range" in st["error"]  # the controller's NO_ACK
        code, st = _hexapod(capsys, target, "move", "-3000", "0", "0", "0", "0", "0",
                            "--no-wait", *common)
        assert code == 0
        code, st = _hexapod(capsys, target, "stop", *common)
        assert code == 0 and st["enabled_substate"] == 0 and -3000 < st["position"][0] <= 1000
        code, st = _hexapod(capsys, target, "standby", *common)
        assert code == 0 and st["state"] == "STANDBY"
        assert main(["hexapod", target, "move", "1", "2"]) == 2  # usage: six values
        assert node.alive
    finally:
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])
