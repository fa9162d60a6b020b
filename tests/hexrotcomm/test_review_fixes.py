"""Review fixes: bad state values in telemetry, big command chunks, decoder errors in the mock.

* The controller model tolerates a telemetry state outside :class:`ControllerState` (or NaN)
  and a NaN ``enabled_substate``: it reports them as unknown and keeps working.
* :class:`CommandDecoder` only ever holds one partial command, so a valid stream read in big
  chunks (the selector transport reads up to 256 KiB at a time) never overflows its buffer.
* The generation-D mock closes a connection whose decoder raises, answers what it decoded
  first, and keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm import mock_server
from labbridge.links.hexrotcomm.controller import StateError
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.hexrotcomm import ROTATOR, CommandStatusCode, Generation, WireProfile
from labbridge.protocol.hexrotcomm.framing import (
    DEFAULT_MAX_BUFFER,
    CommandDecoder,
    FrameDecoder,
    FrameKind,
)
from tests.hexrotcomm.helpers import T, rotator_rig, wait_for_signal

PROFILE_D = WireProfile.make(ROTATOR, Generation.D)
#: Not GUI or CSC: the mock answers NO_ACK at once, without touching its state machine.
STRANGER = 7


def _commands(n: int, start: int = 0) -> list[bytes]:
    layout = PROFILE_D.command
    return [layout.encode(layout.record(STRANGER, i, 0x8000, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            for i in range(start, start + n)]


STATUS_SIZE = len(PROFILE_D.encode_status(0, CommandStatusCode.ACK, 0.0, "", 0.0))


async def _statuses(reader: asyncio.StreamReader, n: int) -> list[int]:
    """Read ``n`` COMMAND_STATUS frames; return their counters."""
    data = await asyncio.wait_for(reader.readexactly(n * STATUS_SIZE), T)
    dec = FrameDecoder(PROFILE_D)
    dec.receive_data(data)
    frames = []
    while (f := dec.next_event()) is not NEED_DATA:
        frames.append(f)
    assert [f.kind for f in frames] == [FrameKind.STATUS] * n
    return [f.header.counter for f in frames]


# -- 2. tolerant state conversion ----------------------------------------------------------------
@pytest.mark.parametrize("generation", ["D", "A"])
async def test_unknown_or_nan_state_is_reported_and_the_controller_keeps_working(
        generation, caplog):
    async with rotator_rig(generation) as rig:
        ctrl, mock = rig.ctrl, rig.mock
        mock.telemetry["state"] = 9.0  # no such ControllerState
        await wait_for_signal(ctrl, "state", lambda v: v == "UNKNOWN(9.0)")
        assert ctrl.state is None
        assert ctrl.snapshot()["state"] == "UNKNOWN(9.0)"
        with pytest.raises(StateError, match=r"UNKNOWN\(9\.0\)"):
            await asyncio.wait_for(ctrl.enable(), T)
        with pytest.raises(StateError, match=r"UNKNOWN\(9\.0\)"):
            await asyncio.wait_for(ctrl.move(1.0), T)

        mock.telemetry["state"] = math.nan
        mock.telemetry["enabled_substate"] = math.nan
        await wait_for_signal(ctrl, "state", lambda v: v == "UNKNOWN(nan)")  # same frame
        assert ctrl.snapshot()["state"] == "UNKNOWN(nan)"
        assert ctrl.snapshot()["enabled_substate"] is None
        assert ctrl.connected and ctrl.fault_reason is None

        # Logged once per bad stretch, not on every frame.
        await ctrl.link.next_telemetry()
        await ctrl.link.next_telemetry()
        bad = [r for r in caplog.records if "is not a valid value" in r.getMessage()]
        assert sum("telemetry state" in r.getMessage() for r in bad) == 1
        assert sum("telemetry enabled_substate" in r.getMessage() for r in bad) == 1

        # Valid values again: the model follows, enables and moves.
        mock.telemetry["state"] = float(mock.state)
        mock.telemetry["enabled_substate"] = 0.0
        await wait_for_signal(ctrl, "state", lambda v: v == mock.state.name)
        await asyncio.wait_for(ctrl.enable(), T)
        await asyncio.wait_for(ctrl.move(1.0, tolerance=1e-6), T)
        assert ctrl.snapshot()["state"] == "ENABLED"


# -- 3. CommandDecoder holds only a partial command ---------------------------------------------
def test_command_decoder_completes_the_partial_command_then_decodes_in_place():
    cmds = _commands(5000)  # 300 000 bytes, more than the 256 KiB buffer
    stream = b"".join(cmds)
    assert len(stream) - 10 > DEFAULT_MAX_BUFFER
    dec = CommandDecoder(PROFILE_D)
    dec.receive_data(stream[:10])  # a partial command is held...
    dec.receive_data(memoryview(stream)[10:-7])  # ...then one big chunk arrives
    assert len(dec._buf) == PROFILE_D.command.size - 7
    dec.receive_data(bytearray(stream[-7:]))
    out = []
    while (cmd := dec.next_event()) is not NEED_DATA:
        out.append(cmd)
    assert [c.counter for c in out] == list(range(5000))
    assert out == [PROFILE_D.command.decode(c) for c in cmds]
    assert not dec.pending
    dec.eof()


async def test_mock_answers_a_big_chunk_that_completes_a_partial_command():
    srv = MockControllerServer(RotatorMockController("rot", Generation.D))
    srv.send_config = False  # only command statuses come back
    await srv.start()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), T)
        await asyncio.wait_for(srv.server.wait_connected(), T)
        cmds = _commands(5000)
        w.write(cmds[0] + cmds[1][:10])  # answered; 10 bytes of the next command are held
        await w.drain()
        assert await _statuses(r, 1) == [0]
        # How the kernel splits a stream is not ours to choose: hand the mock one big read,
        # as the event loop does (up to 256 KiB per recv, more with uvloop).
        rest = cmds[1][10:] + b"".join(cmds[2:])
        assert len(rest) + 10 > DEFAULT_MAX_BUFFER
        protocol = srv.server._gate.inner
        protocol.data_received(rest)
        assert await _statuses(r, 4999) == list(range(1, 5000))
        # The same connection goes on working over the socket.
        w.write(b"".join(_commands(3, start=5000)))
        await w.drain()
        assert await _statuses(r, 3) == [5000, 5001, 5002]
        w.close()
        await w.wait_closed()
    finally:
        await srv.close()


async def test_mock_closes_a_connection_whose_decoder_fails_and_keeps_serving(
        monkeypatch, caplog):
    # A decoder with a buffer smaller than one command fails on any partial command.
    monkeypatch.setattr(mock_server, "CommandDecoder",
                        lambda profile: CommandDecoder(profile, max_buffer=8))
    srv = MockControllerServer(RotatorMockController("rot", Generation.D))
    srv.send_config = False
    await srv.start()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), T)
        await asyncio.wait_for(srv.server.wait_connected(), T)
        cmds = _commands(2)
        w.write(cmds[0] + cmds[1][:30])
        await w.drain()
        assert await _statuses(r, 1) == [0]  # what was decoded is answered first
        assert await asyncio.wait_for(r.read(), T) == b""  # then the mock closes
        w.close()
        await w.wait_closed()
        await asyncio.wait_for(srv.server.wait_disconnected(), T)
        msgs = [rec.getMessage() for rec in caplog.records]
        assert any("closing the connection" in m and "buffer limit" in m for m in msgs)
        assert not any("data_received() call failed" in m for m in msgs)
        assert not any(rec.levelno >= logging.ERROR for rec in caplog.records)

        # The server still serves a new connection.
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), T)
        await asyncio.wait_for(srv.server.wait_connected(), T)
        w.write(_commands(1, start=7)[0])
        await w.drain()
        assert await _statuses(r, 1) == [7]
        w.close()
        await w.wait_closed()
    finally:
        await srv.close()
