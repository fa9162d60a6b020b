"""Device kind ``laser`` (simulated heating laser + XYZ stage) and its command set.

Node file shape (every field optional except ``name``)::

    - kind: laser
      name: co2
      speed: 5.0                 # stage mm/s (X and Y arrive together)
      z_speed: 1.0               # mm/s
      limits: [-25, 25]          # X/Y travel, mm
      z_limits: [-10, 10]
      holes: 10                  # a holes x holes grid, numbered 1.. row by row
      hole_spacing: 2.5          # mm
      hole_map: {"1": [0, 0], "2": [2.5, 0]}   # or explicit hole positions
      max_power: 75              # W at 100 %
      power_lag: 0.5             # s, output follows the setpoint with this lag
      enable_delay: 0.5          # s of supply warm-up on Enable
      interlocked: false         # true: Enable fails with ERROR 102
      seed: 1
      camera: true               # the stage camera of Snapshot (false: Snapshot answers
                                 # "No Response", as a real laser without video)
      snapshot_dir: snapshots    # where Snapshot saves pictures (default
                                 # <state_dir>/snapshots/<name>; relative to the node file)
      max_snapshots: 100         # the oldest pictures go beyond this many

The node's ``pychron_command_server`` serves it (this module appends a builder to
``COMMAND_SET_BUILDERS``).
"""

from __future__ import annotations

from pathlib import Path

from labbridge.devices.base import Device
from labbridge.devices.laser import Laser
from labbridge.links.pychron.dispatch import CommandSet
from labbridge.links.pychron.laser import LaserCommands
from labbridge.node.config import ConfigError, Section
from labbridge.node.kinds import pychron_server
from labbridge.node.registry import NodeContext, register_device


def _range(sec: Section, key: str, default: tuple[float, float]) -> tuple[float, float]:
    raw = sec.get_list(key, None)
    if raw is None:
        return default
    if len(raw) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                for v in raw) or raw[0] >= raw[1]:
        raise sec.error(key, "expected [low, high] with low < high")
    return float(raw[0]), float(raw[1])


@register_device("laser")
def _make_laser(sec: Section, ctx: NodeContext) -> Laser:
    hole_map = None
    raw = sec.get_mapping("hole_map", None)
    if raw is not None:
        hole_map = {}
        for k, v in raw.items():
            if not (isinstance(v, list) and len(v) == 2
                    and all(isinstance(c, int | float) and not isinstance(c, bool) for c in v)):
                raise sec.error("hole_map", f"hole {k!r}: expected [x, y]")
            hole_map[str(k)] = (float(v[0]), float(v[1]))
    return Laser(
        sec.get_str("name"),
        speed=sec.get_float("speed", 5.0, min=1e-3, max=1e4),
        z_speed=sec.get_float("z_speed", 1.0, min=1e-3, max=1e4),
        limits=_range(sec, "limits", (-25.0, 25.0)),
        z_limits=_range(sec, "z_limits", (-10.0, 10.0)),
        holes=sec.get_int("holes", 10, min=1, max=1000),
        hole_spacing=sec.get_float("hole_spacing", 2.5, min=0.0, max=1000.0),
        hole_map=hole_map,
        max_power=sec.get_float("max_power", 75.0, min=0.001, max=1e6),
        power_lag=sec.get_float("power_lag", 0.5, min=0.0, max=600.0),
        enable_delay=sec.get_float("enable_delay", 0.0, min=0.0, max=600.0),
        interlocked=sec.get_bool("interlocked", False),
        seed=sec.get_int("seed", None),
        snapshot_dir=_snapshot_dir(sec, ctx),
        max_snapshots=sec.get_int("max_snapshots", 100, min=1, max=100_000))


def _snapshot_dir(sec: Section, ctx: NodeContext) -> Path | None:
    if not sec.get_bool("camera", True):
        sec.get_str("snapshot_dir", None)
        return None
    folder = sec.get_str("snapshot_dir", None)
    if folder is not None:
        return ctx.resolve_path(folder)
    return ctx.state_dir / "snapshots" / str(sec.get_str("name"))


def _laser_set(devices: list[Device]) -> CommandSet | None:
    lasers = [d for d in devices if isinstance(d, Laser)]
    if not lasers:
        return None
    if len(lasers) > 1:
        raise ConfigError("one command server serves one laser (the laser vocabulary has no "
                          "laser argument); list the laser in 'devices'")
    return LaserCommands(lasers[0])


pychron_server.COMMAND_SET_BUILDERS.append(_laser_set)
