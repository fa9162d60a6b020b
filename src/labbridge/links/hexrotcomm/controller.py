"""Client-side controller model: one object per controller, whichever generation it speaks.

:class:`HexrotController` is a labbridge :class:`Device`: its telemetry becomes ``Change``
events (``state``, ``enabled_substate``, ``position``, ``demand_position``, ``velocity``,
``application_status``, ``connected``, ``fault``) that the telemetry bus publishes. It drives
the link the generation calls for (spec hexrotcomm.md §3.8 / §5.6):

* generation D: a fresh :class:`CommandTelemetryClient` per connection; commands return the
  ACK duration or raise :class:`CommandRejected`;
* generation A: a :class:`CommandTelemetryServer` the controller connects to; commands return
  after the write and success is read from telemetry.

Because generation A gives no feedback, every motion command is checked locally against the
limits the controller reported in CONFIG before it is sent, in both generations (spec §3.11,
§5.8); a violation raises :class:`LimitError` whose message names the limit field.

State machine (spec §3.11, §5.8): the model's state is the controller's (STANDBY, ENABLED,
FAULT; gen A adds DISABLED and OFFLINE), except that a lost link, a protocol error or a missing
CONFIG put the model in FAULT with ``error_code`` and ``fault_reason``; :meth:`connect` clears
it. Enable sequence (gen D): CLEAR_ERROR if FAULT, require STANDBY, ENABLE_DRIVES 1, pause,
SET_STATE ENABLE, wait for ENABLED within a few telemetry frames. Gen A: CLEAR_ERROR /
ENTER_CONTROL / START / ENABLE as needed, each confirmed in telemetry.

Telemetry carries the state and substates as f64. A value that is not one of the known
integers (NaN, +-inf, a fraction, a state outside :class:`ControllerState`) is tolerated: the
``state`` signal reads ``UNKNOWN(<value>)``, :attr:`HexrotController.state` is None, the
substate signals carry None, and a warning is logged once per field until a valid value comes
back. Commands that need a known state then refuse with :class:`StateError`.

Access (issue 12, docs/adr/0183): in generation D this model connects out to the address its
node file names and trusts it; in generation A it listens, and only a peer with the
``operator`` role (by address, or by TLS client certificate with ``ssl``) may act as the
controller. ``ssl`` is a client context (gen D) or a server context (gen A).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl as _ssl
from collections.abc import Sequence
from typing import Any, ClassVar

from labbridge.access import Gate
from labbridge.devices.base import Device
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.common import REPLACE_IDLE_AFTER, CommandRejected, LinkFault
from labbridge.links.hexrotcomm.server_a import CommandTelemetryServer
from labbridge.protocol.hexrotcomm.devices import RotatorEnabledSubstateParam
from labbridge.protocol.hexrotcomm.framing import WireProfile
from labbridge.protocol.hexrotcomm.structs import (
    ApplicationStatus,
    ControllerState,
    EnabledSubstate,
    ErrorCode,
    Generation,
    OfflineSubstate,
    SetStateParam,
)
from labbridge.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

__all__ = ["CommandRejected", "HexapodController", "HexrotController", "LimitError", "LinkFault",
           "StateError"]


class LimitError(ValueError):
    """A command is outside the limits the controller reported; refused before sending."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class StateError(RuntimeError):
    """The controller is not in a state that allows the command (checked locally)."""


