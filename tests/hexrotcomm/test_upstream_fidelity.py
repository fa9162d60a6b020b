"""The rotator mock behaves as the upstream mocks do (issue 14 items 4-8).

Expected behaviour comes from the upstream source, read at these tags:

* ``lsst-ts/ts_hexrotcomm@v1.3.7`` (commit 2669cb4): python/lsst/ts/hexrotcomm/
  base_mock_controller.py (``read_and_dispatch``: the handler runs, then the status is
  written; ``do_enable_drives`` writes CONFIG inside the handler; ``run_command`` calls
  ``end_run_command`` only after a handler that did not raise; ``update_and_get_header``
  writes ``utils.current_tai()``), enums.py (``SetStateParam.FAULT = 8``, added in v1.1.0).
* ``lsst-ts/ts_hexrotcomm@v0.22.0`` (commit 74a9653): base_mock_controller.py (generation A:
  ``end_run_command`` runs after a handler that raised as well).
* ``lsst-ts/ts_mtrotator@v1.3.1`` (commit a861fd0): python/lsst/ts/mtrotator/
  mock_controller.py (``do_position_set`` and ``do_config_vel``/``do_config_accel`` call
  ``assert_stationary``; ranges ``(0, MAX_VEL_LIMIT]``, ``(0, MAX_ACCEL_LIMIT]`` from
  constants.py: 3.5 deg/s, 1.0 deg/s^2; ``(SET_STATE, SetStateParam.FAULT) -> do_fault``;
  ``end_run_command`` clears ``set_pos`` after any other command), rotator_csc.py
  (``command_llv_fault`` sends SET_STATE with param1 = SetStateParam.FAULT).
* ``lsst-ts/ts_mtrotator@v0.18.0`` (commit fbf9149): the same for generation A (FAULT 0x8001).

The commands are built here with ``struct`` from the C layout (``commandStreamStructure_t``,
``lsst-ts/ts_hexrotpxicom@v0.2.6: include/interface/commandStructure.h``) and the replies read
with ``struct`` too, not with labbridge's codec.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time

import pytest

from labbridge.devices.hexrot.mock import CommandError, RotatorMockController
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.controller import StateError
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.hexrotcomm import ROTATOR, EnabledSubstate, WireProfile
from labbridge.protocol.hexrotcomm.tai import (
    current_tai,
    tai_from_utc,
    tai_minus_utc,
    utc_from_tai,
)
from tests.hexrotcomm.helpers import T, rotator_rig, wait_for_signal

# commandStreamStructure_t: commander u32, counter u32, cmd u32, param1..6 f64 (60 bytes)
CMD = struct.Struct("<III6d")
# headerStructure_t: frameId u32, counter u32, tv_sec i64 (TAI), tv_nsec i64 (24 bytes)
HDR = struct.Struct("<IIqq")
# CommandStatus payload: status u32, duration f64, reason char[50]
STATUS = struct.Struct("<Id50s")
# ts_mtrotator@v1.3.1 structs.py: Config 97 bytes, Telemetry 396 bytes
SIZES = {1: STATUS.size, 2: 396, 3: 97}
CSC = 2
SET_STATE, ENABLE_DRIVES, SUBSTATE, POSITION_SET = 0x8000, 0x7000, 0x8002, 0x8007
CONFIG_VEL, CONFIG_ACCEL, FAULT_CODE = 0x9001, 0x9002, 0x8001
ENABLE, CLEAR_ERROR, FAULT = 2.0, 6.0, 8.0
MOVE_PTP, STOP = 1.0, 3.0


class Peer:
    """A CSC built from the C structs with ``struct``: sends commands, reads frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.counter = 0

    async def frame(self) -> tuple[int, int, int, int, bytes]:
        h = HDR.unpack(await asyncio.wait_for(self.reader.readexactly(HDR.size), T))
        payload = await asyncio.wait_for(self.reader.readexactly(SIZES[h[0]]), T)
        return (*h, payload)

    async def command(self, code: int, p1: float = 0.0) -> list[tuple[int, int, bytes]]:
        """Send one command; return (frame id, counter, payload) of every non-telemetry frame
        up to and including its status, in arrival order."""
        counter = self.counter
        self.counter += 1
        self.writer.write(CMD.pack(CSC, counter, code, p1, 0, 0, 0, 0, 0))
        out = []
        while True:
            fid, cnt, _sec, _nsec, payload = await self.frame()
            if fid == 2:
                continue
            out.append((fid, cnt, payload))
            if fid == 1 and cnt == counter:
                return out

    async def status(self, code: int, p1: float = 0.0) -> tuple[int, float, str]:
        _fid, _, payload = (await self.command(code, p1))[-1]
        status, duration, reason = STATUS.unpack(payload)
        return status, duration, reason.split(b"\0", 1)[0].decode()


