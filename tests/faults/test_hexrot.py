"""A hexrotcomm generation-D link whose telemetry stalls (issue 16; ADR 0046, 0163).

The mock rotator controller (telemetry at 50 Hz) runs in a namespace; the CSC-side
``HexrotController`` runs here. A partition stops the telemetry while the TCP connection stays
open on both ends. Documented behaviour (docs/hexrotcomm.md): the link goes to FAULT with
CONNECTION_LOST and a reason, the command in flight fails, and ``connect()`` is the way back;
nothing is re-sent, and a command given up on is not delivered when the link returns.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from labbridge.links.hexrotcomm.common import LinkFault
from labbridge.links.hexrotcomm.controller import HexrotController
from labbridge.protocol.hexrotcomm import WireProfile, device_spec
from labbridge.protocol.hexrotcomm.structs import ControllerState, ErrorCode
from tests.faults.conftest import elapsed

pytestmark = pytest.mark.faults

NODE = """
node: rotator-mock
devices:
  - kind: hexrot_rotator_mock
    name: rotator
    generation: D
    telemetry_hz: 50
    config: {velocity_limit: 3.5, accel_limit: 1.0, upper_pos_limit: 90, lower_pos_limit: -90}
services:
  - {kind: hexrot_mock_controller, name: ctl, device: rotator, host: "@HOST@", port: 0}
"""

STALL = 1.0  # telemetry_timeout of the client under test
ACK = 3.0


async def test_telemetry_stall(netns, start_node, outcome):
    out = outcome("hexrot-telemetry-stall")
    node = await start_node(netns, NODE)
    profile = WireProfile.make(device_spec("rotator", "D"), "D")
    rot = HexrotController("rot", profile, netns.ns_ip, node.port("ctl"), autoconnect=False,
                           connect_timeout=5, config_timeout=5, ack_timeout=ACK,
                           telemetry_timeout=STALL, enable_drives_delay=0.1, move_pause=0.05)
    faulted = asyncio.Event()
    rot.subscribe(lambda ch: faulted.set() if ch.signal == "fault" and ch.value else None)
    try:
        await rot.connect()
        await rot.enable()
        assert rot.state is ControllerState.ENABLED
        position = rot.telemetry.current_pos
        netns.partition()
        t_fault = time.monotonic()
        # A move issued into the stall: it must end with an error, not hang, and never run.
        with pytest.raises((LinkFault, ConnectionError, TimeoutError)) as info:
            async with asyncio.timeout(ACK + STALL + 10):
                await rot.move(position + 10.0, wait=False)
        async with asyncio.timeout(STALL + 10):
            await faulted.wait()
        out.detected = elapsed(t_fault)
        assert rot.state is ControllerState.FAULT
        assert rot.error_code is ErrorCode.CONNECTION_LOST
        assert "No telemetry" in (rot.fault_reason or ""), rot.fault_reason
        assert not rot.connected
        out.check(f"FAULT, CONNECTION_LOST: {rot.fault_reason!r}")
        out.check(f"the move issued into the stall failed: {type(info.value).__name__}")
        netns.heal()
        t_heal = time.monotonic()
        # connect() is the documented way back, and the operator's to repeat: the mock is a
        # one-client server that still holds our dead connection until its next retransmission
        # meets our reset (after the partition, TCP's backed-off timer), and until then it
        # turns a new connection away.
        attempts = 0
        async with asyncio.timeout(45):
            while True:
                attempts += 1
                try:
                    await rot.connect()
                    break
                except LinkFault:
                    await asyncio.sleep(0.5)
        out.recovered = elapsed(t_heal)
        assert rot.connected and rot.state is not ControllerState.FAULT
        # The move given up on was never delivered: after a few frames the controller has
        # not moved and is not moving to the old target.
        for _ in range(10):
            async with asyncio.timeout(5):
                tel = await rot.link.next_telemetry()
        assert abs(tel.current_pos - position) < 1e-6
        assert abs(tel.demand_pos - position) < 1e-6
        out.check("the move given up on never reached the controller")
        out.happened = (f"no frame for {STALL:g} s: FAULT (CONNECTION_LOST, 'No telemetry ...'), "
                        "the move in flight failed; `connect()` after the heal brought it back "
                        "(as documented: no automatic reconnect; the one-client mock turns "
                        "new connections away until it notices the old one is dead)")
        out.numbers = {"telemetry_timeout": STALL, "ack_timeout": ACK,
                       "connect_attempts": attempts}
    finally:
        await rot.disconnect()
