"""A simulated multicollector noble-gas mass spectrometer (the instrument behind Qtegra).

Spec pychron.md section 12 lists what Qtegra's RemoteControlServer exposes; this device holds
the state those commands read and write, and a physics model of what the detectors see:

* **Peaks.** Each configured isotope has an intensity (volts on a 1e11 ohm amplifier, as an
  Argus reports them) and the magnet DAC that centres it on the axial detector. A detector
  sits at a DAC offset from the axial cup (plus a small shift per volt of deflection), so it
  sees isotope *i* centred at ``dac_i - offset``. The peak is flat-topped: the difference of
  two error functions, of ``width`` (flat part plus half the flanks) and edge ``sigma``.
* **Counting noise.** During one integration of ``tau`` seconds a signal of ``V`` volts
  delivers ``V / R / e * tau`` ions; the number counted is Poisson distributed, and the
  amplifier adds Johnson noise of ``johnson`` volts for one second, falling as
  ``1/sqrt(tau)``. Doubling the integration time therefore lowers the relative noise by
  sqrt(2).
* **Integration periods.** Data change only when an integration period completes (periods are
  counted from the last integration-time change on the device's clock); ``GetData`` between
  two completions returns the same scan. A scan uses the magnet position at its end.
* **Magnet.** A DAC change takes ``settle + |delta| * seconds_per_dac`` seconds; until then
  ``GetMagnetMoving`` is True and the position is interpolated.

The clock is injectable (``time.monotonic`` by default), so tests step simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from labbridge.devices.base import Device

Clock = Callable[[], float]

ELEMENTARY_CHARGE = 1.602176634e-19
DEFAULT_DETECTORS: dict[str, float] = {"H2": 0.2, "H1": 0.1, "AX": 0.0, "L1": -0.1,
                                       "L2": -0.2, "CDD": -0.3}


@dataclass(frozen=True, slots=True)
class Peak:
    """One isotope's beam: intensity in volts, centre as the magnet DAC on the axial cup."""

    name: str
    dac: float
    intensity: float
    width: float = 0.02
    sigma: float = 0.002


class SpectrometerError(Exception):
    """A setter refused its value; rendered by Qtegra as ``Error: could not set ...``."""

    def __init__(self, hardware: str, value: object) -> None:
        super().__init__(f"could not set {hardware} to {value}")
        self.hardware = hardware
        self.value = value