@pytest.fixture
async def rotator():
    mock = RotatorMockController("rot", "D", config={"velocity_limit": 3.5, "accel_limit": 1.0})
    server = MockControllerServer(mock)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    peer = Peer(reader, writer)
    try:
        fid, *_ = await peer.frame()
        assert fid == 3  # CONFIG first on connect
        yield mock, peer
    finally:
        writer.close()
        await writer.wait_closed()
        await server.close()


ACK, NO_ACK = 1, 2


# -- item 4: POSITION_SET while moving; the set position is cleared like upstream ------------
async def test_position_set_while_moving_is_refused_and_set_pos_cleared(rotator):
    mock, peer = rotator
    assert (await peer.status(ENABLE_DRIVES, 1.0))[0] == ACK
    assert (await peer.status(SET_STATE, ENABLE))[0] == ACK
    assert (await peer.status(POSITION_SET, 20.0))[0] == ACK
    status, duration, _ = await peer.status(SUBSTATE, MOVE_PTP)
    assert status == ACK and duration > 1.0
    # Moving: assert_stationary refuses a new target (NO_ACK with the substate in the reason).
    status, _, reason = await peer.status(POSITION_SET, 5.0)
    assert status == NO_ACK
    assert reason == "substate=MOVING_POINT_TO_POINT, not STATIONARY"
    # The refused POSITION_SET set nothing, and MOVE_POINT_TO_POINT cleared the set position.
    status, _, reason = await peer.status(SUBSTATE, MOVE_PTP)
    assert status == NO_ACK and reason == "Must call POSITION_SET before MOVE_POINT_TO_POINT"
    assert mock.target == 20.0
    # Stop, then: a command that succeeds clears a pending set position...
    stopped = asyncio.ensure_future(wait_for_signal(mock, "position", lambda v: True))
    assert (await peer.status(SUBSTATE, STOP))[0] == ACK
    await stopped  # the mock emits its position when it comes to rest
    assert mock.enabled_substate == EnabledSubstate.STATIONARY
    assert (await peer.status(POSITION_SET, 1.0))[0] == ACK
    assert mock.telemetry_record().set_pos == 1.0
    assert (await peer.status(CONFIG_VEL, 3.0))[0] == ACK
    assert math.isnan(mock.telemetry_record().set_pos)
    assert (await peer.status(SUBSTATE, MOVE_PTP))[0] == NO_ACK
    # ...and one that is refused does not (gen D: end_run_command only after success).
    assert (await peer.status(POSITION_SET, 1.0))[0] == ACK
    assert (await peer.status(CONFIG_VEL, 99.0))[0] == NO_ACK
    assert (await peer.status(SUBSTATE, MOVE_PTP))[0] == ACK


async def test_controller_model_refuses_a_move_while_moving_like_the_csc():
    """ts_mtrotator@v1.3.1 rotator_csc.do_move: assert_enabled_substate(STATIONARY)."""
    async with rotator_rig("D") as rig:
        await asyncio.wait_for(rig.ctrl.enable(), T)
        await rig.ctrl.move(-60.0, wait=False)
        await wait_for_signal(rig.ctrl, "enabled_substate",
                              lambda v: v == EnabledSubstate.MOVING_POINT_TO_POINT)
        sent = rig.mock.commands_received
        with pytest.raises(StateError, match="MOVING_POINT_TO_POINT; must be STATIONARY"):
            await rig.ctrl.move(5.0)
        assert rig.mock.commands_received == sent  # refused locally, nothing sent


def test_gen_a_refused_command_clears_the_set_position_too():
    """ts_hexrotcomm@v0.22.0 run_command: end_run_command after a failed handler as well."""
    m = RotatorMockController("r", "A")
    for p in (7.0, 1.0, 2.0):  # ENTER_CONTROL, START, ENABLE
        m.handle_command(SET_STATE, (p, 0, 0, 0, 0, 0))
    m.handle_command(POSITION_SET, (4.0, 0, 0, 0, 0, 0))
    with pytest.raises(CommandError):
        m.handle_command(CONFIG_VEL, (99.0, 0, 0, 0, 0, 0))
    with pytest.raises(CommandError, match="Must call POSITION_SET"):
        m.handle_command(SUBSTATE, (MOVE_PTP, 0, 0, 0, 0, 0))
    with pytest.raises(CommandError, match="Unrecognized"):  # unknown: returns before the hook
        m.handle_command(0x7777, (0.0,) * 6)


