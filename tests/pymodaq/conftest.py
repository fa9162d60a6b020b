"""Fixtures of the PyMoDAQ family tests: devices, a server on 127.0.0.1 port 0, clients."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQServer
from labbridge.transport.backoff import Backoff


def crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


class RecordingCamera(Camera):
    """A simulated camera that remembers the frames it produced (checksums on both sides)."""

    def __init__(self, name: str = "cam", width: int = 640, height: int = 480) -> None:
        super().__init__(name, SimCameraBackend(width, height, noise=5.0, seed=1))
        self.sent: list[np.ndarray] = []

    async def grab(self) -> list[np.ndarray]:
        frames = await super().grab()
        self.sent.append(frames[0])
        return frames


@pytest.fixture
async def server() -> AsyncIterator[PyMoDAQServer]:
    srv = PyMoDAQServer("127.0.0.1", 0, max_message=16 * 1024 * 1024)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
def stage() -> Stage:
    return Stage("stage", SimStageBackend(), units="mm")


@pytest.fixture
def camera() -> RecordingCamera:
    return RecordingCamera()


def fast_backoff() -> Backoff:
    return Backoff(initial=0.01, maximum=0.05)
