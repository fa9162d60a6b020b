"""A PyMoDAQ link reset in the middle of a frame (issue 16; ADR 0054).

The distant computer (a simulated 1024 x 1024 uint16 camera served by ``pymodaq_client``,
G3) runs in a namespace and connects to the main computer's ``PyMoDAQServer`` here. The link
is slowed (tc tbf) so that a 2 MiB frame takes about two seconds, and reset (nftables ``reject
with tcp reset`` both ways) while the frame is on the wire. What must hold: the grab fails
with a clear error, not a hang; the client reconnects by itself once the link is back and
restores its session (hello, then its settings including one the server changed before the
fault); the next grab returns a whole frame.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from labbridge.access import Role
from labbridge.links.pymodaq.server import PyMoDAQServer, RemoteDetector
from tests.access_helpers import gate_for
from tests.faults.conftest import elapsed

pytestmark = pytest.mark.faults

NODE = """
node: camera-node
devices:
  - {kind: camera, name: cam, width: 1024, height: 1024, dtype: uint16, noise: 10,
     backend: {kind: sim}}
services:
  - kind: pymodaq_client
    name: camera-client
    device: cam
    server: "@SERVER@"
    generation: g3
    reconnect: {initial: 0.2, maximum: 1.0}
"""


async def test_reset_during_frame_transfer(netns, start_node, outcome):
    out = outcome("pymodaq-reset-during-frame")
    det = RemoteDetector("remote_detector", timeout=20.0)
    # The main computer lets the camera's computer (the namespace) register a module.
    server = PyMoDAQServer(netns.host_ip, 0, detector=det, hello_timeout=5.0,
                           gate=gate_for(f"{netns.ns_ip}/32", role=Role.OPERATOR))
    await server.start()
    assert server.port is not None
    try:
        await start_node(netns, NODE.replace("@SERVER@", f"{netns.host_ip}:{server.port}"))
        await det.wait_connected(15)
        await det.grab()  # answered after the Infos that follows the hello (one stream)
        first_infos = det.settings_xml  # the first hello's Infos
        assert first_infos is not None and det.settings["exposure_ms"] == 10.0
        # The main computer changes a setting; a grab after it proves it was applied (the
        # client runs commands in order).
        det.set_setting("exposure_ms", 42.0)
        frame = (await det.grab())[0]
        assert frame.shape == (1024, 1024) and frame.dtype == np.uint16

        settings = asyncio.Event()
        det.subscribe(lambda ch: settings.set() if ch.signal == "settings" else None)
        netns.slow("8mbit", burst="32kb", latency="400ms")
        grab = asyncio.create_task(det.grab())
        base = netns.sent_bytes()
        deadline = time.monotonic() + 10
        while netns.sent_bytes() - base < 512 * 1024:  # a quarter of the frame is through
            assert not grab.done(), grab
            assert time.monotonic() < deadline, "the frame did not start to flow"
            await asyncio.sleep(0.02)
        netns.reset_peer(server.port)
        t_fault = time.monotonic()
        with pytest.raises(ConnectionError) as info:
            async with asyncio.timeout(30):
                await grab
        out.detected = elapsed(t_fault)
        out.check(f"the grab in flight failed: {type(info.value).__name__}: {info.value}")
        assert not det.connected

        netns.heal()
        t_heal = time.monotonic()
        async with asyncio.timeout(30):
            await det.wait_connected()
            while det.settings_xml is None or det.settings_xml is first_infos:
                await settings.wait()  # Infos follows the hello on the new connection
                settings.clear()
        assert det.settings["exposure_ms"] == 42.0, det.settings
        reconnected = elapsed(t_heal)
        frame = (await det.grab())[0]
        out.recovered = elapsed(t_heal)
        assert frame.shape == (1024, 1024) and frame.dtype == np.uint16
        out.check("reconnected by itself; hello and settings (exposure_ms=42) restored")
        out.check("the next grab returned a whole 1024x1024 frame")
        out.numbers = {"reconnected_after_heal": reconnected,
                       "connections_accepted": server.accepted}
        out.happened = ("the reset failed the grab at once (`RemoteUnavailable`); the client "
                        "retried with backoff while resets refused it, reconnected after the "
                        "heal, said hello and sent its settings (with the changed exposure); "
                        "the next grab succeeded")
    finally:
        await server.stop()
