"""A spectrometer (1-D detector) over a backend; the simulated one draws drifting peaks.

What a PyMoDAQ ``DAQ_Viewer`` 1D detector serves (spec pymodaq.md §4.2 ``Send Data 1D``):
:meth:`Spectrometer.grab` returns one trace, and :meth:`Spectrometer.axes` the wavelength
axis (G1 sends it as ``x_axis``; G3 puts it inside the data, §6).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from labbridge.devices.base import Device


class SpectrumBackend(Protocol):
    async def trace(self) -> np.ndarray: ...

    def wavelengths(self) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class SimSpectrumBackend:
    """Two Gaussian lines on a baseline with noise; the first line drifts slowly."""

    def __init__(self, pixels: int = 1024, start_nm: float = 400.0, stop_nm: float = 800.0,
                 *, noise: float = 0.01, seed: int | None = 0) -> None:
        if pixels <= 1:
            raise ValueError("a spectrometer needs at least 2 pixels")
        self._wl = np.linspace(start_nm, stop_nm, pixels)
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self.index = 0

    def wavelengths(self) -> np.ndarray:
        return self._wl

    async def trace(self) -> np.ndarray:
        wl = self._wl
        c1 = 532.0 + 5.0 * math.sin(self.index / 10)
        t = (np.exp(-((wl - c1) ** 2) / (2 * 2.0**2))
             + 0.5 * np.exp(-((wl - 633.0) ** 2) / (2 * 1.5**2)) + 0.05)
        if self.noise > 0:
            t = t + self._rng.normal(0.0, self.noise, wl.shape)
        self.index += 1
        return t

    def describe(self) -> dict[str, Any]:
        return {"kind": "sim", "pixels": len(self._wl)}


class Spectrometer(Device):
    """A 1-D detector: ``grab()`` returns ``[trace]``; ``axes()`` the wavelength axis."""

    kind = "spectrometer"
    data_dim = "1D"

    def __init__(self, name: str, backend: SpectrumBackend, *, units: str = "a.u.",
                 integration_ms: float = 100.0) -> None:
        super().__init__(name)
        self.backend = backend
        self.units = units
        self.integration_ms = integration_ms
        self.traces = 0

    async def grab(self) -> list[np.ndarray]:
        t = await self.backend.trace()
        self.traces += 1
        self.emit("traces", self.traces)
        return [t]

    def axes(self) -> dict[str, tuple[np.ndarray, str, str]]:
        return {"x": (self.backend.wavelengths(), "wavelength", "nm")}

    def settings(self) -> dict[str, Any]:
        return {"integration_ms": self.integration_ms, "units": self.units}

    def set_setting(self, name: str, value: str) -> None:
        if name == "integration_ms":
            self.integration_ms = float(value)
            self.emit("integration_ms", self.integration_ms)
        else:
            raise KeyError(name)

    def snapshot(self) -> dict[str, Any]:
        return {"traces": self.traces}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "units": self.units,
                "backend": self.backend.describe()}
