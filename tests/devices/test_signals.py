"""What devices say about their signals (units, held or sampled) and the options that make
lazy devices announce readings by themselves for a dashboard (camera frames, spectrometer
scans)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from labbridge.devices.backends.sim import SimGaugeBackend
from labbridge.devices.base import Change
from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.furnace import Furnace
from labbridge.devices.gauges import GaugeController
from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.devices.spectrometer import Spectrometer


def test_units_and_meaning_per_device_kind():
    assert GaugeController("g", ["IG"], SimGaugeBackend()).signals()["*"] == {
        "units": "torr", "quantity": "pressure"}
    f = Furnace("f").signals()
    assert f["temperature"]["units"] == "°C" and f["setpoint"]["on_change"] is True
    assert f["output"]["units"] == "%" and f["watchdog"]["event"] is True
    assert Spectrometer("s").signals()["scan.*"]["units"] == "V"
    rot = RotatorMockController("r").signals()
    assert rot["position"]["units"] == "deg" and rot["state"]["on_change"] is True
    assert Camera("c", SimCameraBackend(4, 4)).signals()["frame"]["units"] == "counts"


class Changes:
    """Every change of a device, awaitable by signal (an event per change, no polling)."""

    def __init__(self, dev: object) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        dev.subscribe(self.queue.put_nowait)  # type: ignore[attr-defined]
        self.seen: list[Change] = []

    async def next(self, signal: str) -> Change:
        async with asyncio.timeout(10):
            while True:
                c = await self.queue.get()
                self.seen.append(c)
                if c.signal == signal:
                    return c


async def test_camera_publishes_its_latest_frame_and_it_changes():
    cam = Camera("cam", SimCameraBackend(32, 24, noise=0), publish_period=0.05)
    changes = Changes(cam)
    await cam.start()
    try:
        first = await changes.next("frame")
        second = await changes.next("frame")
    finally:
        await cam.stop()
    assert isinstance(first.value, np.ndarray) and first.value.shape == (24, 32)
    assert not np.array_equal(first.value, second.value)  # the spot moved


async def test_camera_without_publish_period_announces_only_the_count():
    cam = Camera("cam", SimCameraBackend(8, 8))
    seen: list[Change] = []
    cam.subscribe(seen.append)
    await cam.start()
    await cam.grab()
    await cam.stop()
    assert [c.signal for c in seen] == ["frames"]
    with pytest.raises(ValueError):
        Camera("cam", SimCameraBackend(8, 8), publish_period=0)


async def test_spectrometer_poll_announces_scans_without_a_client():
    spec = Spectrometer("argus", integration_time=0.02, poll_period=0.02, seed=1)
    changes = Changes(spec)
    await spec.start()
    try:
        scan = await changes.next("scan")
    finally:
        await spec.stop()
    assert set(scan.value) == set(spec.detectors)
