"""A simulated resistance furnace: thermal model, PID controller, ramps, safety watchdog.

This is the device behind the furnace node (the seed's furPi, spec pychron.md section 8.2).
The physics is a backend-free model that advances only when told to (:meth:`FurnaceModel.step`),
so tests run hours of furnace time in milliseconds; the :class:`Furnace` device drives it from an
injectable clock (``time.monotonic`` by default) with an optional time scale.

Model (SI units, temperatures in degrees C)::

    heater power   tau_h * dP/dt = u/100 * P_max - P             (first-order lag of the heater)
    temperature    C * dT/dt = P - h * (T - T_a) - k_r * ((T+273.15)^4 - (T_a+273.15)^4)
    reading        PV = T + N(0, noise) rounded to the controller resolution

``u`` is the controller output in percent (0..100) from a PID loop acting on the *reading*
(so measurement noise reaches the loop as it would on a real Eurotherm), with derivative on the
measurement through a first-order filter and conditional integration for anti-windup. The
working setpoint moves towards the target at ``ramp_rate`` degrees per minute (0 = step).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from labbridge.devices.base import Device

log = logging.getLogger(__name__)

Clock = Callable[[], float]
KELVIN = 273.15


@dataclass(frozen=True, slots=True)
class PIDGains:
    """Gains of the furnace loop: output percent per degree, per degree-second, per degree/s."""

    kp: float = 4.0
    ki: float = 0.04
    kd: float = 0.0

    @classmethod
    def parse(cls, text: str) -> PIDGains:
        """``"kp,ki,kd"`` (the ``SetPID`` argument); raises ValueError when malformed."""
        parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
        if len(parts) != 3:
            raise ValueError(f"expected 'kp,ki,kd', got {text!r}")
        kp, ki, kd = (float(p) for p in parts)
        for v in (kp, ki, kd):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"PID gains must be finite and >= 0, got {text!r}")
        return cls(kp, ki, kd)

    def text(self) -> str:
        return f"{self.kp:g},{self.ki:g},{self.kd:g}"


@dataclass(frozen=True, slots=True)
class FurnaceParams:
    """Physical constants of the simulated furnace (defaults: a small resistance furnace)."""

    ambient: float = 22.0            # degrees C
    heat_capacity: float = 3000.0    # J/K
    loss: float = 2.0                # W/K, conduction/convection
    radiative: float = 1.1e-10       # W/K^4, emissivity * sigma * area
    max_power: float = 2500.0        # W at 100 % output
    heater_lag: float = 8.0          # s, first-order lag of the heating element
    noise: float = 0.05              # degrees C, standard deviation of the reading
    resolution: float = 0.01         # degrees C, reading quantisation
    max_temperature: float = 1600.0  # setpoints above this are refused
    max_dt: float = 0.1              # s, integration substep


class FurnaceModel:
    """Thermal model plus PID loop; advances only through :meth:`step` (no clock inside)."""

    def __init__(self, params: FurnaceParams | None = None, gains: PIDGains | None = None, *,
                 ramp_rate: float = 0.0, seed: int | None = None) -> None:
        self.params = params or FurnaceParams()
        self.gains = gains or PIDGains()
        self.ramp_rate = ramp_rate          # degrees C per minute, 0 = step change
        self.rng = np.random.default_rng(seed)
        self.t = 0.0                         # simulated seconds
        self.temperature = self.params.ambient
        self.power = 0.0                     # W delivered by the element
        self.output = 0.0                    # controller output, percent
        self.target = self.params.ambient    # setpoint requested by the client
        self.working_setpoint = self.params.ambient
        self._integral = 0.0
        self._d_filtered = 0.0
        self._last_pv: float | None = None
        self.pv = self._read()

    # -- commands -------------------------------------------------------------------------
    def set_setpoint(self, value: float) -> None:
        if not math.isfinite(value) or value > self.params.max_temperature or value < -273.0:
            raise ValueError(f"setpoint {value!r} outside -273..{self.params.max_temperature}")
        self.target = float(value)
        if self.ramp_rate <= 0:
            self.working_setpoint = self.target

    def set_gains(self, gains: PIDGains) -> None:
        self.gains = gains

    # -- physics ----------------------------------------------------------------------------
    def _read(self) -> float:
        p = self.params
        value = self.temperature + (self.rng.normal(0.0, p.noise) if p.noise > 0 else 0.0)
        if p.resolution > 0:
            # Quantised by multiplication alone a reading would carry float artefacts
            # (22.650000000000002) to every link, the bus and the web: the controller shows
            # as many decimals as its resolution has (0.01 -> 2, 0.25 -> 2, 1 -> 0).
            decimals = len(f"{p.resolution:.12f}".rstrip("0").partition(".")[2])
            value = round(round(value / p.resolution) * p.resolution, decimals)
        return float(value)

    def _losses(self, temp: float) -> float:
        p = self.params
        return p.loss * (temp - p.ambient) + p.radiative * (
            (temp + KELVIN) ** 4 - (p.ambient + KELVIN) ** 4)

    def _control(self, dt: float) -> None:
        g = self.gains
        pv = self.pv
        err = self.working_setpoint - pv
        # Derivative on the measurement (no kick on setpoint steps), filtered over ~2 s.
        if self._last_pv is None:
            self._last_pv = pv
        raw_d = (pv - self._last_pv) / dt
        self._last_pv = pv
        alpha = dt / (2.0 + dt)
        self._d_filtered += alpha * (raw_d - self._d_filtered)
        unclamped = g.kp * err + self._integral - g.kd * self._d_filtered
        # Conditional integration: stop integrating while saturated in the same direction.
        saturated_high = unclamped >= 100.0 and err > 0
        saturated_low = unclamped <= 0.0 and err < 0
        if not (saturated_high or saturated_low):
            self._integral += g.ki * err * dt
            self._integral = min(max(self._integral, 0.0), 100.0)
        self.output = min(max(g.kp * err + self._integral - g.kd * self._d_filtered, 0.0), 100.0)

    def step(self, dt: float) -> None:
        """Advance the model by ``dt`` simulated seconds (in substeps of ``max_dt``)."""
        if dt <= 0:
            return
        p = self.params
        n = max(1, math.ceil(dt / p.max_dt))
        h = dt / n
        for _ in range(n):
            if self.ramp_rate > 0 and self.working_setpoint != self.target:
                delta = self.ramp_rate / 60.0 * h
                diff = self.target - self.working_setpoint
                self.working_setpoint = self.target if abs(diff) <= delta else \
                    self.working_setpoint + math.copysign(delta, diff)
            self._control(h)
            demand = self.output / 100.0 * p.max_power
            # Exact update of the first-order lag over one substep (stable for any h).
            self.power = demand + (self.power - demand) * math.exp(-h / p.heater_lag)
            self.temperature += (self.power - self._losses(self.temperature)) \
                / p.heat_capacity * h
            self.t += h
            self.pv = self._read()

    # -- predictions -----------------------------------------------------------------------
    def steady_output(self, temp: float) -> float:
        """Output percent that holds ``temp`` against the losses (>100 means unreachable)."""
        return 100.0 * self._losses(temp) / self.params.max_power

    def predicted_settle_time(self, target: float, start: float | None = None) -> float:
        """Simulated seconds from ``start`` (default: now) until ``target`` is held (+-2 C).

        The prediction is built from the model's constants, not by running it: the heat-up
        is bounded by full power against the losses linearised between start and target
        (``t = tau * ln(dT_max / (dT_max - dT))``) or by the ramp, whichever is slower; to that
        come the heater lag and the loop's settling, taken as four integral time constants
        ``4 * kp / ki`` (the PI zero) bounded below by one minute.
        """
        p = self.params
        t0 = self.temperature if start is None else start
        span = abs(target - t0)
        if target <= t0:
            t_heat = 0.0
        else:
            # Effective loss coefficient (W/K), linearised at the target temperature.
            h_eff = self._losses(target) / max(target - p.ambient, 1e-9)
            if self._losses(target) >= p.max_power:
                return math.inf
            tau = p.heat_capacity / h_eff
            excess_max = p.max_power / h_eff - (t0 - p.ambient)
            t_heat = tau * math.log(excess_max / (excess_max - span)) if span else 0.0
        t_ramp = span / (self.ramp_rate / 60.0) if self.ramp_rate > 0 else 0.0
        g = self.gains
        settle = max(60.0, 4.0 * g.kp / g.ki) if g.ki > 0 else math.inf
        return max(t_heat, t_ramp) + p.heater_lag + settle

    def summary(self) -> dict[str, float]:
        return {"setpoint": self.target, "response": self.pv, "output": round(self.output, 3)}


@dataclass(frozen=True, slots=True)
class WatchdogConfig:
    """Safety watchdog: after ``timeout`` seconds without a client, go to ``safe_setpoint``."""

    timeout: float = 0.0           # 0 = off
    safe_setpoint: float = 0.0


class Furnace(Device):
    """The furnace device: model + clock + watchdog + digital inputs.

    Every client request calls :meth:`heard` (the command set does it), which re-arms the
    watchdog. The watchdog is armed by the first client contact and fires once per silence:
    the setpoint goes to the safe value, a warning is logged and a ``watchdog`` change is
    emitted for the telemetry bus (issue 3).
    """

    kind = "furnace"

    def __init__(self, name: str, model: FurnaceModel | None = None, *,
                 clock: Clock = time.monotonic, time_scale: float = 1.0, tick: float = 0.1,
                 watchdog: WatchdogConfig | None = None, version: str = "1.0",
                 di_channels: dict[str, bool] | None = None, lab_humidity: float = 35.0,
                 publish_period: float = 1.0) -> None:
        super().__init__(name)
        self.model = model or FurnaceModel()
        self.clock = clock
        self.time_scale = time_scale
        self.tick = tick
        self.watchdog = watchdog or WatchdogConfig()
        self.version = version
        self.di_channels = dict(di_channels or {})
        self.lab_humidity = lab_humidity
        self.publish_period = publish_period
        self.start_time = time.time()
        self._last_clock = clock()
        self._last_heard: float | None = None
        self._tripped = False
        self.trips = 0
        self._last_publish = -math.inf
        self._task: asyncio.Future[None] | None = None
        self.dump_time = 5.0
        self._dump_until: float | None = None

    # -- clock and physics -----------------------------------------------------------------
    def poll(self) -> None:
        """Bring the model up to the clock and check the watchdog (the tick loop's body)."""
        now = self.clock()
        elapsed = now - self._last_clock
        self._last_clock = now
        if elapsed > 0:
            self.model.step(elapsed * self.time_scale)
        self._check_watchdog(now)
        if now - self._last_publish >= self.publish_period:  # clock seconds, not model time
            self._last_publish = now
            self.emit("temperature", self.model.pv)
            self.emit("output", round(self.model.output, 3))

    def advance(self, seconds: float) -> None:
        """Run the model ``seconds`` of simulated time ahead of the clock (tests, demos)."""
        self.model.step(seconds)

    # -- watchdog ----------------------------------------------------------------------------
    def heard(self) -> None:
        """A client spoke to the furnace: re-arm the watchdog."""
        self._last_heard = self.clock()
        self._tripped = False

    def _check_watchdog(self, now: float) -> None:
        wd = self.watchdog
        if wd.timeout <= 0 or self._last_heard is None or self._tripped:
            return
        silence = now - self._last_heard
        if silence < wd.timeout:
            return
        self._tripped = True
        self.trips += 1
        previous = self.model.target
        self.model.set_setpoint(wd.safe_setpoint)
        log.warning("%s: no client heard for %.1f s (limit %.1f s): setpoint %.1f -> safe %.1f",
                    self.name, silence, wd.timeout, previous, wd.safe_setpoint)
        self.emit("watchdog", {"tripped": True, "silence": round(silence, 3),
                               "previous_setpoint": previous,
                               "setpoint": wd.safe_setpoint})
        self.emit("setpoint", wd.safe_setpoint)

    @property
    def tripped(self) -> bool:
        return self._tripped

    # -- commands ------------------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        return self.model.pv

    @property
    def setpoint(self) -> float:
        return self.model.target

    def set_setpoint(self, value: float) -> None:
        self.model.set_setpoint(value)
        self.emit("setpoint", self.model.target)

    @property
    def percent_output(self) -> float:
        return round(self.model.output, 3)

    def set_pid(self, gains: PIDGains) -> None:
        self.model.set_gains(gains)
        self.emit("pid", gains.text())

    def di_state(self, channel: str) -> bool:
        if channel not in self.di_channels:
            raise KeyError(channel)
        return self.di_channels[channel]

    def set_di(self, channel: str, value: bool) -> None:
        """Simulation input: change a digital input (a water-flow switch, say)."""
        self.di_channels[channel] = value
        self.emit(f"di.{channel}", value)

    def summary(self, h2o_channel: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.model.summary())
        if h2o_channel:
            out["h2o_state"] = self.di_state(h2o_channel)
        return out

    def heartbeat(self) -> str:
        return f"{time.time()},{self.start_time}"

    def lab_temperature(self) -> float:
        return round(self.model.params.ambient + float(self.model.rng.normal(0, 0.02)), 3)

    def dump_sample(self) -> None:
        self._dump_until = self.model.t + self.dump_time
        self.emit("dump", "started")

    def dump_complete(self) -> bool:
        return self._dump_until is not None and self.model.t >= self._dump_until

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        self._last_clock = self.clock()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.tick)
                try:
                    self.poll()
                except Exception:  # the model must keep running; log and go on
                    log.exception("%s: furnace tick failed", self.name)

        self._task = asyncio.ensure_future(loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self) -> dict[str, Any]:
        return {"temperature": self.model.pv, "setpoint": self.model.target,
                "output": round(self.model.output, 3), "pid": self.model.gains.text()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_temperature": self.model.params.max_temperature,
                "watchdog": {"timeout": self.watchdog.timeout,
                             "safe_setpoint": self.watchdog.safe_setpoint},
                "di_channels": sorted(self.di_channels)}

    def signals(self) -> dict[str, dict[str, Any]]:
        temp = {"units": "°C", "quantity": "temperature"}
        return {"temperature": temp, "setpoint": {**temp, "on_change": True},
                "output": {"units": "%", "quantity": "output"},
                "pid": {"on_change": True, "trend": False}, "di.*": {"on_change": True},
                "watchdog": {"event": True}, "dump": {"event": True}}
