"""Laser node: stage that takes time to move, power, holes, errors, concurrency."""

from __future__ import annotations

import asyncio

import pytest

from labbridge.devices.laser import Laser
from labbridge.links.pychron.client import ErrorReply
from labbridge.links.pychron.clients import RemoteLaser
from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.laser import LaserCommands
from labbridge.links.pychron.server import PychronCommandServer
from tests.access_helpers import gate_for
from tests.hardware.helpers import FakeClock, example_node, tcp_port
from tests.pychron.server_helpers import ask_like_pychron, ask_udp

CALLER = Caller("10.0.0.9", "plain")


async def _ask(disp: Dispatcher, text: str) -> str:
    result = disp.dispatch(text, CALLER)
    return result if isinstance(result, str) else await result


def _laser(clock: FakeClock, **kw) -> tuple[Laser, Dispatcher]:
    laser = Laser("co2", clock=clock, seed=1, **kw)
    return laser, Dispatcher([LaserCommands(laser)], gate_for("10.0.0.0/8"))


async def test_stage_moves_take_time_and_drive_moving_tells():
    clock = FakeClock()
    _dev, disp = _laser(clock, speed=5.0, z_speed=1.0)
    assert await _ask(disp, "GetPosition") == "0.00000,0.00000,0.00000"
    assert await _ask(disp, "SetXY 3,4") == "OK"  # 5 mm at 5 mm/s: one second
    assert await _ask(disp, "GetDriveMoving") == "OK"
    assert await _ask(disp, "IsReady") == "False"
    clock.advance(0.5)
    assert await _ask(disp, "GetPosition") == "1.50000,2.00000,0.00000"  # half way, in line
    clock.advance(0.5)
    assert await _ask(disp, "GetDriveMoving") == "False"
    assert await _ask(disp, "GetPosition") == "3.00000,4.00000,0.00000"
    assert await _ask(disp, "SetZ 2") == "OK"
    clock.advance(1.0)
    assert await _ask(disp, "GetDriveMoving") == "OK"
    clock.advance(1.0)
    assert await _ask(disp, "GetPosition") == "3.00000,4.00000,2.00000"
    assert await _ask(disp, "SetX -2") == "OK"
    assert await _ask(disp, "SetY 4") == "OK"
    clock.advance(10)
    assert await _ask(disp, "GetPosition") == "-2.00000,4.00000,2.00000"
    # JSON form.
    assert await _ask(disp, '{"command": "SetXY", "value": "0,0"}') == "OK"
    clock.advance(0.2)
    x, y, _z = (float(v) for v in (await _ask(disp, '{"command": "GetPosition"}')).split(","))
    assert -2 < x < 0 and 0 < y < 4


async def test_holes_patterns_and_abort():
    clock = FakeClock()
    _dev, disp = _laser(clock, holes=10, hole_spacing=2.5)
    assert await _ask(disp, "GoToHole 1,False") == "OK"
    clock.advance(100)
    assert await _ask(disp, "GetPosition") == "-11.25000,11.25000,0.00000"
    assert await _ask(disp, "GoToHole 100,True") == "OK"
    assert await _ask(disp, "GetDriveMoving") == "OK"
    assert await _ask(disp, "AbortPattern") == "OK"  # stops the drive where it is
    assert await _ask(disp, "GetDriveMoving") == "False"
    assert await _ask(disp, "GoToHole 101,False") == \
        "ERROR 104 : Invalid sample holder. hole 101 is not in the holder"
    assert await _ask(disp, "DoPattern spiral,2") == "OK"
    assert await _ask(disp, "IsPatterning") == "OK"
    clock.advance(2.5)
    assert await _ask(disp, "IsPatterning") == "False"


async def test_power_follows_the_setpoint_only_when_enabled():
    clock = FakeClock()
    laser, disp = _laser(clock, power_lag=0.5)
    assert await _ask(disp, "SetLaserPower 20") == "OK"
    clock.advance(5)
    assert float(await _ask(disp, "ReadLaserPower")) == 0.0
    assert await _ask(disp, "Enable") == "OK"
    clock.advance(0.5)
    p = float(await _ask(disp, "ReadLaserPower"))
    assert 10 < p < 15  # one lag constant: about 63 %
    clock.advance(5)
    assert float(await _ask(disp, "ReadLaserPower")) == pytest.approx(20, rel=0.02)
    assert await _ask(disp, "SetLaserOutput 15,W") == "OK"
    assert laser.requested_power == pytest.approx(20.0)  # 15 W of 75 W
    assert await _ask(disp, "Disable") == "OK"
    clock.advance(10)
    assert float(await _ask(disp, "ReadLaserPower")) == 0.0


async def test_errors():
    clock = FakeClock()
    _laser_dev, disp = _laser(clock, interlocked=True)
    assert await _ask(disp, "Enable") == "ERROR 102 : Laser failed to enable interlock open"
    assert await _ask(disp, "SetXY 100,0") == \
        "ERROR 108 : positioning error. x=100.0 outside -25.0..25.0"
    assert await _ask(disp, "SetXY 1") == "ERROR 004 : invalid arguments: SetXY 1"
    assert await _ask(disp, "SetXY a,b") == "ERROR 004 : invalid arguments: SetXY a,b"
    assert await _ask(disp, "SetLaserPower 150") == \
        "ERROR 004 : invalid arguments: SetLaserPower 150"
    assert await _ask(disp, "SetMotor warp,1") == "ERROR 107 : no motor named warp available"
    assert await _ask(disp, "SetMotor zoom,30") == "OK"
    assert await _ask(disp, "Fire") == "ERROR 003 : invalid command: Fire"


async def test_laser_node_serves_clients_and_survives_garbage(tmp_path):
    async with example_node("laser.yaml", tmp_path) as node:
        port = tcp_port(node)
        for junk in (b"\x00\xff\r", b"{]\r", b"SetXY nan,nan\r", b"\r"):
            reply, closed = await ask_like_pychron(port, junk)
            assert closed and reply.startswith(b"ERROR 00"), (junk, reply)
        async with RemoteLaser.connect("127.0.0.1", port) as laser:
            await laser.enable()
            await laser.set_power(10)
            await laser.goto_hole(45)
            assert await laser.moving()
            await laser.wait_stopped(poll=0.02, timeout=20)
            x, y, z = await laser.position()
            assert (x, y, z) == (4 * 2.5 - 11.25, 11.25 - 4 * 2.5, 0.0)  # row 4, column 4
            with pytest.raises(ErrorReply):
                await laser.move_to(99, 0)
            await laser.disable()
        assert (await ask_udp(port, b"GetDriveMoving")) == b"False"


async def test_slow_enable_never_blocks_another_client():
    laser = Laser("co2", seed=1)
    gate = laser.block_enable()
    server = PychronCommandServer(Dispatcher([LaserCommands(laser)]), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port and laser.enable_waiting is not None
        slow = asyncio.ensure_future(ask_like_pychron(server.port, b"Enable\r"))
        assert await asyncio.wait_for(laser.enable_waiting.get(), 5) == "enable"
        reply, _ = await ask_like_pychron(server.port, b"GetPosition\r")
        assert reply == b"0.00000,0.00000,0.00000"
        reply, _ = await ask_like_pychron(server.port, b"SetXY 1,1\r")
        assert reply == b"OK"
        assert not slow.done() and not laser.enabled
        gate.set()
        assert (await asyncio.wait_for(slow, 5))[0] == b"OK"
        assert laser.enabled
    finally:
        await server.stop()
