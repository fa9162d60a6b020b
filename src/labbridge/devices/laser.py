"""A simulated heating laser with an XYZ sample stage (spec pychron.md section 9).

The stage moves like a real motion controller: a move to (x, y) travels in a straight line at
``speed`` mm/s (both axes arrive together), Z separately at ``z_speed``; a move returns at once
and ``moving`` says whether the drive is still travelling (Pychron polls ``GetDriveMoving``).
Positions are computed from the device's injectable clock when asked, so no task is needed and
tests step time by hand.

Holes of the sample holder are a grid (``holes`` x ``holes``, ``hole_spacing`` mm apart,
centred on the origin, numbered from 1 row by row) unless a ``hole_map`` is given.

Laser power: ``SetLaserPower`` sets the requested percentage; the measured power
(``ReadLaserPower``) follows it with a first-order lag when the laser is enabled and is zero
otherwise, plus a little noise. Enabling takes ``enable_delay`` seconds (the supply's
warm-up), awaited by :meth:`Laser.enable` -- the one slow command of the node.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from labbridge.devices.base import Device

Clock = Callable[[], float]


class LaserError(Exception):
    """A refused laser command; ``code`` is the Pychron laser error code (spec 4, 101-108)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class _Move:
    start: tuple[float, ...]
    end: tuple[float, ...]
    t0: float
    t1: float

    def at(self, now: float) -> tuple[float, ...]:
        if now >= self.t1 or self.t1 <= self.t0:
            return self.end
        f = max(0.0, (now - self.t0) / (self.t1 - self.t0))
        return tuple(a + (b - a) * f for a, b in zip(self.start, self.end, strict=True))


