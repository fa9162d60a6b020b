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

Times are TAI Unix seconds (spec §3.7): the socket side passes the time a command arrived, so
motion is planned from where the device really is at that instant.

After each command the device's ``end_command`` hook runs as upstream's ``end_run_command``
does: in generation D only after a command that succeeded
(``lsst-ts/ts_hexrotcomm@v1.3.7: base_mock_controller.py`` ``run_command``), in generation A
after every recognised command, refused or not (``@v0.22.0: base_mock_controller.py``).
"""

from __future__ import annotations

import logging
import math
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
    FaultSubstate,
    Generation,
    OfflineSubstate,
    SetStateParam,
)
from labbridge.protocol.hexrotcomm.tai import current_tai, utc_from_tai

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
        self._telemetry_names = frozenset(self.spec.telemetry.names)
        self.telemetry: dict[str, Any] = {
            k: v for k, v in self.default_telemetry().items() if k in self._telemetry_names}
        self._has_offline_substate = "offline_substate" in self._telemetry_names
        self._has_fault_substate = "fault_substate" in self._telemetry_names
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
        if self._has_fault_substate:  # as ts_mtrotator@v1.3.1 mock_controller.update_telemetry
            self.telemetry["fault_substate"] = float(
                FaultSubstate.WAIT_CLEAR_ERROR if state == ControllerState.FAULT
                else FaultSubstate.NO_ERROR)
        if old != float(state):
            self.on_state_change(state)
            self.emit("state", state.name)

    def on_state_change(self, state: ControllerState) -> None:
        """Hook: stop motion on leaving ENABLED, and so on."""

    def assert_state(self, state: ControllerState) -> None:
        if self.state != state:
            raise CommandError(f"state={self.state.name}; must be {state.name} for this command")

    def assert_substate(self, substate: EnabledSubstate) -> None:
        # Reasons fit the 49 bytes a COMMAND_STATUS carries (spec §3.4).
        if self.enabled_substate != substate:
            raise CommandError(f"substate={EnabledSubstate(self.enabled_substate).name}, "
                               f"not {substate.name}")

    def assert_stationary(self) -> None:
        """ENABLED and STATIONARY, as upstream ``assert_stationary`` (spec §11)."""
        self.assert_state(ControllerState.ENABLED)
        self.assert_substate(EnabledSubstate.STATIONARY)

    def fault(self, reason: str = "") -> None:
        log.warning("%s: going to FAULT %s", self.name, reason)
        self._set_state(ControllerState.FAULT)

    def config_changed(self) -> None:
        self.config_version += 1

    # -- records for the socket side ------------------------------------------------------------
    def config_record(self) -> Any:
        return self.spec.config.make(**self.config)

    def advance(self, tai: float) -> None:
        """Bring the physics to TAI ``tai`` (never backwards)."""
        if self._last_tai is not None:
            dt = min(max(tai - self._last_tai, 0.0), 1.0)
            if dt > 0:
                self.update(tai, dt)
            if tai < self._last_tai:
                return
        self._last_tai = tai

    def telemetry_record(self, tai: float | None = None) -> Any:
        """Advance the physics to TAI ``tai`` (default: now) and return the telemetry struct."""
        tai = current_tai() if tai is None else tai
        self.advance(tai)
        if "mjd" in self.telemetry:  # MJD counts UTC days
            mjd = utc_from_tai(tai) / 86400.0 + _MJD_UNIX
            self.telemetry["mjd"] = float(math.floor(mjd))
            self.telemetry["mjd_frac"] = mjd - math.floor(mjd)
        return self.spec.telemetry.make(**self.telemetry)

    # -- commands -----------------------------------------------------------------------------
    def handle_command(self, code: int, params: tuple[float, ...],
                       tai: float | None = None) -> float:
        """Run one command received at TAI ``tai`` (default: the last physics time); return the
        expected duration (s); raise :class:`CommandError`."""
        if tai is not None:
            self.advance(tai)
        self.commands_received += 1
        key: int | tuple[int, int] = code
        if code in (self._set_state_code, self._substate_code):
            p1 = params[0] if params else 0.0
            key = (code, int(p1)) if math.isfinite(p1) else (code, -1)
        handler = self.handlers.get(key)
        if handler is None:
            self.commands_rejected += 1
            p1 = params[0] if params else 0.0
            raise CommandError(f"Unrecognized command code {code}; param1={p1:g}")
        ok = False
        try:
            duration = handler(params)
            ok = True
        except CommandError:
            self.commands_rejected += 1
            raise
        except Exception as exc:
            self.commands_rejected += 1
            log.exception("%s: command %s failed", self.name, code)
            raise CommandError(str(exc) or type(exc).__name__) from exc
        finally:
            if ok or self.generation is Generation.A:
                self.end_command(handler)
        return float(duration or 0.0)

    def end_command(self, handler: Handler) -> None:
        """Hook run after a command (upstream ``end_run_command``): clear the set position."""

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

    def signals(self) -> dict[str, dict[str, Any]]:
        return {"state": {"on_change": True}, "position": {"on_change": True}}


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


#: ts_mtrotator constants: the hard maxima of CONFIG_VEL (deg/s) and CONFIG_ACCEL (deg/s^2)
#: (``lsst-ts/ts_mtrotator@v1.3.1: python/lsst/ts/mtrotator/constants.py``; the same values at
#: ``@v0.18.0``, generation A).
ROTATOR_MAX_VELOCITY = 3.5
ROTATOR_MAX_ACCEL = 1.0


class _Segment:
    """Constant acceleration ``a`` from ``(t0, p0, v0)`` until ``t1``."""

    __slots__ = ("a", "p0", "t0", "t1", "v0")

    def __init__(self, t0: float, t1: float, p0: float, v0: float, a: float) -> None:
        self.t0, self.t1, self.p0, self.v0, self.a = t0, t1, p0, v0, a

    def at(self, t: float) -> tuple[float, float]:
        dt = min(max(t - self.t0, 0.0), self.t1 - self.t0)
        return self.p0 + self.v0 * dt + 0.5 * self.a * dt * dt, self.v0 + self.a * dt

    def end(self) -> tuple[float, float]:
        return self.at(self.t1)


def _rest_to_rest(t0: float, p0: float, target: float, vmax: float,
                  amax: float) -> list[_Segment]:
    """Trapezoidal (or triangular) profile from rest at ``p0`` to rest at ``target``."""
    d = target - p0
    dist = abs(d)
    if dist == 0.0:
        return []
    s = math.copysign(1.0, d)
    if dist >= vmax * vmax / amax:  # reaches vmax: accelerate, cruise, brake
        ta = vmax / amax
        tc = (dist - vmax * vmax / amax) / vmax
        vpeak = vmax
    else:  # triangle
        vpeak = math.sqrt(amax * dist)
        ta = vpeak / amax
        tc = 0.0
    segs = [_Segment(t0, t0 + ta, p0, 0.0, s * amax)]
    p1, _ = segs[0].end()
    if tc > 0:
        segs.append(_Segment(t0 + ta, t0 + ta + tc, p1, s * vpeak, 0.0))
        p1, _ = segs[-1].end()
    segs.append(_Segment(t0 + ta + tc, t0 + 2 * ta + tc, p1, s * vpeak, -s * amax))
    return segs


class RotatorMockController(BaseMockController):
    """Camera rotator mock: point-to-point moves obeying the configured limits (spec §4.1).

    Behaviour taken from ``lsst-ts/ts_mtrotator@v1.3.1: python/lsst/ts/mtrotator/
    mock_controller.py`` (generation D) and ``@v0.18.0`` (generation A):

    * ``POSITION_SET angle`` needs ENABLED and STATIONARY (upstream ``assert_stationary``);
      it stores the target (``set_pos`` in telemetry). Any other command that runs clears it
      (upstream ``end_run_command``), so ``MOVE_POINT_TO_POINT`` must follow it directly.
      labbridge also refuses an angle outside ``[lower_pos_limit, upper_pos_limit]`` here
      (upstream's mock refuses it when the move starts).
    * ``SET_ENABLED_SUBSTATE MOVE_POINT_TO_POINT`` starts a trapezoidal move at
      ``velocity_limit`` / ``accel_limit``; the ACK's duration is the planned time; the move
      ends exactly at the target with zero velocity.
    * ``SET_ENABLED_SUBSTATE STOP`` brakes at ``accel_limit`` (CONTROLLED_STOPPING, then
      STATIONARY exactly where the braking curve ends).
    * ``CONFIG_VEL v`` / ``CONFIG_ACCEL a`` need ENABLED and STATIONARY and
      ``0 < v <= 3.5``, ``0 < a <= 1.0`` (the CSC's constants); ``CONFIG_JERK``,
      ``CONFIG_ACCEL_EMERGENCY``, ``CONFIG_JERK_EMERGENCY`` (gen D) need a positive value.
      Each re-sends CONFIG before its ACK.
    * ``SET_STATE FAULT`` (param1 = 8, gen D, hexrotcomm >= 1.1.0) and the gen-A ``FAULT``
      command go to FAULT.
    * ``|velocity| <= velocity_limit`` and ``|acceleration| <= accel_limit`` always hold.
    """

    kind = "hexrot_rotator_mock"
    device_name = "rotator"

    def __init__(self, name: str, generation: Generation | str = Generation.D, *,
                 config: Mapping[str, Any] | None = None, telemetry_interval: float = 0.02,
                 initial_state: ControllerState | None = None,
                 initial_position: float = 0.0) -> None:
        self.position = float(initial_position)
        self.velocity = 0.0
        self.accel = 0.0
        self.target: float | None = None
        self.set_pos: float | None = None
        self._plan: list[_Segment] = []
        super().__init__(name, generation, config=config, telemetry_interval=telemetry_interval,
                         initial_state=initial_state)
        self.telemetry["set_pos"] = math.nan  # as upstream: no position set yet
        self._last_motion = (self.position, 0.0)
        self._publish_motion()

    def default_config(self) -> Mapping[str, Any]:
        cfg = {
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
        # Generation A (ts_mtrotator@v0.18.0): only the first eight fields exist.
        return {k: v for k, v in cfg.items() if k in self.spec.config.names}

    def extra_commands(self) -> dict[int | tuple[int, int], Handler]:
        c = self.spec.codes
        sub = self._substate_code
        P = RotatorEnabledSubstateParam
        out: dict[int | tuple[int, int], Handler] = {
            int(c["POSITION_SET"]): self._do_position_set,
            (sub, P.MOVE_POINT_TO_POINT): self._do_move_ptp,
            (sub, P.STOP): self._do_stop,
            (sub, P.CONSTANT_VELOCITY): self._unsupported("CONSTANT_VELOCITY"),
            int(c["SET_CONSTANT_VEL"]): self._unsupported("SET_CONSTANT_VEL"),
            int(c["CONFIG_VEL"]): self._do_config_vel,
            int(c["CONFIG_ACCEL"]): self._do_config_accel,
        }
        if self.generation is Generation.D:
            # ts_mtrotator >= v1.1.0: the CSC's fault command is SET_STATE FAULT (param1 = 8);
            # code 0x8001 is still in the enum but has no handler (upstream NO_ACKs it).
            out[(self._set_state_code, SetStateParam.FAULT)] = self._do_fault
            out[int(c["CONFIG_JERK"])] = self._positive_config("jerk limit", None)
            out[int(c["CONFIG_ACCEL_EMERGENCY"])] = self._positive_config(
                "emergency accel limit", "emergency_accel_limit")
            out[int(c["CONFIG_JERK_EMERGENCY"])] = self._positive_config(
                "emergency jerk limit", "emergency_jerk_limit")
        else:
            out[int(c["FAULT"])] = self._do_fault  # ts_mtrotator@v0.18.0 do_fault
        return out

    # -- commands ---------------------------------------------------------------------------
    def end_command(self, handler: Handler) -> None:
        if handler != self._do_position_set:
            self.set_pos = None
            self.telemetry["set_pos"] = math.nan

    def _do_position_set(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        angle = params[0]
        lo, hi = self.config["lower_pos_limit"], self.config["upper_pos_limit"]
        if not (math.isfinite(angle) and lo <= angle <= hi):
            raise CommandError(f"position {angle:g} not in range [{lo:g}, {hi:g}]")
        self.set_pos = angle
        self.telemetry["set_pos"] = angle

    def _do_move_ptp(self, params: tuple[float, ...]) -> float:
        self.assert_state(ControllerState.ENABLED)
        if self.set_pos is None:
            raise CommandError("Must call POSITION_SET before MOVE_POINT_TO_POINT")
        t0 = self._now()
        target = self.set_pos
        self._plan = _rest_to_rest(t0, self.position, target, self.config["velocity_limit"],
                                   self.config["accel_limit"])
        self.target = target
        self.telemetry["enabled_substate"] = float(EnabledSubstate.MOVING_POINT_TO_POINT)
        self.telemetry["flags_pt2pt_move_complete"] = 0.0
        self.telemetry["flags_move_success"] = 0.0
        self.telemetry["flags_new_pt2pt_command"] = 1.0
        if not self._plan:
            self._arrive()
            return 0.0
        self._publish_motion()
        return self._plan[-1].t1 - t0

    def _do_stop(self, params: tuple[float, ...]) -> float:
        self.assert_state(ControllerState.ENABLED)
        v = self.velocity
        if v == 0.0:
            self._plan = []
            if self.target is not None:
                self.target = self.position
                self._arrive()
            return 0.0
        a = self.config["accel_limit"]
        t0 = self._now()
        seg = _Segment(t0, t0 + abs(v) / a, self.position, v, -math.copysign(a, v))
        self._plan = [seg]
        self.target = seg.end()[0]
        self.telemetry["enabled_substate"] = float(EnabledSubstate.CONTROLLED_STOPPING)
        self._publish_motion()
        return seg.t1 - t0

    def _do_config_vel(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        v = params[0]
        if not 0 < v <= ROTATOR_MAX_VELOCITY:
            raise CommandError(f"velocity limit {v:g} not in range "
                               f"(0, {ROTATOR_MAX_VELOCITY:g}]")
        self.config["velocity_limit"] = v
        self.config_changed()

    def _do_config_accel(self, params: tuple[float, ...]) -> None:
        self.assert_stationary()
        a = params[0]
        if not 0 < a <= ROTATOR_MAX_ACCEL:
            raise CommandError(f"accel limit {a:g} not in range "
                               f"(0, {ROTATOR_MAX_ACCEL:g}]")
        self.config["accel_limit"] = a
        self.config_changed()

    def _positive_config(self, what: str, field: str | None) -> Handler:
        def handler(params: tuple[float, ...]) -> None:
            self.assert_stationary()
            value = params[0]
            if not value > 0:  # NaN too
                raise CommandError(f"Requested {what} {value:g} <= 0")
            if field is not None:
                self.config[field] = value
            self.config_changed()  # upstream writes CONFIG even for the jerk limit

        return handler

    @staticmethod
    def _unsupported(what: str) -> Handler:
        def handler(params: tuple[float, ...]) -> None:
            raise CommandError(f"The mock controller does not support {what}")

        return handler

    def _do_fault(self, params: tuple[float, ...]) -> None:
        self.fault("FAULT command")

    def on_state_change(self, state: ControllerState) -> None:
        if state != ControllerState.ENABLED:  # not a controlled stop: halt where it is
            self.velocity = self.accel = 0.0
            self.target = None
            self.set_pos = None
            self._plan = []
            if "set_pos" in self.telemetry:
                self.telemetry["set_pos"] = math.nan
            self._publish_motion()

    # -- physics ------------------------------------------------------------------------------
    def _now(self) -> float:
        return self._last_tai if self._last_tai is not None else 0.0

    def move_duration(self, distance: float) -> float:
        """Time of a trapezoidal (or triangular) profile from rest to rest."""
        segs = _rest_to_rest(0.0, 0.0, distance, self.config["velocity_limit"],
                             self.config["accel_limit"])
        return segs[-1].t1 if segs else 0.0

    def update(self, tai: float, dt: float) -> None:
        plan = self._plan
        if plan:
            while plan and tai >= plan[0].t1:
                if len(plan) == 1:
                    self._arrive()
                    break
                plan.pop(0)
            else:
                self.position, self.velocity = plan[0].at(tai)
                self.accel = plan[0].a
        self._publish_motion()
        motion = (self.position, self.velocity)
        if motion != self._last_motion:
            # Only while something moves: a resting rotator emits nothing per telemetry tick.
            self._last_motion = motion
            self.emit("motion", {"position": self.position, "velocity": self.velocity})

    def _arrive(self) -> None:
        """The move (or stop) is over: exactly at the target, at rest."""
        assert self.target is not None
        self.position = self.target
        self.velocity = self.accel = 0.0
        self.target = None
        self._plan = []
        self.telemetry["enabled_substate"] = float(EnabledSubstate.STATIONARY)
        self.telemetry["flags_pt2pt_move_complete"] = 1.0
        self.telemetry["flags_move_success"] = 1.0
        self._publish_motion()
        self.emit("position", self.position)

    def _publish_motion(self) -> None:
        t = self.telemetry
        t["current_pos"] = self.position
        t["demand_pos"] = self.position if self.target is None else self.target
        t["demand_vel"] = self.velocity
        t["demand_accel"] = self.accel
        t["rotator_fb"] = self.position
        t["current_vel_ch_a_fb"] = t["current_vel_ch_b_fb"] = self.velocity
        status = int(ApplicationStatus.DDS_COMMAND_SOURCE)
        if self.target is None:
            status |= int(ApplicationStatus.MOVE_COMPLETE)
        t["application_status"] = status

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "velocity": self.velocity, "target": self.target}

    def signals(self) -> dict[str, dict[str, Any]]:
        # ts_mtrotator works in degrees (spec §3.11); position is announced on arrival
        return {**super().signals(),
                "position": {"units": "deg", "quantity": "angle", "on_change": True},
                "velocity": {"units": "deg/s", "trend": False},
                "target": {"units": "deg", "trend": False}}
