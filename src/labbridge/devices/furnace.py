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

Around the furnace, as on the real furPi (spec pychron.md 8.2, ADR 0191): the sample dumper's
stepper **drives** (``funnel`` and ``feeder``: absolute/relative moves at a velocity, jitter,
stall-free), the funnel's up and down positions, the **magnets** that tip the dumper (energized
one after the other for ``period`` seconds each), and the **bake-out** heaters (Watlow-style
channels: closed-loop setpoint or open-loop output, a first-order heater). All of it runs on
the model's simulated time, so ``time_scale`` and :meth:`Furnace.advance` move it too.
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


class DriveError(Exception):
    """A refused drive command (no such drive, a move beyond its travel)."""


class Drive:
    """A stepper drive (the furPi's MDrive): position in steps, moves at ``velocity`` steps
    per simulated second, on the furnace model's time (``now`` is passed in)."""

    def __init__(self, name: str, *, steps_per_turn: int = 51200, velocity: float = 20000.0,
                 limits: tuple[float, float] = (-1e7, 1e7)) -> None:
        self.name = name
        self.steps_per_turn = steps_per_turn
        self.velocity = velocity
        self.limits = limits
        self.home = 0.0
        self._from = self._to = 0.0
        self._t0 = self._t1 = 0.0
        self._jitter_until = 0.0

    def to_steps(self, value: float, units: str = "steps") -> float:
        if units == "steps":
            return value
        if units == "turns":
            return value * self.steps_per_turn
        raise ValueError(f"units are steps or turns, not {units!r}")

    def position(self, now: float, units: str = "steps") -> float:
        if now >= self._t1 or self._t1 <= self._t0:
            pos = self._to
        else:
            pos = self._from + (self._to - self._from) * (now - self._t0) / (self._t1 - self._t0)
        pos -= self.home
        return pos / self.steps_per_turn if units == "turns" else pos

    def moving(self, now: float) -> bool:
        return now < self._t1 or now < self._jitter_until

    def move_absolute(self, now: float, target: float, units: str = "steps",
                      velocity: float | None = None) -> None:
        steps = self.to_steps(target, units) + self.home
        if not math.isfinite(steps) or not self.limits[0] <= steps <= self.limits[1]:
            raise DriveError(f"{self.name}: position {target} {units} outside the travel")
        v = velocity if velocity and velocity > 0 else self.velocity
        start = self.position(now) + self.home
        self._from, self._to, self._t0 = start, steps, now
        self._t1 = now + abs(steps - start) / v

    def move_relative(self, now: float, delta: float, units: str = "steps") -> None:
        self.move_absolute(now, self.position(now, units) + delta, units)

    def slew(self, now: float, scalar: float) -> None:
        """Run towards the travel's end at ``scalar`` times the velocity (StopDrive stops)."""
        end = self.limits[1] if scalar >= 0 else self.limits[0]
        self.move_absolute(now, end - self.home, velocity=abs(scalar) * self.velocity)

    def stop(self, now: float) -> None:
        here = self.position(now) + self.home
        self._from = self._to = here
        self._t0 = self._t1 = now
        self._jitter_until = 0.0

    def set_home(self, now: float) -> None:
        self.stop(now)
        self.home = self._to

    def start_jitter(self, now: float, turns: float, p1: float, p2: float) -> None:
        """Shake back and forth by ``turns`` (periods ``p1``, ``p2``) until StopJitter."""
        if not (math.isfinite(turns) and p1 > 0 and p2 > 0):
            raise ValueError("jitter needs turns and two positive periods")
        self._jitter_until = math.inf


@dataclass
class FunnelConfig:
    """The funnel drive's up and down positions and how close counts as there (steps)."""

    up: float = 0.0
    down: float = 40000.0
    tolerance: float = 100.0