# -- item 5: moves and stops end exactly at the target with zero velocity --------------------
@pytest.mark.parametrize("vmax,amax,start,target", [(3.5, 1.0, 0.0, 10.0),
                                                     (3.5, 1.0, 5.0, 4.999),
                                                     (10.0, 20.0, 0.0, -40.0),
                                                     (2.0, 0.5, 1.0, 1.3)])
def test_move_ends_exactly_at_target_never_beyond(vmax, amax, start, target):
    m = RotatorMockController("r", "D", config={"velocity_limit": vmax, "accel_limit": amax,
                                                "max_velocity_limit": vmax},
                              initial_position=start)
    t = 1000.0
    m.telemetry_record(t)
    m.handle_command(SET_STATE, (ENABLE, 0, 0, 0, 0, 0), t)
    m.handle_command(POSITION_SET, (target, 0, 0, 0, 0, 0), t)
    duration = m.handle_command(SUBSTATE, (MOVE_PTP, 0, 0, 0, 0, 0), t)
    samples = []
    while t < 1000.0 + duration + 0.5:
        t += 0.001  # 1 kHz sampling: an overshoot of a few micro-degrees would show
        samples.append(m.telemetry_record(t))
    lo, hi = min(start, target), max(start, target)
    assert all(lo <= s.current_pos <= hi for s in samples)  # never beyond the target
    pos = [s.current_pos for s in samples]
    assert pos == sorted(pos) or pos == sorted(pos, reverse=True)  # no creeping back
    done = [s for s in samples if s.enabled_substate == EnabledSubstate.STATIONARY]
    assert done and done[0].current_pos == target and done[0].demand_vel == 0.0
    assert all(s.current_pos == target and s.demand_vel == 0.0 for s in done)
    first_done = samples.index(done[0])
    assert abs((first_done + 1) * 0.001 - duration) <= 0.0011  # ends when the ACK said


def test_controlled_stop_ends_at_rest_where_braking_ends():
    m = RotatorMockController("r", "D", config={"velocity_limit": 3.0, "accel_limit": 1.0})
    t = 0.0
    m.telemetry_record(t)
    for code, p1 in ((SET_STATE, ENABLE), (POSITION_SET, 80.0), (SUBSTATE, MOVE_PTP)):
        m.handle_command(code, (p1, 0, 0, 0, 0, 0), t)
    t = 4.5
    m.telemetry_record(t)  # cruising at 3 deg/s
    assert m.velocity == 3.0
    duration = m.handle_command(SUBSTATE, (STOP, 0, 0, 0, 0, 0), t)
    assert duration == pytest.approx(3.0)  # |v| / a
    expected_end = m.position + 3.0 ** 2 / (2 * 1.0)
    samples = []
    while t < 4.5 + duration + 0.2:
        t += 0.001
        samples.append(m.telemetry_record(t))
    pos = [s.current_pos for s in samples]
    assert pos == sorted(pos)  # decelerates forward, never comes back
    assert samples[-1].current_pos == pytest.approx(expected_end, abs=1e-12)
    assert max(pos) == samples[-1].current_pos
    assert samples[-1].demand_vel == 0.0 and samples[-1].enabled_substate == 0


# -- item 6: SET_STATE param1 = 8 (FAULT) --------------------------------------------------
async def test_set_state_fault_param_8_is_the_cscs_fault_command(rotator):
    mock, peer = rotator
    status, _, reason = await peer.status(SET_STATE, FAULT)
    assert status == ACK, reason
    assert mock.state.name == "FAULT"  # set by the handler, before the ACK was written
    assert mock.telemetry_record().fault_substate == 2.0  # WAIT_CLEAR_ERROR
    # Code 0x8001 has no handler upstream in generation D any more.
    status, _, reason = await peer.status(FAULT_CODE)
    assert status == NO_ACK and reason.startswith("Unrecognized command code 32769")
    assert (await peer.status(SET_STATE, CLEAR_ERROR))[0] == ACK
    assert mock.state.name == "STANDBY"


def test_gen_a_fault_command_0x8001():
    m = RotatorMockController("r", "A")
    m.handle_command(FAULT_CODE, (0.0,) * 6)
    assert m.state.name == "FAULT"