class HexrotController(Device):
    """A hexapod/rotator-style controller seen from the CSC side."""

    kind: ClassVar[str] = "hexrot_controller"

    def __init__(
        self,
        name: str,
        profile: WireProfile,
        host: str,
        port: int,
        *,
        connect_timeout: float = 10.0,
        config_timeout: float = 10.0,
        ack_timeout: float = 5.0,
        telemetry_timeout: float | None = 15.0,
        enable_drives_delay: float = 1.0,
        move_pause: float = 0.2,
        state_telemetry_frames: int = 5,
        autoconnect: bool = True,
        replace_idle_after: float | None = REPLACE_IDLE_AFTER,
        gate: Gate | None = None,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(name)
        self.profile = profile
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.config_timeout = config_timeout
        self.ack_timeout = ack_timeout
        self.telemetry_timeout = telemetry_timeout
        self.enable_drives_delay = enable_drives_delay
        self.move_pause = move_pause
        self.state_telemetry_frames = state_telemetry_frames
        self.autoconnect = autoconnect
        #: Gen A (we listen): a new controller connection replaces one idle this long.
        self.replace_idle_after = replace_idle_after
        #: Gen A: the node's gate decides who may act as the controller.
        self.gate = gate
        #: TLS: a client context (gen D) or a server context requiring client certificates
        #: (gen A); None for plain TCP (a real controller knows nothing else).
        self.ssl = ssl
        self.link: CommandTelemetryClient | CommandTelemetryServer | None = None
        self.error_code: ErrorCode | None = None
        self.fault_reason: str | None = None
        self._last: dict[str, Any] = {}
        self._bad_fields: set[str] = set()  # telemetry fields whose bad value was logged
        self._sequence_lock = asyncio.Lock()
        self._fields = profile.device
        self._codes = profile.device.codes

    # -- link ----------------------------------------------------------------------------------
    @property
    def generation(self) -> Generation:
        return self.profile.generation

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    @property
    def config(self) -> Any:
        return None if self.link is None else self.link.config

    @property
    def telemetry(self) -> Any:
        return None if self.link is None else self.link.telemetry

    async def start(self) -> None:
        if self.autoconnect:
            if self.generation is Generation.A:
                await self._ensure_server()
            else:
                with contextlib.suppress(LinkFault):
                    await self.connect()

    async def stop(self) -> None:
        await self.disconnect()

    def endpoints(self) -> list[Endpoint]:
        """Where this model listens (generation A: the CSC's telemetry port P and command
        port P+1, which the controller calls) or connects (generation D: the controller).
        build_node reads it so that ``--host`` replaces listening addresses only."""
        if self.generation is Generation.A:
            return [Endpoint(self.name, "tcp", self.host, self.port, role="listen",
                             purpose="hexrotcomm generation A telemetry (controller connects)"),
                    Endpoint(self.name, "tcp", self.host, self.port + 1 if self.port else None,
                             role="listen",
                             purpose="hexrotcomm generation A commands (controller connects)")]
        return [Endpoint(self.name, "tcp", self.host, self.port, role="connect",
                         purpose="hexrotcomm generation D controller")]

    async def _ensure_server(self) -> CommandTelemetryServer:
        if isinstance(self.link, CommandTelemetryServer):
            return self.link
        srv = CommandTelemetryServer(self.profile, self.host, self.port,
                                     on_config=self._on_config,
                                     on_telemetry=self._on_telemetry,
                                     on_connect=self._on_connect,
                                     replace_idle_after=self.replace_idle_after,
                                     gate=self.gate, target=self.name, ssl=self.ssl)
        await srv.start()
        self.port = srv.port
        self.link = srv
        return srv

    async def connect(self) -> None:
        """(Re)connect and wait for CONFIG and TELEMETRY; FAULT with the reason on failure."""
        self.error_code = self.fault_reason = None
        self._emit_if_changed("fault", "")
        if self.generation is Generation.D:
            if self.link is not None:
                await self.link.close()
            client = CommandTelemetryClient(
                self.profile, self.host, self.port, connect_timeout=self.connect_timeout,
                config_timeout=self.config_timeout, ack_timeout=self.ack_timeout,
                telemetry_timeout=self.telemetry_timeout, on_config=self._on_config,
                on_telemetry=self._on_telemetry, on_connect=self._on_connect, ssl=self.ssl)
            self.link = client
            try:
                await client.connect()
            except LinkFault as exc:
                self._set_fault(exc.error_code, str(exc))
                raise
            return
        srv = await self._ensure_server()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await srv.wait_connected()
        except TimeoutError:
            msg = (f"Timed out waiting for the controller to connect to {self.host}:"
                   f"{srv.port} and {srv.command_port}")
            self._set_fault(ErrorCode.CONNECTION_LOST, msg)
            raise LinkFault(msg, ErrorCode.CONNECTION_LOST) from None
        try:
            async with asyncio.timeout(self.config_timeout):
                while srv.config is None or srv.telemetry is None:
                    await srv.next_telemetry()
        except TimeoutError:
            msg = f"Timed out waiting for config from {self.host}:{srv.port}"
            self._set_fault(ErrorCode.NO_CONFIG, msg)
            raise LinkFault(msg, ErrorCode.NO_CONFIG) from None

    async def disconnect(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()
        self._emit_if_changed("connected", False)

    def _set_fault(self, code: ErrorCode, reason: str) -> None:
        self.error_code = code
        self.fault_reason = reason
        self._emit_if_changed("state", ControllerState.FAULT.name)
        self._emit_if_changed("fault", reason)

    # -- link callbacks ---------------------------------------------------------------------
    def _on_connect(self, link: Any) -> None:
        connected = link.connected
        self._emit_if_changed("connected", connected)
        if not connected and link is self.link and isinstance(link, CommandTelemetryClient):
            if link.fault_reason is not None and not link._closing:
                self._set_fault(link.error_code or ErrorCode.CONNECTION_LOST, link.fault_reason)

    def _on_config(self, config: Any) -> None:
        self.emit("config", config._asdict())

    def _on_telemetry(self, tel: Any) -> None:
        state = _as_state(tel.state)
        self._check_field("state", state is not None, tel.state)
        substate = telemetry_int(tel.enabled_substate)
        self._check_field("enabled_substate", substate is not None, tel.enabled_substate)
        self._emit_if_changed("state", self._state_name(tel.state))
        self._emit_if_changed("enabled_substate", substate)
        self._emit_if_changed("position", self.position_of(tel))
        self._emit_if_changed("demand_position", self.demand_of(tel))
        if hasattr(tel, "demand_vel"):
            self._emit_if_changed("velocity", tel.demand_vel)
        self._emit_if_changed("application_status", int(tel.application_status))
        if state == ControllerState.FAULT and self.error_code is None:
            self.error_code = ErrorCode.CONTROLLER_FAULT
            self.fault_reason = "the low-level controller reports FAULT"
            self._emit_if_changed("fault", self.fault_reason)

    def _emit_if_changed(self, signal: str, value: Any) -> None:
        if self._last.get(signal, _UNSET) != value:
            self._last[signal] = value
            self.emit(signal, value)

    def _check_field(self, name: str, ok: bool, value: Any) -> None:
        """Log a bad telemetry value once, until the field is valid again."""
        if ok:
            self._bad_fields.discard(name)
        elif name not in self._bad_fields:
            self._bad_fields.add(name)
            log.warning("%s: telemetry %s = %r is not a valid value; reported as unknown "
                        "until a valid one arrives", self.name, name, value)

    @staticmethod
    def _state_name(value: float) -> str:
        """The state's name, or ``UNKNOWN(<value>)`` for anything that is not one."""
        state = _as_state(value)
        return state.name if state is not None else f"UNKNOWN({value})"

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> ControllerState | None:
        """FAULT if the link faulted, else the controller's state; None before telemetry or
        while telemetry carries a value that is no known state (see :meth:`_state_label`)."""
        if self.fault_reason is not None and self.error_code != ErrorCode.CONTROLLER_FAULT:
            return ControllerState.FAULT
        tel = self.telemetry
        if tel is None:
            return None
        return _as_state(tel.state)

    def _state_label(self) -> str | None:
        """The state's name for messages: ``UNKNOWN(<value>)`` for a bad telemetry value."""
        st = self.state
        if st is not None:
            return st.name
        tel = self.telemetry
        return None if tel is None else self._state_name(tel.state)

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "generation": self.generation.value,
            "state": self._state_label(),
            "fault": self.fault_reason,
            **{k: v for k, v in self._last.items() if k not in ("state", "connected", "fault")},
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.profile.device.name,
                "generation": self.generation.value, "host": self.host, "port": self.port}

    # -- commands --------------------------------------------------------------------------------
    def _require_link(self) -> CommandTelemetryClient | CommandTelemetryServer:
        if self.link is None or not self.link.connected:
            raise ConnectionError(self.fault_reason or f"{self.name}: not connected")
        return self.link

    async def send(self, name: str, params: Sequence[float] = ()) -> float | None:
        """Send a command by code name; duration (gen D ACK) or None (gen A: no feedback)."""
        link = self._require_link()
        code = int(self._codes[name])
        return await link.send(code, params)

    async def wait_state(self, *states: ControllerState, frames: int | None = None) -> None:
        """Wait until telemetry shows one of ``states``, within ``frames`` telemetry frames."""
        link = self._require_link()
        n = self.state_telemetry_frames if frames is None else frames
        for _ in range(n + 1):
            if self.state in states:
                return
            async with asyncio.timeout(self.config_timeout):
                await link.next_telemetry()
        if self.state not in states:
            got = self._state_label()
            raise StateError(f"state is {got} after {n} telemetry frames; expected "
                             + " or ".join(s.name for s in states))

    async def enable(self) -> None:
        async with self._sequence_lock:
            self._require_link()
            tel = self.telemetry
            if not int(tel.application_status) & ApplicationStatus.DDS_COMMAND_SOURCE:
                raise StateError("the controller is not commandable by the CSC "
                                 "(application_status lacks DDS_COMMAND_SOURCE: the GUI has "
                                 "control)")
            if self.state == ControllerState.ENABLED:
                return
            if self.state is None:
                raise StateError(f"state is {self._state_label()}; cannot enable from an "
                                 "unknown state")
            S = ControllerState
            if self.state == S.FAULT:
                await self.send("SET_STATE", [SetStateParam.CLEAR_ERROR])
                await self.wait_state(S.STANDBY)
                self.error_code = self.fault_reason = None
            if self.generation is Generation.D:
                if self.state != S.STANDBY:
                    raise StateError(f"state is {self._state_label()}; must be STANDBY to "
                                     "enable")
                if "ENABLE_DRIVES" in self._codes.__members__:
                    await self.send("ENABLE_DRIVES", [1.0])
                    if self.enable_drives_delay > 0:
                        await asyncio.sleep(self.enable_drives_delay)
                await self.send("SET_STATE", [SetStateParam.ENABLE])
                await self.wait_state(S.ENABLED)
                return
            if self.state == S.OFFLINE:
                if (hasattr(self.telemetry, "offline_substate")
                        and telemetry_int(self.telemetry.offline_substate)
                        != OfflineSubstate.AVAILABLE):
                    raise StateError("controller is OFFLINE but not AVAILABLE (PUBLISH_ONLY): "
                                     "only its GUI can release it")
                await self.send("SET_STATE", [SetStateParam.ENTER_CONTROL])
                await self.wait_state(S.STANDBY)
            if self.state == S.STANDBY:
                await self.send("SET_STATE", [SetStateParam.START])
                await self.wait_state(S.DISABLED)
            if self.state == S.DISABLED:
                await self.send("SET_STATE", [SetStateParam.ENABLE])
                await self.wait_state(S.ENABLED)

    async def standby(self) -> None:
        """ENABLED -> STANDBY (gen A via DISABLED); drives off in gen D (errors logged)."""
        async with self._sequence_lock:
            self._require_link()
            S = ControllerState
            if self.generation is Generation.D:
                if self.state == S.ENABLED:
                    await self.send("SET_STATE", [SetStateParam.STANDBY])
                    await self.wait_state(S.STANDBY)
                if "ENABLE_DRIVES" in self._codes.__members__:
                    try:
                        await self.send("ENABLE_DRIVES", [0.0])
                    except CommandRejected as exc:
                        log.warning("%s: ENABLE_DRIVES 0 refused: %s", self.name, exc)
                return
            if self.state == S.ENABLED:
                await self.send("SET_STATE", [SetStateParam.DISABLE])
                await self.wait_state(S.DISABLED)
            if self.state == S.DISABLED:
                await self.send("SET_STATE", [SetStateParam.STANDBY])
                await self.wait_state(S.STANDBY)

    # -- limits ------------------------------------------------------------------------------------
    def check_position(self, position: Any) -> None:
        """Raise :class:`LimitError` naming the limit if ``position`` is out of the CONFIG range."""
        cfg = self.config
        if cfg is None:
            raise StateError("no CONFIG received yet: limits unknown, command refused")
        f = self._fields
        lo, hi = getattr(cfg, f.lower_limit_field), getattr(cfg, f.upper_limit_field)
        unit = f.unit
        if not math.isfinite(position):
            raise LimitError(f"position {position} is not a finite number", "position")
        if position > hi:
            raise LimitError(f"position {position:g} {unit} is above {f.upper_limit_field} = "
                             f"{hi:g} {unit} (from the controller's CONFIG); not sent",
                             f.upper_limit_field)
        if position < lo:
            raise LimitError(f"position {position:g} {unit} is below {f.lower_limit_field} = "
                             f"{lo:g} {unit} (from the controller's CONFIG); not sent",
                             f.lower_limit_field)

    def check_velocity(self, velocity: float) -> None:
        cfg = self.config
        if cfg is None:
            raise StateError("no CONFIG received yet: limits unknown, command refused")
        name = ("max_velocity_limit" if hasattr(cfg, "max_velocity_limit")
                else self._fields.velocity_limit_field)
        vmax = getattr(cfg, name)
        if not 0 < velocity <= vmax:
            raise LimitError(f"velocity {velocity:g} {self._fields.unit}/s is outside "
                             f"(0, {name} = {vmax:g}] (from the controller's CONFIG); not sent",
                             name)

    # -- motion -----------------------------------------------------------------------------------
    # -- device shape (a subclass changes these for a 6-axis hexapod) --------------------------
    def position_of(self, tel: Any) -> Any:
        """The measured position in a telemetry frame (the ``position`` signal)."""
        return getattr(tel, self._fields.position_field)

    def demand_of(self, tel: Any) -> Any:
        """The commanded/demand position in a telemetry frame."""
        return getattr(tel, self._fields.demand_field)

    def position_params(self, position: Any) -> list[float]:
        """POSITION_SET (or MOVE) parameters for ``position``."""
        return [float(position)]

    def arrived(self, tel: Any, position: Any, tolerance: float) -> bool:
        return bool(abs(self.position_of(tel) - position) <= tolerance)

    def status_fields(self) -> dict[str, Any]:
        """Position, demand and limits for a status report (``labbridge rotator status``)."""
        tel, cfg, f = self.telemetry, self.config, self._fields
        out: dict[str, Any] = {}
        if tel is not None:
            out["position"] = self.position_of(tel)
            out["demand_position"] = self.demand_of(tel)
            out["enabled_substate"] = telemetry_int(tel.enabled_substate)
        if cfg is not None:
            out["limits"] = {f.lower_limit_field: getattr(cfg, f.lower_limit_field),
                             f.upper_limit_field: getattr(cfg, f.upper_limit_field),
                             f.velocity_limit_field: getattr(cfg, f.velocity_limit_field)}
        return out

    # -- motion -----------------------------------------------------------------------------------
    async def move(self, position: Any, *, wait: bool = True, tolerance: float = 1e-3,
                   timeout: float | None = None) -> float | None:
        """Move to ``position`` after checking the limits locally; optionally wait to arrive.

        Returns the controller's duration estimate (gen D) or None (gen A).
        """
        async with self._sequence_lock:
            self._require_link()
            self.check_position(position)
            if self.state != ControllerState.ENABLED:
                raise StateError(f"state is {self._state_label()}; must be ENABLED to move")
            # As the rotator CSC's do_move (ts_mtrotator@v1.3.1 rotator_csc.py): the
            # controller refuses POSITION_SET unless STATIONARY (spec §11).
            substate = telemetry_int(self.telemetry.enabled_substate)
            if substate != EnabledSubstate.STATIONARY:
                name = (EnabledSubstate(substate).name if substate in _SUBSTATES
                        else f"UNKNOWN({self.telemetry.enabled_substate})")
                raise StateError(f"enabled substate is {name}; must be STATIONARY to move "
                                 "(stop first)")
            params = self.position_params(position)
            if "POSITION_SET" in self._codes.__members__:
                await self.send("POSITION_SET", params)
                if self.move_pause > 0:  # the real controller needs time (spec §3.11)
                    await asyncio.sleep(self.move_pause)
                duration = await self.send("SET_ENABLED_SUBSTATE",
                                           [RotatorEnabledSubstateParam.MOVE_POINT_TO_POINT])
            else:
                duration = await self.send("MOVE", params)
        if wait:
            limit = timeout if timeout is not None else 10.0 + 2 * (duration or 0.0) + (
                self._estimate(position) if duration is None else 0.0)
            await self.wait_arrival(position, tolerance, limit)
        return duration

    def _estimate(self, position: Any) -> float:
        cfg, tel = self.config, self.telemetry
        vel = getattr(cfg, self._fields.velocity_limit_field, 0.0) or 0.0
        here = getattr(tel, self._fields.position_field, position)
        return abs(position - here) / vel * 2 + 1.0 if vel > 0 else 30.0

    async def wait_arrival(self, position: Any, tolerance: float, timeout: float) -> None:
        link = self._require_link()
        async with asyncio.timeout(timeout):
            while True:
                tel = await link.next_telemetry()
                if (self.arrived(tel, position, tolerance)
                        and telemetry_int(tel.enabled_substate) == EnabledSubstate.STATIONARY):
                    return

    async def stop_motion(self) -> float | None:
        """Controlled stop (rotator: SET_ENABLED_SUBSTATE STOP)."""
        if "POSITION_SET" not in self._codes.__members__:
            raise StateError(f"{self.profile.device.name} has no stop command")
        return await self.send("SET_ENABLED_SUBSTATE", [RotatorEnabledSubstateParam.STOP])

    async def wait_stationary(self, timeout: float = 30.0) -> None:
        link = self._require_link()
        async with asyncio.timeout(timeout):
            while telemetry_int(self.telemetry.enabled_substate) != EnabledSubstate.STATIONARY:
                await link.next_telemetry()

    async def configure_velocity(self, velocity: float) -> float | None:
        self.check_velocity(velocity)
        return await self.send("CONFIG_VEL", [velocity])


class HexapodController(HexrotController):
    """A hexapod controller seen from the CSC side (generation D; ts_mthexapod).

    A position is six values ``(x, y, z, u, v, w)``: micrometres and degrees. ``move`` checks
    it against the CONFIG's ``pos_limits`` (maxXY, minZ, maxZ, maxUV, minW, maxW) like
    ``ts_mthexapod: utils.check_position``, then sends POSITION_SET with the six values and
    SET_ENABLED_SUBSTATE MOVE_POINT_TO_POINT (the CSC pauses 0.1 s between them, spec §3.11).
    The ``position`` signal is ``measured_xyz + measured_uvw`` (6 values), ``demand_position``
    the controller's ``commanded_pos``.
    """

    kind: ClassVar[str] = "hexrot_controller"

    def __init__(self, *args: Any, move_pause: float = 0.1, **kw: Any) -> None:
        super().__init__(*args, move_pause=move_pause, **kw)

    def position_of(self, tel: Any) -> list[float]:
        return [*tel.measured_xyz, *tel.measured_uvw]

    def demand_of(self, tel: Any) -> list[float]:
        return list(tel.commanded_pos)

    def position_params(self, position: Any) -> list[float]:
        return [float(v) for v in position]

    def arrived(self, tel: Any, position: Any, tolerance: float) -> bool:
        return all(abs(a - b) <= tolerance
                   for a, b in zip(self.position_of(tel), position, strict=True))

    def check_position(self, position: Any) -> None:
        cfg = self.config
        if cfg is None:
            raise StateError("no CONFIG received yet: limits unknown, command refused")
        values = list(position)
        if len(values) != 6:
            raise LimitError(f"a hexapod position has 6 values (x y z u v w), got "
                             f"{len(values)}", "position")
        if not all(math.isfinite(v) for v in values):
            raise LimitError(f"position {values} has a value that is not a finite number",
                             "position")
        max_xy, min_z, max_z, max_uv, min_w, max_w = cfg.pos_limits
        for axis, value, lo, hi, unit in (
                ("x", values[0], -max_xy, max_xy, "um"), ("y", values[1], -max_xy, max_xy, "um"),
                ("z", values[2], min_z, max_z, "um"), ("u", values[3], -max_uv, max_uv, "deg"),
                ("v", values[4], -max_uv, max_uv, "deg"), ("w", values[5], min_w, max_w, "deg")):
            if not lo <= value <= hi:
                raise LimitError(f"{axis} = {value:g} {unit} is outside [{lo:g}, {hi:g}] "
                                 "(pos_limits from the controller's CONFIG); not sent",
                                 "pos_limits")

    def _estimate(self, position: Any) -> float:
        return 60.0  # the ACK carries the duration in generation D

    def status_fields(self) -> dict[str, Any]:
        tel, cfg = self.telemetry, self.config
        out: dict[str, Any] = {}
        if tel is not None:
            out["position"] = self.position_of(tel)
            out["demand_position"] = self.demand_of(tel)
            out["enabled_substate"] = telemetry_int(tel.enabled_substate)
        if cfg is not None:
            out["limits"] = dict(zip(("maxXY", "minZ", "maxZ", "maxUV", "minW", "maxW"),
                                     cfg.pos_limits, strict=True))
            out["pivot"] = list(cfg.pivot)
            out["max_velocity_strut"] = cfg.max_velocity_strut
        return out

    def check_velocity(self, velocity: float) -> None:
        raise StateError("hexapod velocity limits take four values (xy, uv, z, w): send "
                         "CONFIG_VEL with send()")


_UNSET: Any = object()
_STATES = frozenset(int(s) for s in ControllerState)
_SUBSTATES = frozenset(int(s) for s in EnabledSubstate)


def telemetry_int(value: Any) -> int | None:
    """A telemetry f64 as an int, or None when it is not one (NaN, +-inf, a fraction)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) and f.is_integer() else None


def _as_state(value: Any) -> ControllerState | None:
    """A telemetry state value as a :class:`ControllerState`, or None if it is none."""
    n = telemetry_int(value)
    return ControllerState(n) if n is not None and n in _STATES else None
