"""Generation-A CommandTelemetryServer details (spec §5.3, §5.6, §7 "Gen A")."""

from __future__ import annotations

import asyncio

import pytest

from labbridge.links.hexrotcomm.server_a import CommandTelemetryServer
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.hexrotcomm import (
    CommandDecoder,
    FrameKind,
    WireProfile,
    device_spec,
)

T = 5.0
PROFILE = WireProfile.make(device_spec("rotator", "A"), "A")


async def test_put_command_rules_and_per_code_counters():
    with pytest.raises(ValueError):
        CommandTelemetryServer(WireProfile.make(device_spec("rotator", "D"), "D"))
    srv = CommandTelemetryServer(PROFILE)
    with pytest.raises(RuntimeError, match="not started"):
        await srv.send(0x8000, [2.0])
    await srv.start()
    try:
        assert srv.command_port == srv.port + 1
        # Only the telemetry socket connected: not connected (both are needed).
        _tr, tw = await asyncio.open_connection("127.0.0.1", srv.port)
        tw.write(PROFILE.encode_frame(FrameKind.CONFIG, PROFILE.device.config.make(), 0, 1.0))
        await tw.drain()
        await asyncio.wait_for(srv.telemetry_server.connected_task, T)
        assert not srv.connected
        with pytest.raises(RuntimeError, match="not connected"):
            await srv.send(0x8000, [2.0])
        cr, cw = await asyncio.open_connection("127.0.0.1", srv.command_port)
        await asyncio.wait_for(srv.wait_connected(), T)
        with pytest.raises(ValueError):
            await srv.put_command(b"x" * 58)
        for code in (0x8000, 0x8007, 0x8000, 0x8000):
            await srv.send(code, [1.0])
        dec = CommandDecoder(PROFILE)
        got = []
        while len(got) < 4:
            dec.receive_data(await asyncio.wait_for(cr.read(1024), T))
            while (c := dec.next_event()) is not NEED_DATA:
                got.append(c)
        assert [(c.code, c.counter) for c in got] == [(0x8000, 1), (0x8007, 1), (0x8000, 2),
                                                      (0x8000, 3)]
        assert all(c.sync_pattern == 0x5555 for c in got)
        for w in (tw, cw):
            w.close()
    finally:
        await srv.close()
