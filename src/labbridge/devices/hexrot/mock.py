"""Mock hexapod/rotator controllers: state machine and physics, no sockets (spec §3.10, §5.7).

A mock controller is a backend that speaks the real bytes through the socket side in
``labbridge.links.hexrotcomm.mock_server``; this module only holds what the controller *is*:
its config and telemetry (plain dicts turned into the layout's records on demand), its state
machine and its motion. The socket side calls :meth:`BaseMockController.handle_command` for
every command and :meth:`BaseMockController.telemetry_record` before every telemetry frame.

Generations differ in the state machine (spec §3.10 vs §5.7):

* D: STANDBY -> ENABLED -> STANDBY, CLEAR_ERROR from FAULT/STANDBY, ``ENABLE_DRIVES`` re-sends
  CONFIG; initial STANDBY.
* A: OFFLINE(AVAILABLE) -ENTER_CONTROL-> STANDBY -START-> DISABLED -ENABLE-> ENABLED and back
  with DISABLE / STANDBY / EXIT; initial OFFLINE.

A rejected command raises :class:`CommandError`: the gen-D socket side turns it into a NO_ACK
with the message as reason, the gen-A side logs it and stays silent, as the real one did.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from labbridge.devices.base import Device
from labbridge.protocol.hexrotcomm.devices import (
    DeviceSpec,
    RotatorEnabledSubstateParam,
    device_spec,
)
from labbridge.protocol.hexrotcomm.structs import (
    ApplicationStatus,
    ControllerState,
    EnabledSubstate,
    Generation,
    OfflineSubstate,
    SetStateParam,
)

log = logging.getLogger(__name__)

Handler = Callable[[tuple[float, ...]], float | None]

#: Physics integration step (s): motion is integrated in steps no longer than this, so the
#: velocity and acceleration limits hold between any two telemetry samples.
_MAX_STEP = 0.001
#: Unix epoch as a Modified Julian Date.
_MJD_UNIX = 40587.0
_STATIONARY = float(EnabledSubstate.STATIONARY)


class CommandError(Exception):
    """The controller refuses a command; the message is the NO_ACK reason (spec §3.10)."""


class BaseMockController(Device):
    """State machine and command dispatch shared by every mock controller.

    Subclasses give default config/telemetry values, add handlers in :meth:`extra_commands`
    and move things in :meth:`update`.
    """

    kind: ClassVar[str] = "hexrot_mock"
    device_name: ClassVar[str] = ""

    def __init__(
        self,
        name: str,
        generation: Generation | str = Generation.D,
        *,
        config: Mapping[str, Any] | None = None,
        telemetry_interval: float = 0.1,
        initial_state: ControllerState | None = None,
    ) -> None:
        super().__init__(name)
        self.generation = Generation(generation)
        self.spec: DeviceSpec = device_spec(self.device_name, self.generation)
        self.telemetry_interval = telemetry_interval
        cfg = dict(self.default_config())
        for key, value in (config or {}).items():
            if key not in self.spec.config.names:
                raise ValueError(f"{self.spec.config.name} has no field {key!r}")
            cfg[key] = value
        self.config: dict[str, Any] = cfg
        self.telemetry: dict[str, Any] = dict(self.default_telemetry())
        self._has_offline_substate = "offline_substate" in self.spec.telemetry.names
        if initial_state is None:
            initial_state = (ControllerState.OFFLINE if self.generation is Generation.A
                             else ControllerState.STANDBY)
        self._set_state(initial_state)
        #: Incremented whenever the config changes; the socket side re-sends CONFIG.
        self.config_version = 0
        self._last_tai: float | None = None
        codes = self.spec.codes
        self._set_state_code = int(codes["SET_STATE"])
        self._substate_code = int(codes["SET_ENABLED_SUBSTATE"])
        self.handlers: dict[int | tuple[int, int], Handler] = {}
        ss = self._set_state_code
        if self.generation is Generation.D:
            self.handlers[(ss, SetStateParam.ENABLE)] = self._do_enable
            self.handlers[(ss, SetStateParam.STANDBY)] = self._do_standby
            self.handlers[(ss, SetStateParam.CLEAR_ERROR)] = self._do_clear_error
            self.handlers[int(codes["ENABLE_DRIVES"])] = self._do_enable_drives
        else:
            A = ControllerState
            for param, src, dst in (
                (SetStateParam.ENTER_CONTROL, A.OFFLINE, A.STANDBY),
                (SetStateParam.START, A.STANDBY, A.DISABLED),
                (SetStateParam.ENABLE, A.DISABLED, A.ENABLED),
                (SetStateParam.DISABLE, A.ENABLED, A.DISABLED),
                (SetStateParam.STANDBY, A.DISABLED, A.STANDBY),
                (SetStateParam.EXIT, A.STANDBY, A.OFFLINE),
            ):
                self.handlers[(ss, param)] = self._transition(src, dst)
            self.handlers[(ss, SetStateParam.CLEAR_ERROR)] = self._do_clear_error
        self.handlers.update(self.extra_commands())
        self.commands_received = 0
        self.commands_rejected = 0

    # -- to be specialised --------------------------------------------------------------------
    def default_config(self) -> Mapping[str, Any]:
        return {}

    def default_telemetry(self) -> Mapping[str, Any]:
        return {"application_status": int(ApplicationStatus.DDS_COMMAND_SOURCE)}

    def extra_commands(self) -> dict[int | tuple[int, int], Handler]:
        return {}

    def update(self, tai: float, dt: float) -> None:
        """Advance the physics by ``dt`` seconds ending at ``tai``."""

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> ControllerState:
        """The controller state; ``telemetry["state"]`` holds the same value as a float."""
        return self._state

    @property
    def enabled_substate(self) -> int:
        return int(self.telemetry["enabled_substate"])

    def _set_state(self, state: ControllerState) -> None:
        old = self.telemetry.get("state")
        self._state = state
        self.telemetry["state"] = float(state)
        self.telemetry["enabled_substate"] = _STATIONARY
        if self._has_offline_substate:
            self.telemetry["offline_substate"] = float(
                OfflineSubstate.AVAILABLE if state == ControllerState.OFFLINE else 0)
        if old != float(state):
            self.on_state_change(state)
            self.emit("state", state.name)

    def on_state_change(self, state: ControllerState) -> None:
        """Hook: stop motion on leaving ENABLED, and so on."""

    def assert_state(self, state: ControllerState) -> None:
        if self.state != state:
            raise CommandError(f"state={self.state.name}; must be {state.name} for this command")

    def assert_substate(self, substate: EnabledSubstate) -> None:
        if self.enabled_substate != substate:
            raise CommandError(f"enabled_substate={EnabledSubstate(self.enabled_substate).name};"
                               f" must be {substate.name} for this command")

    def fault(self, reason: str = "") -> None:
        log.warning("%s: going to FAULT %s", self.name, reason)
        self._set_state(ControllerState.FAULT)

    def config_changed(self) -> None:
        self.config_version += 1

    # -- records for the socket side ------------------------------------------------------------
    def config_record(self) -> Any:
        return self.spec.config.make(**self.config)

    def telemetry_record(self, tai: float | None = None) -> Any:
        """Advance the physics to ``tai`` and return the telemetry struct."""
        tai = time.time() if tai is None else tai
        if self._last_tai is not None:
            dt = min(max(tai - self._last_tai, 0.0), 1.0)
            if dt > 0:
                self.update(tai, dt)
        self._last_tai = tai
        if "mjd" in self.telemetry:
            mjd = tai / 86400.0 + _MJD_UNIX
            self.telemetry["mjd"] = float(math.floor(mjd))
            self.telemetry["mjd_frac"] = mjd - math.floor(mjd)
        return self.spec.telemetry.make(**self.telemetry)

    # -- commands -----------------------------------------------------------------------------
    def handle_command(self, code: int, params: tuple[float, ...]) -> float:
        """Run one command; return the expected duration (s); raise :class:`CommandError`."""
        self.commands_received += 1
        key: int | tuple[int, int] = code
        if code in (self._set_state_code, self._substate_code):
            p1 = params[0] if params else 0.0
            key = (code, int(p1)) if math.isfinite(p1) else (code, -1)
        handler = self.handlers.get(key)
        try:
            if handler is None:
                raise CommandError(f"Unrecognized command code {code}; param1={params[0]:g}")
            duration = handler(params)
        except CommandError:
            self.commands_rejected += 1
            raise
        except Exception as exc:
            self.commands_rejected += 1
            log.exception("%s: command %s failed", self.name, code)
            raise CommandError(str(exc) or type(exc).__name__) from exc
        return float(duration or 0.0)

    def _transition(self, src: ControllerState, dst: ControllerState) -> Handler:
        def handler(params: tuple[float, ...]) -> None:
            self.assert_state(src)
            self._set_state(dst)

        return handler

    def _do_enable(self, params: tuple[float, ...]) -> None:
        self.assert_state(ControllerState.STANDBY)
        self._set_state(ControllerState.ENABLED)

    def _do_standby(self, params: tuple[float, ...]) -> None:
        self.assert_state(ControllerState.ENABLED)
        self._set_state(ControllerState.STANDBY)

    def _do_clear_error(self, params: tuple[float, ...]) -> None:
        if self.state not in (ControllerState.FAULT, ControllerState.STANDBY):
            raise CommandError(f"state={self.state.name}; must be FAULT or STANDBY to clear "
                               "an error")
        self._set_state(ControllerState.STANDBY)

    def _do_enable_drives(self, params: tuple[float, ...]) -> None:
        self.config["drives_enabled"] = bool(params[0])
        self.config_changed()

    # -- Device -----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state.name, "enabled_substate": self.enabled_substate,
                "position": self.telemetry.get(self.spec.position_field)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.spec.name,
                "generation": self.generation.value}


class SimpleMockController(BaseMockController):
    """The spec's simple controller: SET_STATE, ENABLE_DRIVES, SET_ENABLED_SUBSTATE, MOVE.

    ``MOVE`` requires ENABLED; a position outside ``[min_position, max_position]`` is refused;
    each telemetry tick adds 0.001 to ``curr_position`` (spec §3.10, §5.7).
    """

    kind = "hexrot_simple_mock"
    device_name = "simple"

    def default_config(self) -> Mapping[str, Any]:
        cfg: dict[str, Any] = {"min_position": -25.0, "max_position": 25.0,
                               "max_velocity": 47.0}
        if "drives_enabled" in self.spec.config.names:
            cfg["drives_enabled"] = False
        return cfg

    def extra_commands(self) -> dict[int | tuple[int, int], Handler]:
        return {int(self.spec.codes["MOVE"]): self._do_move}

    def _do_move(self, params: tuple[float, ...]) -> None:
        self.assert_state(ControllerState.ENABLED)
        pos = params[0]
        lo, hi = self.config["min_position"], self.config["max_position"]
        if not lo <= pos <= hi:
            raise CommandError(f"position {pos} not in range [{lo}, {hi}]")
        self.telemetry["cmd_position"] = pos
        self.telemetry["curr_position"] = pos

    def telemetry_record(self, tai: float | None = None) -> Any:
        self.telemetry["curr_position"] = self.telemetry.get("curr_position", 0.0) + 0.001
        return super().telemetry_record(tai)


#: ts_mtrotator constants: maximum velocity (deg/s) and acceleration (deg/s^2) (spec §3.11).
ROTATOR_MAX_VELOCITY = 3.5
ROTATOR_MAX_ACCEL = 1.0


class RotatorMockController(BaseMockController):
    """Camera rotator mock: point-to-point moves obeying the configured limits (spec §4.1).

    * ``POSITION_SET angle`` (ENABLED, STATIONARY) stores the target; outside
      ``[lower_pos_limit, upper_pos_limit]`` it is refused.
    * ``SET_ENABLED_SUBSTATE MOVE_POINT_TO_POINT`` starts the move; the ack's duration is the
      time a trapezoidal profile needs.
    * ``SET_ENABLED_SUBSTATE STOP`` brakes at ``accel_limit`` (CONTROLLED_STOPPING, then
      STATIONARY).
    * ``CONFIG_VEL v`` / ``CONFIG_ACCEL a`` change the limits within the hard maxima.
    * ``|velocity| <= velocity_limit`` and ``|acceleration| <= accel_limit`` always hold.
    """

    kind = "hexrot_rotator_mock"
    device_name = "rotator"

    def __init__(self, name: str, generation: Generation | str = Generation.D, *,
                 config: Mapping[str, Any] | None = None, telemetry_interval: float = 0.02,
                 initial_state: ControllerState | None = None,
                 initial_position: float = 0.0) -> None:
        self.velocity = 0.0
        self.target: float | None = None
        self.set_pos: float | None = None
        super().__init__(name, generation, config=config, telemetry_interval=telemetry_interval,
                         initial_state=initial_state)
        self.position = float(initial_position)
        self._last_motion = (self.position, 0.0)
        self.max_velocity = max(ROTATOR_MAX_VELOCITY, self.config["velocity_limit"],
                                self.config["max_velocity_limit"])
        self.max_accel = max(ROTATOR_MAX_ACCEL, self.config["accel_limit"])
        self._publish_motion()

    def default_config(self) -> Mapping[str, Any]:
        return {
            "velocity_limit": ROTATOR_MAX_VELOCITY,
            "accel_limit": ROTATOR_MAX_ACCEL,
            "pos_error_threshold": 0.1,
            "upper_pos_limit": 90.0,
            "lower_pos_limit": -90.0,
            "following_error_threshold": 0.1,
            "track_success_pos_threshold": 0.01,
            "tracking_lost_timeout": 5.0,
            "emergency_jerk_limit": 20.0,
            "emergency_accel_limit": 10.0,
            "disable_limit_max_time": 120.0,
            "max_velocity_limit": ROTATOR_MAX_VELOCITY,
            "drives_enabled": False,
        }

    def extra_commands(self) -> dict[int | tuple[int, int], Handler]:
        c = self.spec.codes
        sub = self._substate_code
        return {
            int(c["POSITION_SET"]): self._do_position_set,
            (sub, RotatorEnabledSubstateParam.MOVE_POINT_TO_POINT): self._do_move_ptp,
            (sub, RotatorEnabledSubstateParam.STOP): self._do_stop,
            int(c["CONFIG_VEL"]): self._do_config_vel,
            int(c["CONFIG_ACCEL"]): self._do_config_accel,
            int(c["FAULT"]): self._do_fault,
        }

    # -- commands ---------------------------------------------------------------------------
    def _do_position_set(self, params: tuple[float, ...]) -> None:
        self.assert_state(ControllerState.ENABLED)
        angle = params[0]
        lo, hi = self.config["lower_pos_limit"], self.config["upper_pos_limit"]
        if not (math.isfinite(angle) and lo <= angle <= hi):
            raise CommandError(f"position {angle:g} not in range [{lo:g}, {hi:g}]")
        self.set_pos = angle
        self.telemetry["set_pos"] = angle

    def _do_move_ptp(self, params: tuple[float, ...]) -> float:
        self.assert_state(ControllerState.ENABLED)
        if self.set_pos is None:
            raise CommandError("no position set: send POSITION_SET first")
        self.target = self.set_pos
        self.set_pos = None
        self.telemetry["enabled_substate"] = float(EnabledSubstate.MOVING_POINT_TO_POINT)
        self.telemetry["flags_pt2pt_move_complete"] = 0.0
        self.telemetry["flags_new_pt2pt_command"] = 1.0
        return self.move_duration(self.target - self.position)

    def _do_stop(self, params: tuple[float, ...]) -> float:
        self.assert_state(ControllerState.ENABLED)
        a = self.config["accel_limit"]
        v = self.velocity
        self.target = self.position + math.copysign(v * v / (2 * a), v) if v else self.position
        self.telemetry["enabled_substate"] = float(EnabledSubstate.CONTROLLED_STOPPING)
        return float(abs(v) / a)

    def _do_config_vel(self, params: tuple[float, ...]) -> None:
        v = params[0]
        if not 0 < v <= self.max_velocity:
            raise CommandError(f"velocity {v:g} not in range (0, {self.max_velocity:g}]")
        self.config["velocity_limit"] = v
        self.config_changed()

    def _do_config_accel(self, params: tuple[float, ...]) -> None:
        a = params[0]
        if not 0 < a <= self.max_accel:
            raise CommandError(f"acceleration {a:g} not in range (0, {self.max_accel:g}]")
        self.config["accel_limit"] = a
        self.config_changed()

    def _do_fault(self, params: tuple[float, ...]) -> None:
        self.fault("FAULT command")

    def on_state_change(self, state: ControllerState) -> None:
        if state != ControllerState.ENABLED:
            self.velocity = 0.0
            self.target = None
            self.set_pos = None

    # -- physics ------------------------------------------------------------------------------
    def move_duration(self, distance: float) -> float:
        """Time of a trapezoidal (or triangular) profile from rest to rest."""
        d = abs(distance)
        v, a = self.config["velocity_limit"], self.config["accel_limit"]
        if d <= v * v / a:
            return 2 * math.sqrt(d / a)
        return float(d / v + v / a)

    def update(self, tai: float, dt: float) -> None:
        if self.target is not None:
            steps = max(1, math.ceil(dt / _MAX_STEP))
            h = dt / steps
            for _ in range(steps):
                if self._step(h):
                    break
        self._publish_motion()
        motion = (self.position, self.velocity)
        if motion != self._last_motion:
            # Only while something moves: a resting rotator emits nothing per telemetry tick.
            self._last_motion = motion
            self.emit("motion", {"position": self.position, "velocity": self.velocity})

    def _step(self, h: float) -> bool:
        """One integration step; True when the target is reached."""
        assert self.target is not None
        vmax, a = self.config["velocity_limit"], self.config["accel_limit"]
        d = self.target - self.position
        v = self.velocity
        if abs(d) < 1e-9 and abs(v) <= a * h:
            self._arrive()
            return True
        v_des = math.copysign(min(vmax, math.sqrt(2 * a * abs(d))), d)
        v_new = v + max(-a * h, min(a * h, v_des - v))
        new_pos = self.position + 0.5 * (v + v_new) * h
        if (d > 0 and new_pos >= self.target) or (d < 0 and new_pos <= self.target):
            if abs(v_new) <= 2 * a * h:
                self._arrive()
                return True
            new_pos = self.target
        self.position = new_pos
        self.velocity = v_new
        self.telemetry["demand_accel"] = (v_new - v) / h
        return False

    def _arrive(self) -> None:
        assert self.target is not None
        self.position = self.target
        self.velocity = 0.0
        self.target = None
        self.telemetry["demand_accel"] = 0.0
        self.telemetry["enabled_substate"] = float(EnabledSubstate.STATIONARY)
        self.telemetry["flags_pt2pt_move_complete"] = 1.0
        self.telemetry["flags_move_success"] = 1.0
        self.emit("position", self.position)

    def _publish_motion(self) -> None:
        t = self.telemetry
        t["current_pos"] = self.position
        t["demand_pos"] = self.position if self.target is None else self.target
        t["demand_vel"] = self.velocity
        t["rotator_fb"] = self.position
        t["current_vel_ch_a_fb"] = t["current_vel_ch_b_fb"] = self.velocity
        moving = self.target is not None
        status = int(ApplicationStatus.DDS_COMMAND_SOURCE)
        if not moving:
            status |= int(ApplicationStatus.MOVE_COMPLETE)
        t["application_status"] = status

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "velocity": self.velocity, "target": self.target}