class Laser(Device):
    """Laser + stage. All motion is asynchronous; queries read the clock."""

    kind = "laser"

    def __init__(self, name: str, *, clock: Clock = time.monotonic, speed: float = 5.0,
                 z_speed: float = 1.0, limits: tuple[float, float] = (-25.0, 25.0),
                 z_limits: tuple[float, float] = (-10.0, 10.0), holes: int = 10,
                 hole_spacing: float = 2.5, hole_map: Mapping[str, tuple[float, float]] | None
                 = None, max_power: float = 75.0, power_lag: float = 0.5,
                 enable_delay: float = 0.0, interlocked: bool = False,
                 seed: int | None = None) -> None:
        super().__init__(name)
        self.clock = clock
        self.speed = speed
        self.z_speed = z_speed
        self.limits = limits
        self.z_limits = z_limits
        self.max_power = max_power
        self.power_lag = power_lag
        self.enable_delay = enable_delay
        self.interlocked = interlocked
        self.rng = np.random.default_rng(seed)
        now = clock()
        self._xy = _Move((0.0, 0.0), (0.0, 0.0), now, now)
        self._z = _Move((0.0,), (0.0,), now, now)
        if hole_map is not None:
            self.holes = {str(k): (float(v[0]), float(v[1])) for k, v in hole_map.items()}
        else:
            half = (holes - 1) * hole_spacing / 2
            self.holes = {str(r * holes + c + 1): (c * hole_spacing - half,
                                                   half - r * hole_spacing)
                          for r in range(holes) for c in range(holes)}
        self.enabled = False
        self.requested_power = 0.0
        self._power_from = 0.0
        self._power_t0 = now
        self.pattern: str | None = None
        self._pattern_until = 0.0
        self.beam_diameter = 1.0
        self.zoom = 0.0
        self.light = 0.0
        self.motors: dict[str, float] = {"beam": 1.0, "zoom": 0.0, "attenuator": 0.0}
        self._enable_gate: asyncio.Event | None = None
        self.enable_waiting: asyncio.Queue[str] | None = None

    # -- stage --------------------------------------------------------------------------------
    @property
    def position(self) -> tuple[float, float, float]:
        now = self.clock()
        x, y = self._xy.at(now)
        (z,) = self._z.at(now)
        return x, y, z

    @property
    def moving(self) -> bool:
        now = self.clock()
        return now < self._xy.t1 or now < self._z.t1

    def _check(self, value: float, lo: float, hi: float, axis: str) -> None:
        if not math.isfinite(value) or not lo <= value <= hi:
            raise LaserError(108, f"{axis}={value} outside {lo}..{hi}")

    def move_xy(self, x: float, y: float) -> None:
        lo, hi = self.limits
        self._check(x, lo, hi, "x")
        self._check(y, lo, hi, "y")
        now = self.clock()
        start = self._xy.at(now)
        dist = math.hypot(x - start[0], y - start[1])
        self._xy = _Move(start, (x, y), now, now + dist / self.speed)
        self.emit("target", {"x": x, "y": y})

    def move_x(self, x: float) -> None:
        self.move_xy(x, self._xy.end[1])

    def move_y(self, y: float) -> None:
        self.move_xy(self._xy.end[0], y)

    def move_z(self, z: float) -> None:
        self._check(z, *self.z_limits, "z")
        now = self.clock()
        (start,) = self._z.at(now)
        self._z = _Move((start,), (z,), now, now + abs(z - start) / self.z_speed)
        self.emit("target", {"z": z})

    def goto_hole(self, hole: str) -> None:
        pos = self.holes.get(hole.strip())
        if pos is None:
            raise LaserError(104, f"hole {hole} is not in the holder")
        self.move_xy(*pos)

    def stop_motion(self) -> None:
        now = self.clock()
        here = self._xy.at(now)
        self._xy = _Move(here, here, now, now)
        (z,) = self._z.at(now)
        self._z = _Move((z,), (z,), now, now)

    # -- patterns -----------------------------------------------------------------------------
    def do_pattern(self, name: str, duration: float) -> None:
        if not math.isfinite(duration) or duration <= 0:
            raise ValueError(f"bad pattern duration {duration!r}")
        self.pattern = name
        self._pattern_until = self.clock() + duration
        self.emit("pattern", name)

    @property
    def patterning(self) -> bool:
        return self.pattern is not None and self.clock() < self._pattern_until

    def abort_pattern(self) -> None:
        self.pattern = None
        self.stop_motion()
        self.emit("pattern", None)

    # -- power ----------------------------------------------------------------------------------
    def _power_now(self) -> float:
        target = self.requested_power if self.enabled else 0.0
        dt = self.clock() - self._power_t0
        f = 1.0 - math.exp(-dt / self.power_lag) if self.power_lag > 0 else 1.0
        return self._power_from + (target - self._power_from) * f

    def _rebase_power(self) -> None:
        self._power_from = self._power_now()
        self._power_t0 = self.clock()

    def set_power(self, percent: float) -> None:
        if not math.isfinite(percent) or not 0.0 <= percent <= 100.0:
            raise ValueError(f"laser power {percent!r} outside 0..100 %")
        self._rebase_power()
        self.requested_power = percent
        self.emit("power_setpoint", percent)

    def read_power(self) -> float:
        """Measured output in percent of full power."""
        p = self._power_now()
        if p <= 1e-6:
            return 0.0
        return round(max(0.0, p + float(self.rng.normal(0.0, 0.002 * p + 0.01))), 4)

    async def enable(self) -> None:
        if self.interlocked:
            raise LaserError(102, "interlock open")
        if self._enable_gate is not None:
            assert self.enable_waiting is not None
            self.enable_waiting.put_nowait("enable")
            await self._enable_gate.wait()
        elif self.enable_delay > 0:
            await asyncio.sleep(self.enable_delay)
        self._rebase_power()
        self.enabled = True
        self.emit("enabled", True)

    def disable(self) -> None:
        self._rebase_power()
        self.enabled = False
        self.emit("enabled", False)

    def block_enable(self) -> asyncio.Event:
        """Test hook: hold :meth:`enable` until the returned event is set; each held call is
        put on :attr:`enable_waiting` when it arrives."""
        self._enable_gate = asyncio.Event()
        self.enable_waiting = asyncio.Queue()
        return self._enable_gate

    # -- device -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        x, y, z = self.position
        return {"x": x, "y": y, "z": z, "moving": self.moving, "enabled": self.enabled,
                "power": self.read_power()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "limits": list(self.limits),
                "z_limits": list(self.z_limits), "holes": len(self.holes)}