# -- item 7: header times are TAI -------------------------------------------------------------
def test_tai_minus_utc_table():
    # IERS Bulletin C: 36 s from 2015-07-01, 37 s from 2017-01-01 (and still in 2026).
    assert tai_minus_utc(1483228799.0) == 36
    assert tai_minus_utc(1483228800.0) == 37
    assert tai_minus_utc(1798761600.0) == 37  # 2027-01-01
    assert tai_minus_utc(0.0) == 10  # before 1972: the first value of the table
    for utc in (1483228799.5, 1483228800.0, 1700000000.25):
        assert utc_from_tai(tai_from_utc(utc)) == utc


async def test_mock_sends_tai_and_the_client_measures_its_offset_against_tai():
    mock = RotatorMockController("rot", "D")
    server = MockControllerServer(mock)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            _fid, _cnt, sec, nsec, _ = await Peer(reader, writer).frame()
            # TAI = UTC + 37 s: the header is ~37 s ahead of time.time(), not ~0 s.
            assert 30.0 < sec + nsec * 1e-9 - time.time() < 44.0
            assert abs(sec + nsec * 1e-9 - current_tai()) < 7.0
        finally:
            writer.close()
            await writer.wait_closed()
        client = CommandTelemetryClient(WireProfile.make(ROTATOR, "D"), "127.0.0.1",
                                        server.port, config_timeout=T)
        try:
            await asyncio.wait_for(client.connect(), T)
            assert client.clock_offset is not None and abs(client.clock_offset) < 7.0
        finally:
            await client.close()
    finally:
        await server.close()


# -- item 8: CONFIG before the ACK; configuration accepted only where upstream accepts it ----
async def test_enable_drives_and_config_vel_send_config_then_ack(rotator):
    _mock, peer = rotator
    frames = await peer.command(ENABLE_DRIVES, 1.0)
    assert [f[0] for f in frames] == [3, 1]  # CONFIG, then COMMAND_STATUS
    assert frames[0][2][96] == 1  # drives_enabled (offset 96 of the 97-byte Config)
    assert STATUS.unpack(frames[1][2])[0] == ACK
    assert (await peer.status(SET_STATE, ENABLE))[0] == ACK
    frames = await peer.command(CONFIG_VEL, 2.5)
    assert [f[0] for f in frames] == [3, 1]
    assert struct.unpack_from("<d", frames[0][2], 0)[0] == 2.5  # velocity_limit @0
    frames = await peer.command(CONFIG_ACCEL, 0.5)
    assert [f[0] for f in frames] == [3, 1]
    assert struct.unpack_from("<d", frames[0][2], 8)[0] == 0.5  # accel_limit @8
    # Refused: no CONFIG, a NO_ACK with the reason.
    frames = await peer.command(CONFIG_VEL, 3.6)
    assert [f[0] for f in frames] == [1]
    assert STATUS.unpack(frames[0][2])[0] == NO_ACK


@pytest.mark.parametrize("code,value,reason", [
    (CONFIG_VEL, 0.0, "velocity limit 0 not in range (0, 3.5]"),
    (CONFIG_VEL, 3.5001, "velocity limit 3.5001 not in range (0, 3.5]"),
    (CONFIG_VEL, float("nan"), "velocity limit nan not in range (0, 3.5]"),
    (CONFIG_ACCEL, -1.0, "accel limit -1 not in range (0, 1]"),
    (CONFIG_ACCEL, 1.01, "accel limit 1.01 not in range (0, 1]"),
    (0x9005, 0.0, "Requested jerk limit 0 <= 0"),
    (0x9003, -2.0, "Requested emergency accel limit -2 <= 0"),
])
async def test_config_out_of_range_no_ack(rotator, code, value, reason):
    mock, peer = rotator
    assert (await peer.status(SET_STATE, ENABLE))[0] == ACK
    version = mock.config_version
    status, _, got = await peer.status(code, value)
    assert (status, got) == (NO_ACK, reason)
    assert mock.config_version == version


async def test_config_needs_enabled_and_stationary(rotator):
    mock, peer = rotator
    status, _, reason = await peer.status(CONFIG_VEL, 1.0)  # STANDBY
    assert status == NO_ACK and reason.startswith("state=STANDBY; must be ENABLED")
    assert (await peer.status(SET_STATE, ENABLE))[0] == ACK
    assert (await peer.status(POSITION_SET, 30.0))[0] == ACK
    assert (await peer.status(SUBSTATE, MOVE_PTP))[0] == ACK
    for code in (CONFIG_VEL, CONFIG_ACCEL, 0x9004):
        status, _, reason = await peer.status(code, 0.5)
        assert status == NO_ACK
        assert reason == "substate=MOVING_POINT_TO_POINT, not STATIONARY"
    assert mock.config["velocity_limit"] == 3.5 and mock.config["accel_limit"] == 1.0