@dataclass
class BakeoutChannel:
    """A bake-out heater (Watlow EZ-Zone on the furPi): closed loop holds ``setpoint``,
    open loop drives ``output`` percent; the heater approaches its equilibrium with a
    first-order lag of ``tau`` simulated seconds (``max_rise`` degrees above ambient at 100 %)."""

    channel: int
    setpoint: float = 0.0
    mode: str = "closed"
    output: float = 0.0
    temperature: float = 22.0
    power: float = 0.0
    tau: float = 300.0
    max_rise: float = 400.0

    def step(self, dt: float, ambient: float) -> None:
        """Advance ``dt`` simulated seconds, in substeps of at most one second (the loop
        acts on the heater as it warms)."""
        n = max(1, math.ceil(dt))
        for _ in range(n):
            self._step(dt / n, ambient)

    def _step(self, dt: float, ambient: float) -> None:
        if self.mode == "closed":
            demand = 0.0 if self.setpoint <= ambient else \
                min(100.0, 100.0 * (self.setpoint - ambient) / self.max_rise
                    + 2.0 * (self.setpoint - self.temperature))
        else:
            demand = self.output
        self.power = min(max(demand, 0.0), 100.0)
        target = ambient + self.max_rise * self.power / 100.0
        self.temperature = target + (self.temperature - target) * math.exp(-dt / self.tau)


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
                 publish_period: float = 1.0, funnel: FunnelConfig | None = None,
                 magnets: int = 3, bakeout_channels: int = 2,
                 broadcast: bool = False, broadcast_period: float = 2.0) -> None:
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
        self.drives = {"funnel": Drive("funnel"), "feeder": Drive("feeder")}
        self.funnel = funnel or FunnelConfig()
        self.drives["funnel"].move_absolute(0.0, self.funnel.up)  # starts up, at rest
        self.drives["funnel"].stop(0.0)
        self.magnets = magnets
        self._energized_until = -math.inf
        self._energized_from = 0.0
        self._magnet_period = 3.0
        self.bakeout = {n: BakeoutChannel(n, temperature=self.model.params.ambient)
                        for n in range(1, bakeout_channels + 1)}
        self._bakeout_t = self.model.t
        #: Publish the furPi's broadcast (``HeartBeat <time>``, every 10th the full summary)
        #: as device changes every ``broadcast_period`` clock seconds (spec 8.2).
        self.broadcast = broadcast
        self.broadcast_period = broadcast_period
        self._last_broadcast = -math.inf
        self._broadcasts = 0
        #: The node's valves for the full summary (``name -> open``); set by the command set.
        self.switch_states: Callable[[], dict[str, bool]] | None = None

    # -- clock and physics -----------------------------------------------------------------
    def poll(self) -> None:
        """Bring the model up to the clock and check the watchdog (the tick loop's body)."""
        now = self.clock()
        elapsed = now - self._last_clock
        self._last_clock = now
        if elapsed > 0:
            self.model.step(elapsed * self.time_scale)
        self._step_bakeout()
        self._check_watchdog(now)
        if now - self._last_publish >= self.publish_period:  # clock seconds, not model time
            self._last_publish = now
            self.emit("temperature", self.model.pv)
            self.emit("output", round(self.model.output, 3))
            for ch in self.bakeout.values():
                if ch.power > 0 or ch.temperature > self.model.params.ambient + 0.5:
                    self.emit(f"bakeout_temperature.{ch.channel}", round(ch.temperature, 2))
        if self.broadcast and now - self._last_broadcast >= self.broadcast_period:
            self._last_broadcast = now
            if self._broadcasts % 10 == 0:  # the real loop: the summary first, then 9 beats
                self.emit("summary", self.full_summary())
            else:
                self.emit("heartbeat", f"HeartBeat {time.time()}")
            self._broadcasts += 1

    def advance(self, seconds: float) -> None:
        """Run the model ``seconds`` of simulated time ahead of the clock (tests, demos)."""
        self.model.step(seconds)
        self._step_bakeout()

    def _step_bakeout(self) -> None:
        dt = self.model.t - self._bakeout_t
        self._bakeout_t = self.model.t
        if dt > 0:
            for ch in self.bakeout.values():
                ch.step(dt, self.model.params.ambient)

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

    # -- dumper: drives, funnel, magnets (spec 8.2 "Dump / funnel") ------------------------------
    def drive(self, name: str | None) -> Drive:
        d = self.drives.get(name or "")
        if d is None:
            raise DriveError(f"no drive named {name!r} (drives: {', '.join(self.drives)})")
        return d

    def move_drive(self, name: str | None, position: float, units: str = "steps",
                   velocity: float | None = None, relative: bool = False) -> None:
        d = self.drive(name)
        if relative:
            d.move_relative(self.model.t, position, units)
        else:
            d.move_absolute(self.model.t, position, units, velocity)
        self.emit(f"{d.name}.target", d._to - d.home)

    def lower_funnel(self) -> None:
        self.move_drive("funnel", self.funnel.down)
        self.emit("funnel", "lowering")

    def raise_funnel(self) -> None:
        self.move_drive("funnel", self.funnel.up)
        self.emit("funnel", "raising")

    def funnel_at(self, where: str) -> bool:
        pos = self.drives["funnel"].position(self.model.t)
        target = self.funnel.up if where == "up" else self.funnel.down
        return abs(pos - target) < self.funnel.tolerance

    def energize_magnets(self, period: float = 3.0) -> None:
        """Energize the dumper's magnets one after the other, ``period`` simulated seconds
        each (the real firmware's thread), then all off."""
        if not math.isfinite(period) or not 0 < period <= 3600:
            raise ValueError(f"magnet period must be in (0, 3600] s, got {period!r}")
        self._magnet_period = period
        self._energized_from = self.model.t
        self._energized_until = self.model.t + period * max(self.magnets, 1)
        self.emit("magnets", "energized")

    @property
    def energized(self) -> bool:
        return self.model.t < self._energized_until

    def denergize_magnets(self) -> None:
        self._energized_until = -math.inf
        self.emit("magnets", "off")

    # -- bake-out (spec 8.2 "Bakeout") ---------------------------------------------------------
    def bakeout_channel(self, channel: object) -> BakeoutChannel:
        try:
            ch = self.bakeout.get(int(str(channel)))
        except ValueError:
            ch = None
        if ch is None:
            raise KeyError(f"no bake-out channel {channel!r} (channels: "
                           f"{', '.join(str(c) for c in self.bakeout)})")
        return ch

    def set_bakeout_setpoint(self, channel: object, value: float) -> None:
        if not math.isfinite(value) or not -50.0 <= value <= 500.0:
            raise ValueError(f"bake-out setpoint {value!r} outside -50..500 C")
        ch = self.bakeout_channel(channel)
        ch.setpoint = value
        self.emit(f"bakeout_setpoint.{ch.channel}", value)

    def set_bakeout_mode(self, channel: object, mode: str) -> None:
        if mode not in ("open", "closed"):
            raise ValueError(f"control mode is open or closed, not {mode!r}")
        ch = self.bakeout_channel(channel)
        ch.mode = mode
        self.emit(f"bakeout_mode.{ch.channel}", mode)

    # -- full summary and broadcast (spec 8.2) -------------------------------------------------
    def full_summary(self) -> dict[str, Any]:
        """The furPi's full summary: keys are its parameter addresses (version, 001 lab
        humidity, 002 lab temperature, 003 setpoint, 004 process value, 021 feeder
        position, 031 funnel position, 041 switch status ``name,s<state>``)."""
        now = self.model.t
        out: dict[str, Any] = {
            "version": self.version, "001": self.lab_humidity, "002": self.lab_temperature(),
            "003": self.setpoint, "004": self.model.pv,
            "021": self.drives["feeder"].position(now),
            "031": self.drives["funnel"].position(now)}
        if self.switch_states is not None:
            out["041"] = ";".join(f"{k},s{v}" for k, v in self.switch_states().items())
        return out

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
        held = {"on_change": True, "trend": False}
        return {"temperature": temp, "setpoint": {**temp, "on_change": True},
                "output": {"units": "%", "quantity": "output"},
                "pid": held, "di.*": {"on_change": True},
                "watchdog": {"event": True}, "dump": {"event": True},
                "bakeout_temperature.*": temp,
                "bakeout_setpoint.*": {**temp, "on_change": True}, "bakeout_mode.*": held, "funnel": held, "magnets": held,
                "funnel.target": {**held, "units": "steps"},
                "feeder.target": {**held, "units": "steps"},
                "heartbeat": {"event": True}, "summary": {"trend": False}}