class Spectrometer(Device):
    """State of the instrument and its simulated ion beams."""

    kind = "mass_spectrometer"

    def __init__(self, name: str, peaks: list[Peak] | None = None, *,
                 detectors: Mapping[str, float] | None = None,
                 clock: Clock = time.monotonic, seed: int | None = None,
                 integration_time: float = 1.048576, resistor: float = 1e11,
                 johnson: float = 2e-5, baseline: float = 0.0,
                 magnet_dac: float = 0.0, settle: float = 0.05,
                 seconds_per_dac: float = 0.2, deflection_shift: float = 1e-4,
                 valves: list[str] | None = None,
                 parameters: Mapping[str, float] | None = None,
                 poll_period: float | None = None) -> None:
        super().__init__(name)
        if poll_period is not None and not (poll_period > 0 and math.isfinite(poll_period)):
            raise ValueError(f"poll_period must be a number > 0, got {poll_period!r}")
        #: Read the detectors by itself every ``poll_period`` seconds, so each completed
        #: integration is announced (``scan``) even when no client asks (a dashboard).
        self.poll_period = poll_period
        self._poll_task: asyncio.Task[None] | None = None
        self.peaks = list(peaks or [Peak("Ar40", 5.0, 5.0), Peak("Ar39", 4.875, 0.2),
                                    Peak("Ar36", 4.5, 0.017)])
        self.detectors = dict(detectors or DEFAULT_DETECTORS)
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.resistor = resistor
        self.johnson = johnson
        self.baseline = baseline
        self.settle = settle
        self.seconds_per_dac = seconds_per_dac
        self.deflection_shift = deflection_shift
        self.deflections = {d: 0.0 for d in self.detectors}
        self.gains = {d: 1.0 for d in self.detectors}
        self.protected = {d: False for d in self.detectors}
        self.valves = {v: False for v in (valves or ["Valve1", "Valve2"])}
        self.parameters: dict[str, float] = {
            "Trap Current Readback": 200.0, "Trap Voltage Readback": 120.0,
            "Acceleration Reference Set": 4.5, "Y-Symmetry Set": 0.0,
            "Z-Symmetry Set": 0.0, "Extraction Lens Set": 95.0, "Source Pressure": 2e-9,
            **dict(parameters or {})}
        self.cup_configurations = {"Argon": ["Standard", "H2 shifted"],
                                   "Argon CDD": ["Standard"]}
        self.active_cup = ("Argon", "Standard")
        self.mass = 0.0
        self._blank_saved: float | None = None
        # Magnet move: from _dac0 at _t0 to _dac1 at _t1.
        now = clock()
        self._dac0 = self._dac1 = magnet_dac
        self._t0 = self._t1 = now
        # Integration: periods counted from _epoch.
        self._tau = integration_time
        self._epoch = now
        self._scan_index = 0
        self.last_scan: dict[str, float] = {}
        self.scans = 0
        #: Test hook: when set, setters awaiting hardware (HV) wait for it (see block_hv).
        self._hv_gate: asyncio.Event | None = None
        self.hv_waiting: asyncio.Queue[float] | None = None

    # -- magnet ---------------------------------------------------------------------------------
    @property
    def magnet_dac(self) -> float:
        now = self.clock()
        if now >= self._t1:
            return self._dac1
        frac = (now - self._t0) / (self._t1 - self._t0)
        return self._dac0 + (self._dac1 - self._dac0) * frac

    @property
    def magnet_moving(self) -> bool:
        return self.clock() < self._t1

    @property
    def magnet_target(self) -> float:
        return self._dac1

    def set_magnet_dac(self, value: float) -> None:
        if not math.isfinite(value) or not 0.0 <= value <= 10.0:
            raise SpectrometerError("MagnetDAC", value)
        start = self.magnet_dac
        now = self.clock()
        self._dac0, self._t0 = start, now
        self._dac1 = value
        self._t1 = now + self.settle + abs(value - start) * self.seconds_per_dac
        self.emit("magnet_dac", value)

    # -- integration ----------------------------------------------------------------------------
    @property
    def integration_time(self) -> float:
        return self._tau

    def set_integration_time(self, seconds: float) -> None:
        if not math.isfinite(seconds) or not 0.001 <= seconds <= 1000.0:
            raise SpectrometerError("IntegrationTime", seconds)
        self._tau = seconds
        self._epoch = self.clock()  # a new integration starts now
        self._scan_index = 0
        self.emit("integration_time", seconds)

    def next_scan_at(self) -> float:
        """Clock time at which the next scan completes."""
        return self._epoch + (self._scan_index + 1) * self._tau

    # -- beams ------------------------------------------------------------------------------------
    def _offset(self, detector: str) -> float:
        return self.detectors[detector] + self.deflections[detector] * self.deflection_shift

    def true_intensity(self, detector: str, dac: float | None = None) -> float:
        """Noise-free signal in volts on ``detector`` at magnet ``dac`` (default: now)."""
        if self._blank_saved is not None:
            return 0.0
        d = self.magnet_dac if dac is None else dac
        x = d + self._offset(detector)
        total = 0.0
        for p in self.peaks:
            lo, hi = p.dac - p.width / 2, p.dac + p.width / 2
            total += p.intensity * 0.5 * (math.erf((x - lo) / (p.sigma * math.sqrt(2)))
                                          - math.erf((x - hi) / (p.sigma * math.sqrt(2))))
        return total * self.gains[detector]

    def _measure(self, detector: str, tau: float) -> float:
        signal = max(self.true_intensity(detector), 0.0)
        ions_per_volt_second = 1.0 / self.resistor / ELEMENTARY_CHARGE
        expected = signal * ions_per_volt_second * tau
        counts = float(self.rng.poisson(expected)) if expected > 0 else 0.0
        value = counts / (ions_per_volt_second * tau)
        value += float(self.rng.normal(0.0, self.johnson / math.sqrt(tau)))
        return value + self.baseline

    def data(self) -> dict[str, float]:
        """The last completed scan (empty before the first one completes)."""
        now = self.clock()
        done = int((now - self._epoch) // self._tau)
        if done > self._scan_index:
            self._scan_index = done
            self.last_scan = {d: self._measure(d, self._tau) for d in self.detectors}
            self.scans += 1
            self.emit("scan", dict(self.last_scan))
        return dict(self.last_scan)

    # -- detectors ----------------------------------------------------------------------------
    def _detector(self, name: str) -> str:
        if name not in self.detectors:
            raise KeyError(name)
        return name

    def set_deflection(self, detector: str, value: float) -> None:
        self._detector(detector)
        if not math.isfinite(value) or abs(value) > 1000:
            raise SpectrometerError(f"{detector} Deflection", value)
        self.deflections[detector] = value

    def set_gain(self, detector: str, value: float) -> None:
        self._detector(detector)
        if not math.isfinite(value) or value <= 0:
            raise SpectrometerError(f"{detector} Gain", value)
        self.gains[detector] = value

    def protect(self, detector: str, on: bool) -> None:
        self.protected[self._detector(detector)] = on

    def blank_beam(self, blank: bool) -> None:
        """Y-Symmetry to -50 (beam off the collectors), or back to where it was."""
        if blank and self._blank_saved is None:
            self._blank_saved = self.parameters["Y-Symmetry Set"]
            self.parameters["Y-Symmetry Set"] = -50.0
        elif not blank and self._blank_saved is not None:
            self.parameters["Y-Symmetry Set"] = self._blank_saved
            self._blank_saved = None
        self.emit("blanked", blank)

    # -- parameters and high voltage ----------------------------------------------------------
    def parameter(self, name: str) -> float:
        return self.parameters[name]

    def set_parameter(self, name: str, value: float) -> None:
        if name not in self.parameters or not math.isfinite(value):
            raise SpectrometerError(name, value)
        self.parameters[name] = value
        self.emit(f"parameter.{name}", value)

    @property
    def high_voltage(self) -> float:
        """Volts (``Acceleration Reference Set`` is in kV)."""
        return self.parameters["Acceleration Reference Set"] * 1000.0

    async def set_high_voltage(self, volts: float) -> None:
        """Set the acceleration voltage; waits while a test gate holds the 'hardware'."""
        if not math.isfinite(volts) or not 0 <= volts <= 10000:
            raise SpectrometerError("HighVoltage", volts)
        if self._hv_gate is not None:
            assert self.hv_waiting is not None
            self.hv_waiting.put_nowait(volts)
            await self._hv_gate.wait()
        self.parameters["Acceleration Reference Set"] = volts / 1000.0
        self.emit("high_voltage", volts)

    def block_hv(self) -> asyncio.Event:
        """Test hook: hold every ``set_high_voltage`` until the returned event is set; each
        held call is put on :attr:`hv_waiting` so a test can await its arrival."""
        self._hv_gate = asyncio.Event()
        self.hv_waiting = asyncio.Queue()
        return self._hv_gate

    # -- valves -------------------------------------------------------------------------------------
    def set_valve(self, name: str, open_: bool) -> None:
        if name not in self.valves:
            raise KeyError(name)
        self.valves[name] = open_
        self.emit(f"valve.{name}", open_)

    # -- device -------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.poll_period and self._poll_task is None:
            self._poll_task = asyncio.get_running_loop().create_task(
                self._poll(self.poll_period), name=f"spectrometer {self.name} poll")

    async def stop(self) -> None:
        task, self._poll_task = self._poll_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self, period: float) -> None:
        while True:
            self.data()  # announces a scan when an integration completed since the last call
            await asyncio.sleep(period)

    def snapshot(self) -> dict[str, Any]:
        return {"magnet_dac": self.magnet_dac, "integration_time": self._tau,
                "high_voltage": self.high_voltage, "last_scan": dict(self.last_scan)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "detectors": list(self.detectors),
                "peaks": [{"name": p.name, "dac": p.dac, "intensity": p.intensity}
                          for p in self.peaks],
                "valves": sorted(self.valves)}

    def signals(self) -> dict[str, dict[str, Any]]:
        held = {"on_change": True, "trend": False}
        return {"scan.*": {"units": "V", "quantity": "intensity"},
                "magnet_dac": held, "integration_time": {"units": "s", **held},
                "high_voltage": {"units": "V", **held}, "blanked": held,
                "parameter.*": held, "valve.*": held}
