"""Both generations pass the same behaviour tests against the rotator mock on loopback.

connect, receive config and telemetry, enable, move and arrive within tolerance, stop,
disconnect and reconnect; limits checked locally; second client refused.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from labbridge.links.hexrotcomm.controller import LimitError
from labbridge.protocol.hexrotcomm import ControllerState, EnabledSubstate
from tests.hexrotcomm.helpers import T, rotator_rig, wait_for_signal

GENERATIONS = ["A", "D"]


@pytest.mark.parametrize("gen", GENERATIONS)
async def test_connect_enable_move_stop_disconnect_reconnect(gen):
    async with rotator_rig(gen) as rig:
        ctrl, mock = rig.ctrl, rig.mock
        # connect: config and telemetry received
        assert ctrl.connected
        assert ctrl.config.upper_pos_limit == 90.0 and ctrl.config.velocity_limit == 10.0
        assert ctrl.state == (ControllerState.OFFLINE if gen == "A" else ControllerState.STANDBY)
        changes = []
        ctrl.subscribe(changes.append)
        # enable
        await asyncio.wait_for(ctrl.enable(), T)
        assert ctrl.state == ControllerState.ENABLED
        assert mock.state == ControllerState.ENABLED
        if gen == "D":
            assert ctrl.config.drives_enabled is True  # ENABLE_DRIVES re-sent CONFIG
        # move and arrive within tolerance
        await asyncio.wait_for(ctrl.move(10.0, tolerance=1e-6), T)
        assert abs(ctrl.telemetry.current_pos - 10.0) <= 1e-6
        assert int(ctrl.telemetry.enabled_substate) == EnabledSubstate.STATIONARY
        positions = [c.value for c in changes if c.signal == "position"]
        assert len(positions) > 3 and positions[-1] == pytest.approx(10.0)
        assert {c.signal for c in changes} >= {"state", "position", "velocity"}
        # the velocity limit held in every telemetry frame
        assert max(abs(c.value) for c in changes if c.signal == "velocity") <= 10.0 + 1e-9
        # stop: start a long move, stop it, it halts short of the target
        await ctrl.move(-5.0, wait=False)
        await ctrl.stop_motion()
        await asyncio.wait_for(ctrl.wait_stationary(), T)
        await ctrl.link.next_telemetry()
        stopped_at = ctrl.telemetry.current_pos
        assert ctrl.telemetry.demand_vel == 0.0
        assert -5.0 + 0.5 < stopped_at <= 10.0
        # disconnect and reconnect
        await ctrl.disconnect()
        assert not ctrl.connected
        await asyncio.wait_for(ctrl.connect(), T)
        assert ctrl.connected and ctrl.state == ControllerState.ENABLED
        await ctrl.link.next_telemetry()
        assert ctrl.telemetry.current_pos == pytest.approx(stopped_at)
        # and it still moves after the reconnection
        await asyncio.wait_for(ctrl.move(1.0, tolerance=1e-6), T)
        # back to standby
        await asyncio.wait_for(ctrl.standby(), T)
        assert ctrl.state == ControllerState.STANDBY


@pytest.mark.parametrize("gen", GENERATIONS)
async def test_out_of_limit_command_refused_locally_naming_the_limit(gen):
    async with rotator_rig(gen) as rig:
        ctrl, mock = rig.ctrl, rig.mock
        await asyncio.wait_for(ctrl.enable(), T)
        sent = mock.commands_received
        with pytest.raises(LimitError, match="upper_pos_limit = 90") as ei:
            await ctrl.move(120.0)
        assert ei.value.limit == "upper_pos_limit"
        with pytest.raises(LimitError, match="lower_pos_limit = -90"):
            await ctrl.move(-91.0)
        # gen D: the CONFIG's max_velocity_limit; gen A (64-byte config): velocity_limit
        limit = "max_velocity_limit" if gen == "D" else "velocity_limit"
        with pytest.raises(LimitError, match=rf"\(0, {limit} = 10\]"):
            await ctrl.configure_velocity(50.0)
        with pytest.raises(LimitError):
            await ctrl.move(float("nan"))
        assert mock.commands_received == sent  # nothing was sent


async def test_gen_d_controller_refuses_out_of_limit_with_no_ack_reason():
    from labbridge.links.hexrotcomm.common import CommandRejected

    async with rotator_rig("D") as rig:
        await rig.ctrl.enable()
        with pytest.raises(CommandRejected, match=r"position 120 not in range \[-90, 90\]"):
            await rig.ctrl.send("POSITION_SET", [120.0])
        with pytest.raises(CommandRejected, match=r"velocity limit 50 not in range \(0, 3.5\]"):
            await rig.ctrl.send("CONFIG_VEL", [50.0])


async def test_gen_a_controller_ignores_out_of_limit_silently(caplog):
    caplog.set_level(logging.WARNING)
    async with rotator_rig("A") as rig:
        ctrl, mock = rig.ctrl, rig.mock
        await ctrl.enable()
        rejected = mock.commands_rejected
        assert await ctrl.send("POSITION_SET", [120.0]) is None  # no feedback at all
        # The mock handles commands in order: a later accepted command proves it saw ours.
        await ctrl.move(2.0)
        assert mock.commands_rejected == rejected + 1
        assert "no feedback in generation A" in caplog.text
        assert ctrl.telemetry.current_pos == pytest.approx(2.0)


async def test_gen_d_lost_connection_faults_with_reason():
    async with rotator_rig("D") as rig:
        waiter = asyncio.ensure_future(
            wait_for_signal(rig.ctrl, "fault", lambda v: "Lost connection" in v))
        await rig.side.server.close_client()
        await waiter
        assert rig.ctrl.state == ControllerState.FAULT
        assert rig.ctrl.error_code.name == "CONNECTION_LOST"
        with pytest.raises(ConnectionError, match="Lost connection"):
            await rig.ctrl.send("SET_STATE", [2.0])
        # recovery is an explicit reconnect
        await asyncio.wait_for(rig.ctrl.connect(), T)
        assert rig.ctrl.state == ControllerState.STANDBY


@pytest.mark.parametrize("gen", GENERATIONS)
async def test_second_client_refused_while_first_unaffected(gen):
    async with rotator_rig(gen) as rig:
        ctrl = rig.ctrl
        if gen == "D":
            ports = [rig.side.port]
        else:
            ports = [ctrl.link.port, ctrl.link.command_port]
        for port in ports:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(r.read(100), T) == b""  # closed at once, no data
            w.close()
            await w.wait_closed()
        # the first is unaffected: telemetry still flows and commands still work
        await asyncio.wait_for(ctrl.link.next_telemetry(), T)
        await asyncio.wait_for(ctrl.enable(), T)
        assert ctrl.state == ControllerState.ENABLED
        servers = ([rig.side.server] if gen == "D"
                   else [ctrl.link.telemetry_server, ctrl.link.command_server])
        assert all(s.rejected_count == 1 for s in servers)
