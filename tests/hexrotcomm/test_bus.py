"""The client-side controller model is a Device: its telemetry reaches the telemetry bus.

Two nodes from node files: one runs the mock rotator (generation D), the other the
``hexrot_controller`` device plus a notifier; a bus subscriber sees the move as
``ctl.rot.position`` messages.
"""

from __future__ import annotations

import asyncio

from labbridge.bus.subscriber import Subscriber
from labbridge.node.node import build_node
from tests.bus.helpers import until_joined

MOCK = """
node: mock
devices:
  - kind: hexrot_rotator_mock
    name: rotator
    generation: D
    config: {velocity_limit: 20.0, max_velocity_limit: 20.0, accel_limit: 40.0}
services:
  - {kind: hexrot_mock_controller, name: ctl, device: rotator, host: 127.0.0.1, port: 0}
"""

CTL = """
node: ctl
devices:
  - kind: hexrot_controller
    name: rot
    device: rotator
    generation: D
    host: 127.0.0.1
    port: {port}
    enable_drives_delay: 0
    move_pause: 0
services:
  - {{kind: notifier, name: bus, host: 127.0.0.1, port: 0, heartbeat: 0.1}}
"""


async def test_controller_telemetry_is_published_on_the_bus(tmp_path):
    (tmp_path / "mock.yaml").write_text(MOCK)
    mock_node = build_node(tmp_path / "mock.yaml")
    await mock_node.start()
    ctl_node = None
    sub = None
    try:
        port = mock_node.endpoints()[0].port
        (tmp_path / "ctl.yaml").write_text(CTL.format(port=port))
        ctl_node = build_node(tmp_path / "ctl.yaml")
        await ctl_node.start()  # the device connects on start
        rot = ctl_node.ctx.devices["rot"]
        assert rot.connected
        sub = Subscriber(ctl_node.ctx.services["bus"].pub_url, ["ctl."])
        await sub.start()
        await until_joined(sub, lambda: None, lambda t, p, m: t == "ctl.notifier.heartbeat")
        enabled = asyncio.ensure_future(sub.wait_for(
            lambda t, p, m: t == "ctl.rot.state" and p == "ENABLED", timeout=10))
        await asyncio.sleep(0)
        await asyncio.wait_for(rot.enable(), 10)
        await enabled
        arrived = asyncio.ensure_future(sub.wait_for(
            lambda t, p, m: t == "ctl.rot.position" and abs(p - 5.0) < 1e-6, timeout=10))
        await asyncio.sleep(0)
        await asyncio.wait_for(rot.move(5.0, tolerance=1e-6), 10)
        await arrived
    finally:
        if sub is not None:
            await sub.stop()
        if ctl_node is not None:
            await ctl_node.stop()
        await mock_node.stop()
