"""Mock controller physics and state machines without sockets (devices/hexrot/mock.py)."""

from __future__ import annotations

import itertools

import pytest

from labbridge.devices.hexrot.mock import (
    CommandError,
    RotatorMockController,
    SimpleMockController,
)
from labbridge.protocol.hexrotcomm import ControllerState, EnabledSubstate, SetStateParam

P6 = (0.0,) * 5
SS, POS, SUB, VEL, ACC = 0x8000, 0x8007, 0x8002, 0x9001, 0x9002


def cmd(m, code, p1=0.0):
    return m.handle_command(code, (float(p1), *P6))


def run(m, t0, seconds, dt=0.02):
    """Telemetry every dt; returns (t, record) samples."""
    out = []
    t = t0
    while t < t0 + seconds:
        t += dt
        out.append((t, m.telemetry_record(t)))
    return out


@pytest.mark.parametrize("vmax,amax,target", [(3.5, 1.0, 10.0), (10.0, 20.0, -40.0),
                                              (2.0, 0.5, 0.3)])
def test_move_obeys_velocity_and_acceleration_limits(vmax, amax, target):
    m = RotatorMockController("r", "D", config={"velocity_limit": vmax, "accel_limit": amax,
                                                "max_velocity_limit": vmax})
    cmd(m, SS, SetStateParam.ENABLE)
    cmd(m, POS, target)
    duration = cmd(m, SUB, 1)
    m.telemetry_record(0.0)
    samples = run(m, 0.0, duration + 2.0)
    vels = [r.demand_vel for _, r in samples]
    assert max(abs(v) for v in vels) <= vmax + 1e-9
    accs = [abs(b - a) / 0.02 for a, b in itertools.pairwise(vels)]
    assert max(accs) <= amax * 1.02  # within 2 %: the last step snaps to the target
    arrive = next(t for t, r in samples if r.enabled_substate == EnabledSubstate.STATIONARY)
    assert samples[-1][1].current_pos == target
    # It takes about the planned time (the braking curve adds a little).
    assert duration * 0.9 <= arrive <= duration * 1.15 + 0.05


def test_stop_decelerates_and_stops_short():
    m = RotatorMockController("r", "D", config={"velocity_limit": 5.0, "accel_limit": 2.0,
                                                "max_velocity_limit": 5.0})
    cmd(m, SS, SetStateParam.ENABLE)
    cmd(m, POS, 80.0)
    cmd(m, SUB, 1)
    m.telemetry_record(0.0)
    run(m, 0.0, 4.0)  # cruising at 5 deg/s
    assert m.velocity == pytest.approx(5.0)
    cmd(m, SUB, 3)
    assert m.enabled_substate == EnabledSubstate.CONTROLLED_STOPPING
    samples = run(m, 4.0, 4.0)
    stopped = samples[-1][1]
    assert stopped.demand_vel == 0.0 and stopped.enabled_substate == 0
    assert stopped.current_pos < 80.0


def test_rotator_refusals_name_the_limit():
    m = RotatorMockController("r", "D")
    with pytest.raises(CommandError, match="state=STANDBY; must be ENABLED"):
        cmd(m, POS, 1.0)
    cmd(m, SS, SetStateParam.ENABLE)
    with pytest.raises(CommandError, match=r"position 95 not in range \[-90, 90\]"):
        cmd(m, POS, 95.0)
    with pytest.raises(CommandError, match="Must call POSITION_SET before"):
        cmd(m, SUB, 1)
    with pytest.raises(CommandError, match=r"velocity limit 9 not in range \(0, 3.5\]"):
        cmd(m, VEL, 9.0)
    with pytest.raises(CommandError, match=r"accel limit 0 not in range \(0, 1\]"):
        cmd(m, ACC, 0.0)
    with pytest.raises(CommandError, match="Unrecognized command code 12345"):
        cmd(m, 12345)
    assert m.commands_rejected == 6
    cmd(m, VEL, 2.0)
    assert m.config["velocity_limit"] == 2.0 and m.config_version == 1


def test_gen_a_state_machine():
    m = RotatorMockController("r", "A")
    assert m.state == ControllerState.OFFLINE
    with pytest.raises(CommandError):
        cmd(m, SS, SetStateParam.ENABLE)  # must START first
    for param, state in ((SetStateParam.ENTER_CONTROL, ControllerState.STANDBY),
                         (SetStateParam.START, ControllerState.DISABLED),
                         (SetStateParam.ENABLE, ControllerState.ENABLED),
                         (SetStateParam.DISABLE, ControllerState.DISABLED),
                         (SetStateParam.STANDBY, ControllerState.STANDBY),
                         (SetStateParam.EXIT, ControllerState.OFFLINE)):
        cmd(m, SS, param)
        assert m.state == state
    with pytest.raises(CommandError, match="Unrecognized"):
        cmd(m, 0x7000, 1.0)  # no ENABLE_DRIVES in generation A


def test_gen_d_fault_and_clear_error_and_drives():
    m = RotatorMockController("r", "D")
    cmd(m, SS, SetStateParam.FAULT)  # param1 = 8 (ts_mtrotator >= v1.1.0)
    assert m.state == ControllerState.FAULT
    with pytest.raises(CommandError):
        cmd(m, SS, SetStateParam.ENABLE)
    cmd(m, SS, SetStateParam.CLEAR_ERROR)
    assert m.state == ControllerState.STANDBY
    cmd(m, 0x7000, 1.0)
    assert m.config_record().drives_enabled is True and m.config_version == 1


def test_simple_mock_both_generations():
    d = SimpleMockController("s", "D")
    assert d.spec.config.size == 25 and d.spec.telemetry.size == 36
    cmd(d, 1, SetStateParam.ENABLE)
    cmd(d, 4, 3.5)
    tel = d.telemetry_record(1.0)
    assert tel.cmd_position == 3.5 and tel.curr_position == pytest.approx(3.501)
    with pytest.raises(CommandError, match="not in range"):
        cmd(d, 4, 30.0)
    a = SimpleMockController("s", "A")
    assert a.spec.config.size == 24 and a.spec.telemetry.size == 44
    assert a.telemetry_record(1.0).offline_substate == 1.0  # OFFLINE / AVAILABLE
    for p in (SetStateParam.ENTER_CONTROL, SetStateParam.START, SetStateParam.ENABLE):
        cmd(a, 1, p)
    cmd(a, 3, 2.0)  # MOVE is code 3 in generation A
    assert a.telemetry["cmd_position"] == 2.0


def test_unknown_config_field_rejected():
    with pytest.raises(ValueError, match="no field 'speed'"):
        RotatorMockController("r", "D", config={"speed": 1.0})
