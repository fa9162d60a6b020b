"""A 2-D camera over a backend; the simulated backend draws a moving spot on noise.

This is what a PyMoDAQ ``DAQ_Viewer`` 2D detector serves (spec pymodaq.md §4.2 ``Send Data
2D``): :meth:`Camera.grab` returns one frame per channel. The simulated spot moves on a circle,
one step per frame, so consecutive frames differ and a viewer can see motion; the noise comes
from a small bank of precomputed frames so that large frames stay cheap to produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any, Protocol

import numpy as np

from labbridge.devices.base import Device

log = logging.getLogger(__name__)

_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "float32": np.float32, "float64": np.float64}


class CameraBackend(Protocol):
    async def snap(self) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class SimCameraBackend:
    """Gaussian spot of ``sigma`` pixels and ``amplitude`` counts over ``offset`` plus noise.

    ``noise`` is the standard deviation of Gaussian noise (0 = none); ``seed`` makes the
    sequence reproducible. Integer dtypes are clipped to their range.
    """

    NOISE_BANK = 4

    def __init__(self, width: int = 640, height: int = 480, *, dtype: str = "uint16",
                 amplitude: float = 1000.0, offset: float = 100.0, sigma: float = 20.0,
                 noise: float = 10.0, step_deg: float = 6.0, seed: int | None = 0) -> None:
        if width <= 0 or height <= 0:
            raise ValueError("width and height must be positive")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}")
        self.width, self.height = width, height
        self.dtype = np.dtype(_DTYPES[dtype])
        self.amplitude, self.offset, self.sigma = amplitude, offset, sigma
        self.step = math.radians(step_deg)
        self.frame_index = 0
        rng = np.random.default_rng(seed)
        self._noise = [rng.normal(0.0, noise, (height, width)).astype(np.float32)
                       if noise > 0 else None for _ in range(self.NOISE_BANK)]
        self._x = np.arange(width, dtype=np.float32)
        self._y = np.arange(height, dtype=np.float32)

    def spot_center(self, index: int) -> tuple[float, float]:
        """(x, y) of the spot in frame ``index``."""
        a = index * self.step
        return (self.width / 2 + 0.3 * self.width * math.cos(a),
                self.height / 2 + 0.3 * self.height * math.sin(a))

    async def snap(self) -> np.ndarray:
        cx, cy = self.spot_center(self.frame_index)
        gx = np.exp(-((self._x - cx) ** 2) / (2 * self.sigma**2))
        gy = np.exp(-((self._y - cy) ** 2) / (2 * self.sigma**2))
        img = np.outer(gy * self.amplitude, gx)
        img += self.offset
        noise = self._noise[self.frame_index % self.NOISE_BANK]
        if noise is not None:
            img += noise
        self.frame_index += 1
        if self.dtype.kind in "ui":
            info = np.iinfo(str(self.dtype))
            np.clip(img, info.min, info.max, out=img)
            return np.rint(img).astype(self.dtype)
        return img.astype(self.dtype)

    def describe(self) -> dict[str, Any]:
        return {"kind": "sim", "width": self.width, "height": self.height,
                "dtype": self.dtype.name}


class Camera(Device):
    """A 2-D detector: ``grab()`` returns ``[frame]`` (one channel).

    With ``publish_period`` set, the latest frame is announced as signal ``frame`` (the
    array) at most once per period, for dashboards: the frame a client grabbed when there
    was one, else one the camera grabs by itself. Without it only the frame count
    (``frames``) is announced, so a fast acquisition does not flood the node's bus.
    """

    kind = "camera"
    data_dim = "2D"

    def __init__(self, name: str, backend: CameraBackend, *, units: str = "counts",
                 exposure_ms: float = 10.0, publish_period: float | None = None) -> None:
        super().__init__(name)
        if publish_period is not None and not (publish_period > 0
                                               and math.isfinite(publish_period)):
            raise ValueError(f"publish_period must be a number > 0, got {publish_period!r}")
        self.backend = backend
        self.units = units
        self.exposure_ms = exposure_ms
        self.publish_period = publish_period
        self.frames = 0
        #: The last frame grabbed by any link (the EPICS face serves it as an NTNDArray).
        self.last_frame: np.ndarray | None = None
        self._fresh = False  # a frame was grabbed since the last announcement
        self._task: asyncio.Task[None] | None = None

    async def grab(self) -> list[np.ndarray]:
        frame = await self.backend.snap()
        self.frames += 1
        self.last_frame = frame
        self._fresh = True
        self.emit("frames", self.frames)
        return [frame]

    async def start(self) -> None:
        if self.publish_period and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish(self.publish_period), name=f"camera {self.name} publish")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _publish(self, period: float) -> None:
        failing = False
        while True:
            if not self._fresh:
                try:
                    await self.grab()
                except Exception as exc:  # one line per outage, not per try
                    if not failing:
                        log.warning("%s: cannot grab a frame to publish: %s", self.name, exc)
                    failing = True
                else:
                    failing = False
            if self._fresh and self.last_frame is not None:
                self._fresh = False
                self.emit("frame", self.last_frame)
            await asyncio.sleep(period)

    def axes(self) -> dict[str, tuple[np.ndarray, str, str]]:
        """No calibrated axes: pixels."""
        return {}

    def settings(self) -> dict[str, Any]:
        return {"exposure_ms": self.exposure_ms, "units": self.units}

    def set_setting(self, name: str, value: str) -> None:
        if name == "exposure_ms":
            self.exposure_ms = float(value)
            self.emit("exposure_ms", self.exposure_ms)
        else:
            raise KeyError(name)

    def snapshot(self) -> dict[str, Any]:
        return {"frames": self.frames, "exposure_ms": self.exposure_ms}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "units": self.units,
                "backend": self.backend.describe()}

    def signals(self) -> dict[str, dict[str, Any]]:
        return {"frame": {"units": self.units},
                "frames": {"on_change": True, "trend": False},
                "exposure_ms": {"units": "ms", "on_change": True, "trend": False}}
