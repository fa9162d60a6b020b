"""Mock MTHexapod controller: six struts, position and rotation commands (spec §4.2).

Behaviour and constants from ``lsst-ts/ts_mthexapod@v1.8.0`` (commit 58c96a2):
``python/lsst/ts/mthexapod/mock_controller.py`` (command set and checks), ``constants.py``
(position limits, pivots, strut attachment points, strut length and speed), ``utils.py``
(range checks and their messages), ``structs.py`` (the 129-byte Config and 648-byte Telemetry
this mock fills). Generation D only (the current real system).

A position is six values: x, y, z in micrometres and u, v, w (rotations about x, y, z) in
degrees, of the pivot point.

* ``POSITION_SET x y z u v w`` needs ENABLED and STATIONARY and a position within
  ``pos_limits`` (maxXY, minZ, maxZ, maxUV, minW, maxW); any other command that runs clears
  it (upstream ``end_run_command``).
* ``SET_ENABLED_SUBSTATE MOVE_POINT_TO_POINT`` (ENABLED, STATIONARY, after POSITION_SET)
  computes the six strut lengths by inverse kinematics and refuses a move that would take a
  strut beyond ``max_displacement_strut``; the struts then move in step (each at most
  ``max_velocity_strut``), the pose goes from start to target along a straight line, and the
  move ends exactly at the target. The ACK's duration is the move's.
* ``SET_ENABLED_SUBSTATE STOP`` stops where the struts are (STATIONARY at once, as upstream).
* ``CONFIG_ACCEL``, ``CONFIG_VEL`` (xy, uv, z, w), ``CONFIG_LIMITS``, ``SET_PIVOTPOINT`` need
  ENABLED and STATIONARY and values within the maxima; each re-sends CONFIG before its ACK.
* ``OFFSET`` and ``SET_STATE FAULT`` have no handler upstream: NO_ACK "Unrecognized".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from labbridge.devices.hexrot.mock import BaseMockController, CommandError, Handler
from labbridge.protocol.hexrotcomm.devices import HexapodEnabledSubstateParam
from labbridge.protocol.hexrotcomm.structs import (
    ApplicationStatus,
    ControllerState,
    EnabledSubstate,
    Generation,
)

#: Limits of the configuration commands (ts_mthexapod@v1.8.0 constants.py).
MAX_ACCEL_LIMIT = 500.0  # um/s^2 (strut)
MAX_LINEAR_VEL_LIMIT = 2000.0  # um/s
MAX_ANGULAR_VEL_LIMIT = 0.1146  # deg/s
#: Strut length range (um) and speed (um/s).
ACTUATOR_MAX_LENGTH = 14100.0
ACTUATOR_MIN_LENGTH = -14100.0
ACTUATOR_SPEED = 500.0
#: Encoder counts per micrometre (the upstream mock's guess).
ENCODER_RESOLUTION = 10.0
#: Motor current per fraction of full strut speed (A) and bus voltage (V), as upstream models.
AMPS_PER_FRAC_SPEED = 1.0
BUS_VOLTAGE = 100.0

#: Per hexapod (SAL index 1 camera, 2 M2): position limits (maxXY, minZ, maxZ, maxUV, minW,
#: maxW), pivot (um), strut base and mirror attachment points (um).
HEXAPODS: dict[str, dict[str, Any]] = {
    "camera": {
        "pos_limits": (11400.0, -13100.0, 13100.0, 0.36, -0.10, 0.10),
        "pivot": (0.0, 0.0, -2758400.0),
        "base": ((227600, 653800, -525000), (-227600, 653800, -525000),
                 (-680000, -129700, -525000), (-452300, -524000, -525000),
                 (452300, -524000, -525000), (680000, -129700, -525000)),
        "mirror": ((472800, 512200, -121400), (-472800, 512200, -121400),
                   (-680000, 153300, -121400), (-207200, -665500, -121400),
                   (207200, -665500, -121400), (680000, 153300, -121400)),
    },
    "m2": {
        "pos_limits": (10500.0, -8900.0, 8900.0, 0.175, -0.05, 0.05),
        "pivot": (0.0, 0.0, -703000.0),
        "base": ((0, 1701800, 114300), (-1542350, -719210, 114300),
                 (1542350, -719210, 114300), (790, 1460490, 228600),
                 (-1503370, 7660, 228600), (1503370, 7660, 228600)),
        "mirror": ((0, 1701800, 607300), (-1542350, -719210, 607300),
                   (1542350, -719210, 607300), (493790, 1460490, 228600),
                   (-1256870, -419290, 228600), (1256870, -419290, 228600)),
    },
}
AXES = ("x", "y", "z", "u", "v", "w")
LIMIT_NAMES = ("maxXY", "minZ", "maxZ", "maxUV", "minW", "maxW")


def _rotation(u: float, v: float, w: float) -> np.ndarray:
    """Rotation about x by u, then y by v, then z by w (degrees): Rx @ Ry @ Rz."""
    a, b, c = np.radians([u, v, w])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rx @ ry @ rz  # type: ignore[no-any-return]


class HexapodKinematics:
    """Strut length changes (um) for a pose of the pivot point (textbook inverse kinematics:
    the mirror-end attachment points turn about the pivot and translate with it)."""

    def __init__(self, base: Sequence[Sequence[float]], mirror: Sequence[Sequence[float]],
                 pivot: Sequence[float]) -> None:
        self.base = np.array(base, dtype=float)
        self.mirror = np.array(mirror, dtype=float)
        self.pivot = np.array(pivot, dtype=float)
        self.neutral = np.linalg.norm(self.mirror - self.base, axis=1)

    def strut_deltas(self, pose: Sequence[float]) -> np.ndarray:
        x, y, z, u, v, w = pose
        moved = self.pivot + np.array([x, y, z]) + (self.mirror - self.pivot) @ _rotation(
            u, v, w).T
        return np.linalg.norm(moved - self.base, axis=1) - self.neutral  # type: ignore[no-any-return]


class HexapodMockController(BaseMockController):
    """Camera or M2 hexapod mock (generation D)."""

    kind = "hexrot_hexapod_mock"
    device_name = "hexapod"

    def __init__(self, name: str, generation: Generation | str = Generation.D, *,
                 index: str = "camera", config: Mapping[str, Any] | None = None,
                 telemetry_interval: float = 0.1,
                 initial_state: ControllerState | None = None) -> None:
        if index not in HEXAPODS:
            raise ValueError(f"hexapod index must be one of {', '.join(HEXAPODS)}, got "
                             f"{index!r}")
        self.index = index
        self.geometry = HEXAPODS[index]
        self.max_pos_limits: tuple[float, ...] = self.geometry["pos_limits"]
        self.pose = np.zeros(6)
        self.lengths = np.zeros(6)
        self.set_position: tuple[float, ...] | None = None
        self.move_commanded = False
        # The move in progress: start and end pose and lengths, start time, duration.
        self._move: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float] | None
        self._move = None
        super().__init__(name, generation, config=config, telemetry_interval=telemetry_interval,
                         initial_state=initial_state)
        self.kinematics = HexapodKinematics(self.geometry["base"], self.geometry["mirror"],
                                            self.config["pivot"])
        self.telemetry["commanded_pos"] = (0.0,) * 6
        self._publish()

    def default_config(self) -> Mapping[str, Any]:
        return {
            "acceleration_strut": MAX_ACCEL_LIMIT,
            # order xy, z, uv, w (ts_mthexapod@v1.8.0 structs.Config comment)
            "vel_limits": (MAX_LINEAR_VEL_LIMIT, MAX_LINEAR_VEL_LIMIT, MAX_ANGULAR_VEL_LIMIT,
                           MAX_ANGULAR_VEL_LIMIT),
            "max_displacement_strut": ACTUATOR_MAX_LENGTH,
            "max_velocity_strut": ACTUATOR_SPEED,
            "pos_limits": self.geometry["pos_limits"],
            "pivot": self.geometry["pivot"],
            "drives_enabled": False,
        }

    def extra_commands(self) -> dict[int | tuple[int, int], Handler]:
        c = self.spec.codes
        sub = self._substate_code
        P = HexapodEnabledSubstateParam
        return {
            (sub, P.MOVE_POINT_TO_POINT): self._do_move_ptp,
            (sub, P.STOP): self._do_stop,
            int(c["POSITION_SET"]): self._do_position_set,
            int(c["SET_PIVOTPOINT"]): self._do_set_pivotpoint,
            int(c["CONFIG_ACCEL"]): self._do_config_accel,
            int(c["CONFIG_LIMITS"]): self._do_config_limits,
            int(c["CONFIG_VEL"]): self._do_config_vel,
        }

    def end_command(self, handler: Handler) -> None:
        if handler != self._do_position_set:
            self.set_position = None

    # -- checks (messages as upstream utils.py, short enough for the 49-byte reason) --------
    @staticmethod
    def _in_range(name: str, value: float, lo: float, hi: float) -> None:
        if not lo <= value <= hi:  # NaN fails too
            raise CommandError(f"{name}={value:g} not in range [{lo:g}, {hi:g}]")

    def check_position(self, pos: Sequence[float]) -> None:
        max_xy, min_z, max_z, max_uv, min_w, max_w = self.config["pos_limits"]
        for name, value, lo, hi in (("x", pos[0], -max_xy, max_xy), ("y", pos[1], -max_xy, max_xy),
                                    ("z", pos[2], min_z, max_z), ("u", pos[3], -max_uv, max_uv),
                                    ("v", pos[4], -max_uv, max_uv), ("w", pos[5], min_w, max_w)):
            self._in_range(name, value, lo, hi)

    # -- commands ---------------------------------------------------------------------------
    def _do_position_set(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        pos = tuple(float(p) for p in params[:6])
        self.check_position(pos)
        self.set_position = pos

    def _do_move_ptp(self, params: tuple[float, ...]) -> float:
        self.assert_stationary()
        if self.set_position is None:
            raise CommandError("Must call POSITION_SET before MOVE_POINT_TO_POINT")
        target = np.array(self.set_position)
        lengths = self.kinematics.strut_deltas(self.set_position)
        limit = self.config["max_displacement_strut"]
        bad = [i + 1 for i, d in enumerate(lengths) if not -limit <= d <= limit]
        if bad:
            raise CommandError(f"strut(s) {','.join(map(str, bad))} would be out of range")
        speed = self.config["max_velocity_strut"]
        duration = float(np.max(np.abs(lengths - self.lengths))) / speed if speed > 0 else 0.0
        self.telemetry["commanded_pos"] = tuple(float(v) for v in target)
        self.telemetry["strut_commanded_final_pos"] = tuple(float(v) for v in lengths)
        self.move_commanded = True
        if duration == 0.0:
            self.pose, self.lengths = target, lengths
            self._publish()
            return 0.0
        self._move = (self.pose.copy(), target, self.lengths.copy(), lengths,
                      self._now(), duration)
        self.telemetry["enabled_substate"] = float(EnabledSubstate.MOVING_POINT_TO_POINT)
        self._publish()
        return duration

    def _do_stop(self, params: tuple[float, ...]) -> None:
        self.assert_state(ControllerState.ENABLED)
        self._move = None
        self.move_commanded = False
        self.telemetry["enabled_substate"] = float(EnabledSubstate.STATIONARY)
        self._publish()

    def _do_set_pivotpoint(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        pivot = tuple(float(p) for p in params[:3])
        if not all(math.isfinite(p) for p in pivot):
            raise CommandError(f"pivot {pivot} is not finite")
        self.config["pivot"] = pivot
        self.kinematics = HexapodKinematics(self.geometry["base"], self.geometry["mirror"],
                                            pivot)
        self.config_changed()

    def _do_config_accel(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        a = params[0]
        if not 0 < a <= MAX_ACCEL_LIMIT:
            raise CommandError(f"accel limit {a:g} not in range (0, {MAX_ACCEL_LIMIT:g}]")
        self.config["acceleration_strut"] = a
        self.config_changed()

    def _do_config_limits(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        new = tuple(float(p) for p in params[:6])
        # utils.check_new_position_limits: 0 < max <= cap; cap <= min < 0.
        for name, value, cap in zip(LIMIT_NAMES, new, self.max_pos_limits, strict=True):
            ok = 0 < value <= cap if cap > 0 else cap <= value < 0
            if not ok:
                lo, hi = (0.0, cap) if cap > 0 else (cap, 0.0)
                raise CommandError(f"{name}={value:g} not in range [{lo:g}, {hi:g}]")
        self.config["pos_limits"] = new
        self.config_changed()

    def _do_config_vel(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        xy, uv, z, w = params[:4]
        for name, value, cap in (("xy", xy, MAX_LINEAR_VEL_LIMIT),
                                 ("uv", uv, MAX_ANGULAR_VEL_LIMIT),
                                 ("z", z, MAX_LINEAR_VEL_LIMIT),
                                 ("w", w, MAX_ANGULAR_VEL_LIMIT)):
            if not 0 < value <= cap:
                raise CommandError(f"{name}={value:g} not in range [0, {cap:g}]")
        self.config["vel_limits"] = (xy, z, uv, w)  # stored in the order xy, z, uv, w
        self.config_changed()

    def on_state_change(self, state: ControllerState) -> None:
        if state != ControllerState.ENABLED:  # not a controlled stop: halt where it is
            self._move = None
            self.move_commanded = False
            self.set_position = None
            if hasattr(self, "kinematics"):
                self._publish()

    # -- physics ----------------------------------------------------------------------------
    def _now(self) -> float:
        return self._last_tai if self._last_tai is not None else 0.0

    def update(self, tai: float, dt: float) -> None:
        move = self._move
        if move is not None:
            pose0, pose1, len0, len1, t0, duration = move
            frac = (tai - t0) / duration
            if frac >= 1.0:
                self.pose, self.lengths = pose1.copy(), len1.copy()  # exactly at the target
                self._move = None
                self.telemetry["enabled_substate"] = float(EnabledSubstate.STATIONARY)
                self.emit("position", [float(v) for v in self.pose])
            else:
                frac = max(frac, 0.0)
                self.pose = pose0 + (pose1 - pose0) * frac
                self.lengths = len0 + (len1 - len0) * frac
        self._publish()

    @property
    def strut_speeds(self) -> np.ndarray:
        move = self._move
        if move is None:
            return np.zeros(6)
        _, _, len0, len1, _, duration = move
        return (len1 - len0) / duration  # type: ignore[no-any-return]

    def _publish(self) -> None:
        t = self.telemetry
        t["measured_xyz"] = tuple(float(v) for v in self.pose[:3])
        t["measured_uvw"] = tuple(float(v) for v in self.pose[3:])
        lengths = [float(v) for v in self.lengths]
        speeds = [float(v) for v in self.strut_speeds]
        t["strut_commanded_delta_pos_m"] = tuple(v * 1e-6 for v in lengths)
        t["strut_measured_pos_raw"] = tuple(round(v * ENCODER_RESOLUTION) for v in lengths)
        vmax = self.config["max_velocity_strut"] or 1.0
        t["motor_current"] = tuple(AMPS_PER_FRAC_SPEED * s / vmax for s in speeds)
        t["bus_voltage"] = (BUS_VOLTAGE,) * 3
        # estimated_posfiltvel: pos in um, pos_filt in m, vel in m/s (structs.py comments)
        t["estimated_posfiltvel"] = tuple((v, v * 1e-6, s * 1e-6)
                                          for v, s in zip(lengths, speeds, strict=True))
        moving = self._move is not None
        status = int(ApplicationStatus.DDS_COMMAND_SOURCE)
        if self.move_commanded and not moving:  # upstream: in position after a move
            status |= int(ApplicationStatus.MOVE_COMPLETE)
        t["application_status"] = status

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "position": [float(v) for v in self.pose],
                "moving": self._move is not None}
