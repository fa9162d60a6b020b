"""The convenience methods of RemoteLaser and QtegraSpectrometer that no other test used
(review of session 2): each one against a real node on loopback."""

from __future__ import annotations

import asyncio

import pytest

from labbridge.links.pychron.client import ErrorReply
from labbridge.links.pychron.clients import QtegraSpectrometer, RemoteLaser
from tests.hardware.helpers import example_node, tcp_port


async def test_remote_laser_z_power_and_abort(tmp_path):
    async with example_node("laser.yaml", tmp_path) as node:
        async with RemoteLaser.connect("127.0.0.1", tcp_port(node)) as laser:
            await laser.enable()
            await laser.set_power(20)
            # The output follows the setpoint with a lag (power_lag); it rises from 0.
            # Remote state has no event: poll it, as the real client does, with a deadline.
            async with asyncio.timeout(10):
                power = await laser.read_power()
                while power <= 0.0:
                    await asyncio.sleep(0.02)
                    power = await laser.read_power()
            assert 0.0 < power <= 20.0 * 75 / 100 + 1e-9
            await laser.set_z(1.5)
            await laser.wait_stopped(poll=0.02, timeout=20)
            assert (await laser.position())[2] == 1.5
            # A long move, aborted: the stage stops where it is, short of the target.
            await laser.move_to(20.0, 0.0)
            assert await laser.moving()
            await laser.abort()
            assert not await laser.moving()
            x, _y, _z = await laser.position()
            assert x < 20.0
            await laser.disable()


async def test_qtegra_client_setters_and_getters(tmp_path):
    async with example_node("spectrometer.yaml", tmp_path) as node:
        async with QtegraSpectrometer.connect("127.0.0.1", tcp_port(node), udp=False) as spec:
            await spec.blank_beam(True)
            await spec.blank_beam(False)
            await spec.set_deflection("H1", 12.5)
            assert await spec.deflection("H1") == 12.5
            assert await spec.gain("AX") > 0
            await spec.set_parameter("Trap Current Readback", 180)
            assert await spec.parameter("Trap Current Readback") == "180"
            await spec.set_high_voltage(4200)
            assert await spec.high_voltage() == 4200.0
            await spec.open("Valve2")
            assert await spec.valve_state("Valve2") is True
            await spec.close_valve("Valve2")
            assert await spec.valve_state("Valve2") is False
            with pytest.raises(ErrorReply):
                await spec.deflection("NOPE")
