"""Small fixes found while wiring access (issue 12).

* The generation-D client runs coroutine telemetry callbacks as tasks, at most
  ``MAX_CALLBACK_TASKS`` at once: a slow callback no longer piles up one task per frame.
* The EPICS face maps rotator-like mocks (one position) and skips hexapods (six axes) instead
  of binding a hexapod as a rotator whose position reads NaN.
"""

from __future__ import annotations

import asyncio
import logging

from labbridge.devices.hexrot.hexapod import HexapodMockController
from labbridge.devices.hexrot.mock import RotatorMockController, SimpleMockController
from labbridge.links.epics.mapping import RotatorBinding, binding_for
from labbridge.links.hexrotcomm import client as client_mod
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.hexrotcomm import Generation, WireProfile
from tests.hexrotcomm.helpers import T


async def test_coroutine_telemetry_callbacks_are_bounded(caplog):
    mock = RotatorMockController("rot", "D", telemetry_interval=0.002)
    server = MockControllerServer(mock)
    await server.start()
    release = asyncio.Event()
    started = 0
    running = 0
    most = 0

    async def slow(frame):
        nonlocal started, running, most
        started += 1
        running += 1
        most = max(most, running)
        try:
            await release.wait()
        finally:
            running -= 1

    client = CommandTelemetryClient(WireProfile.make(mock.spec, Generation.D), "127.0.0.1",
                                    server.port, on_telemetry=slow)
    caplog.set_level(logging.INFO, logger="labbridge.links.hexrotcomm.client")
    try:
        await asyncio.wait_for(client.connect(), T)
        limit = client_mod.MAX_CALLBACK_TASKS
        async with asyncio.timeout(T):
            while client.callbacks_dropped < 3 * limit:  # many frames while all are stuck
                await client.next_telemetry()
        assert most == limit and started == limit
        assert len(client._cb_tasks) == limit
        # Once they finish, telemetry reaches the callback again.
        release.set()
        async with asyncio.timeout(T):
            while started <= limit:
                await client.next_telemetry()
        assert most == limit
    finally:
        await client.close()
        await server.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("still running" in m for m in messages) == 1  # one line when dropping starts
    assert any("keeps up again" in m for m in messages)


def test_epics_binds_rotator_like_mocks_and_skips_hexapods():
    assert isinstance(binding_for(RotatorMockController("rot", "D")), RotatorBinding)
    mock = SimpleMockController("simple", "D")
    mock.telemetry_record()  # one telemetry tick: the simple mock now has a position
    simple = binding_for(mock)
    assert isinstance(simple, RotatorBinding)
    assert simple.state()["simple:POSITION"] == 0.001  # a number, not NaN
    assert binding_for(HexapodMockController("hexapod", "D")) is None
