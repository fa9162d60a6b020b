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

Stage camera: :meth:`Laser.take_snapshot` renders what a camera looking down the beam sees
around the stage position (the holder's holes, the crosshair, the beam spot while the laser
fires) as a grayscale PNG, saves it in ``snapshot_dir`` (the node's state directory) and
returns its path and bytes (Pychron's ``Snapshot`` command; ADR 0192).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labbridge.devices.base import Device
from labbridge.protocol.png import encode_gray

#: A snapshot's base name: letters, digits, ``_``, ``-`` and ``.``; never a path.
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}$")
#: Side of the stage camera's picture in pixels, and millimetres per pixel.
CAMERA_PIXELS = 96
CAMERA_MM_PER_PIXEL = 0.05
HOLE_RADIUS_MM = 0.8

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
                 seed: int | None = None, snapshot_dir: Path | None = None,
                 max_snapshots: int = 100) -> None:
        super().__init__(name)
        #: Where snapshots are saved (None: the laser has no camera; ``Snapshot`` answers
        #: nothing, as the real server does without a video stage manager).
        self.snapshot_dir = snapshot_dir
        #: The oldest snapshots go beyond this many (the disk is a buffer too).
        self.max_snapshots = max_snapshots
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

    # -- stage camera ----------------------------------------------------------------------------
    def camera_image(self) -> np.ndarray:
        """What the stage camera sees now: ``CAMERA_PIXELS`` square, 8-bit, centred on the
        stage position; holes dark on the lit holder, a crosshair, the beam spot (brightness
        with the measured power) while the laser is enabled, and a little sensor noise."""
        n = CAMERA_PIXELS
        x0, y0, _ = self.position
        offsets = (np.arange(n) - (n - 1) / 2) * CAMERA_MM_PER_PIXEL
        gx = x0 + offsets[None, :]
        gy = y0 - offsets[:, None]  # image rows go down, the stage's y goes up
        img = np.full((n, n), 170.0)
        reach = n * CAMERA_MM_PER_PIXEL
        for hx, hy in self.holes.values():
            if abs(hx - x0) < reach and abs(hy - y0) < reach:
                img[(gx - hx) ** 2 + (gy - hy) ** 2 <= HOLE_RADIUS_MM ** 2] = 40.0
        power = self._power_now() if self.enabled else 0.0
        if power > 0:
            sigma = max(self.beam_diameter, 0.1) / 2
            spot = np.exp(-((gx - x0) ** 2 + (gy - y0) ** 2) / (2 * sigma ** 2))
            img += 2.5 * power * spot
        c = n // 2
        img[c, :] = img[:, c] = 255.0
        img += self.rng.normal(0.0, 3.0, img.shape)
        out: np.ndarray = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        return out

    def take_snapshot(self, name: str, pic_format: str = ".png") -> tuple[str, bytes] | None:
        """Save the camera's picture as ``<snapshot_dir>/<name>[-n].png`` and return (path,
        PNG bytes); None when the laser has no camera. ``name`` must be a plain base name
        (ValueError otherwise: nothing from the network names a path). ``pic_format`` is
        accepted as Pychron sends it (``.jpg`` or ``.png``); the picture is always a PNG."""
        if self.snapshot_dir is None:
            return None
        if not _SNAPSHOT_NAME.match(name) or ".." in name:
            raise ValueError(f"a snapshot name is a plain name (letters, digits, _ - .), "
                             f"got {name!r}")
        if pic_format not in (".png", ".jpg", "png", "jpg"):
            raise ValueError(f"picture format .png or .jpg, got {pic_format!r}")
        data = encode_gray(self.camera_image())
        folder = self.snapshot_dir
        folder.mkdir(parents=True, exist_ok=True)
        stem = name.removesuffix(".png").removesuffix(".jpg")
        path = folder / f"{stem}.png"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"{stem}-{n:03d}.png"
        fd, tmp = tempfile.mkstemp(prefix=".snapshot.", suffix=".tmp", dir=str(folder))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._prune()
        shown = str(path.absolute())
        self.emit("snapshot", shown)
        return shown, data

    def _prune(self) -> None:
        assert self.snapshot_dir is not None
        shots = sorted(self.snapshot_dir.glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
        for old in shots[:max(0, len(shots) - self.max_snapshots)]:
            with contextlib.suppress(OSError):
                old.unlink()

    # -- device -----------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        x, y, z = self.position
        return {"x": x, "y": y, "z": z, "moving": self.moving, "enabled": self.enabled,
                "power": self.read_power()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "limits": list(self.limits),
                "z_limits": list(self.z_limits), "holes": len(self.holes),
                "camera": self.snapshot_dir is not None}
