"""The furnace vocabulary of a furPi node (spec pychron.md sections 8.1 and 8.2).

Commands are answered in both request forms the real Pychron furnace client uses: plain text
(``SetSetpoint 600``) and JSON (``{"command": "SetSetpoint", "setpoint": 600}``), as
``pychron/hardware/furnace/nmgrl/eurotherm.py`` sends them. Replies are the furPi firmware's:
numbers as text, ``OK`` / ``False``, and ``GetFurnaceSummary`` as a JSON object with
``setpoint``, ``response``, ``output`` (and ``h2o_state`` when asked for an ``h2o_channel``).

Valves of the furnace node (``Open``/``Close``/``GetIndicatorState``...) are served by the valve
vocabulary (:mod:`labbridge.links.pychron.valves`) on the same command server; this set adds
``GetChannelState`` for them (furPi's name for the same query). See ADR 0060.

Every furnace request counts as the client being alive for the safety watchdog.

The sample dumper and the bake-out (spec 8.2, ``pychron/furnace/firmware/server.py`` and
``manager.py``; ADR 0191): ``LowerFunnel``, ``RaiseFunnel``, ``InUpPosition``,
``InDownPosition``, ``EnergizeMagnets`` (``period``, or ``nsteps``/``rpm``), ``IsEnergized``,
``RotaryDumperMoving``, ``DenergizeMagnets`` (sic); the drive commands ``MoveAbsolute``,
``MoveRelative``, ``GetPosition``, ``Moving``, ``Slew``, ``Stalled``, ``SetHome``,
``StopDrive``, ``StartJitter``, ``StopJitter``, which name their drive (``funnel`` or
``feeder``) in JSON as the real client does (``{"command": "MoveAbsolute", "drive": "funnel",
"position": 5000, "units": "steps"}``); and ``GetBakeoutSetpoint``,
``SetBakeoutClosedLoopSetpoint``, ``SetBakeoutControlMode``, ``GetBakeoutTemperature``,
``GetBakeoutTempPower`` with JSON ``channel`` (and ``setpoint`` / ``mode``), or the text form
``SetBakeoutClosedLoopSetpoint 1,150`` (a labbridge convenience). ``GetFullSummary`` answers the
firmware's full summary (broken in the real code). Actuations need the operator role, queries
the observer role.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from labbridge.access import Role
from labbridge.devices.furnace import DriveError, Furnace, PIDGains
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.dispatch import Caller, CommandSet, command
from labbridge.protocol.pychron.messages import ErrorCode, PychronError, Request


def _number(req: Request, *keys: str) -> float:
    """The numeric argument: JSON key (first present of ``keys``) or the plain text."""
    raw: object
    if req.data is not None:
        raw = next((req.data[k] for k in keys if k in req.data), None)
    else:
        raw = req.arg_text
    if raw is None or raw == "":
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
    try:
        value = float(raw)  # type: ignore[arg-type,unused-ignore]
    except (TypeError, ValueError):
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, str(raw)) from None
    if not math.isfinite(value):
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, str(raw))
    return value


def _json(req: Request) -> dict[str, object]:
    """The JSON object of a request whose arguments exist only in JSON (the drives)."""
    if req.data is None:
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command,
                           f"{req.arg_text} (send JSON: {{\"command\": \"{req.command}\", "
                           "\"drive\": \"funnel\", ...})")
    return req.data


def _channel_and_value(req: Request, key: str) -> tuple[object, str | None]:
    """A bake-out request's channel and value: JSON ``channel`` and ``key``, or the text
    ``channel[,value]``."""
    if req.data is not None:
        if "channel" not in req.data:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, "no channel")
        value = req.data.get(key)
        return req.data["channel"], None if value is None else str(value)
    parts = [a.strip() for a in req.arg_text.split(",")]
    if not parts[0]:
        raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
    return parts[0], parts[1] if len(parts) > 1 and parts[1] else None


def _text(req: Request, *keys: str) -> str:
    if req.data is not None:
        raw = next((req.data[k] for k in keys if k in req.data), "")
        return raw if isinstance(raw, str) else json.dumps(raw)
    return req.arg_text.strip()


class FurnaceCommands(CommandSet):
    """furPi controller, misc and channel commands for one furnace (and the node's valves)."""

    def __init__(self, furnace: Furnace, banks: Sequence[ValveBank] = ()) -> None:
        self.furnace = furnace
        self.banks = list(banks)
        if self.banks and furnace.switch_states is None:
            furnace.switch_states = self._switch_states

    def _switch_states(self) -> dict[str, bool]:
        return {v: s for bank in self.banks for v, s in bank.states().items()}

    def _heard(self) -> Furnace:
        f = self.furnace
        f.poll()  # answer with the model brought up to now
        f.heard()
        return f

    # -- controller ------------------------------------------------------------------------
    @command("GetTemperature", idempotent=True)
    def get_temperature(self, req: Request, caller: Caller) -> float:
        return self._heard().temperature

    @command("GetProcessValue", idempotent=True)
    def get_process_value(self, req: Request, caller: Caller) -> float:
        return self._heard().temperature

    @command("GetSetpoint", idempotent=True)
    def get_setpoint(self, req: Request, caller: Caller) -> float:
        return self._heard().setpoint

    @command("SetSetpoint")
    def set_setpoint(self, req: Request, caller: Caller) -> bool:
        f = self._heard()
        value = _number(req, "setpoint", "value")
        try:
            f.set_setpoint(value)
        except ValueError:
            raise PychronError(ErrorCode.SETPOINT, value) from None
        return True

    @command("GetPercentOutput", idempotent=True)
    def get_percent_output(self, req: Request, caller: Caller) -> float:
        return self._heard().percent_output

    @command("GetFurnaceSummary", idempotent=True)
    def get_furnace_summary(self, req: Request, caller: Caller) -> str:
        f = self._heard()
        channel = None
        if req.data is not None and req.data.get("h2o_channel"):
            channel = str(req.data["h2o_channel"])
        elif req.data is None and req.arg_text.strip():
            channel = req.arg_text.strip()
        try:
            summary = f.summary(channel)
        except KeyError:
            raise PychronError(ErrorCode.DEVICE_CONNECTION, channel) from None
        return json.dumps(summary)

    @command("SetPID", role=Role.ADMIN)
    def set_pid(self, req: Request, caller: Caller) -> bool:
        f = self._heard()
        text = _text(req, "pid", "value")
        try:
            gains = PIDGains.parse(text)
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, "SetPID", text) from None
        f.set_pid(gains)
        return True

    @command("GetPID", idempotent=True)
    def get_pid(self, req: Request, caller: Caller) -> str:
        """labbridge addition: the gains as ``kp,ki,kd`` (the ``SetPID`` form)."""
        return self._heard().model.gains.text()

    # -- misc ---------------------------------------------------------------------------------
    @command("GetVersion", idempotent=True)
    def get_version(self, req: Request, caller: Caller) -> str:
        return self._heard().version

    @command("GetHeartBeat", idempotent=True)
    def get_heartbeat(self, req: Request, caller: Caller) -> str:
        return self._heard().heartbeat()

    @command("GetLabTemperature", idempotent=True)
    def get_lab_temperature(self, req: Request, caller: Caller) -> float:
        return self._heard().lab_temperature()

    @command("GetLabHumidity", idempotent=True)
    def get_lab_humidity(self, req: Request, caller: Caller) -> float:
        return self._heard().lab_humidity

    @command("GetDIState", idempotent=True)
    def get_di_state(self, req: Request, caller: Caller) -> bool:
        f = self._heard()
        name = _text(req, "name", "value")
        try:
            return f.di_state(name)
        except KeyError:
            raise PychronError(ErrorCode.DEVICE_CONNECTION, name) from None

    @command("SetFrameRate")
    def set_frame_rate(self, req: Request, caller: Caller) -> None:
        self._heard()
        _number(req, "rate", "value")
        return None  # the firmware's handler returns nothing: "No Response" (spec 8.2)

    # -- dump (spec 8.1, intended FurnaceProtocol commands) ------------------------------------
    @command("DumpSample")
    def dump_sample(self, req: Request, caller: Caller) -> bool:
        self._heard().dump_sample()
        return True

    @command("DumpComplete", idempotent=True)
    def dump_complete(self, req: Request, caller: Caller) -> bool:
        return self._heard().dump_complete()

    @command("GetFullSummary", idempotent=True)
    def get_full_summary(self, req: Request, caller: Caller) -> str:
        return json.dumps(self._heard().full_summary())

    # -- dumper: funnel, drives, magnets (spec 8.2) ------------------------------------------
    def _drive(self, req: Request) -> tuple[Furnace, str]:
        f = self._heard()
        data = _json(req)
        name = str(data.get("drive") or "")
        if name not in f.drives:
            raise PychronError(ErrorCode.DEVICE_CONNECTION, name or "<no drive>")
        return f, name

    @command("LowerFunnel", role=Role.OPERATOR)
    def lower_funnel(self, req: Request, caller: Caller) -> bool:
        self._heard().lower_funnel()
        return True

    @command("RaiseFunnel", role=Role.OPERATOR)
    def raise_funnel(self, req: Request, caller: Caller) -> bool:
        self._heard().raise_funnel()
        return True

    @command("InUpPosition", idempotent=True, role=Role.OBSERVER)
    def in_up_position(self, req: Request, caller: Caller) -> bool:
        return self._heard().funnel_at("up")

    @command("InDownPosition", idempotent=True, role=Role.OBSERVER)
    def in_down_position(self, req: Request, caller: Caller) -> bool:
        return self._heard().funnel_at("down")

    @command("EnergizeMagnets", role=Role.OPERATOR)
    def energize_magnets(self, req: Request, caller: Caller) -> bool:
        f = self._heard()
        period = 3.0
        if req.data is not None:
            if "period" in req.data:
                period = _number(req, "period")
            elif "nsteps" in req.data:  # the rotary dumper: steps at rpm (one step a second)
                rpm = req.data.get("rpm")
                steps = _number(req, "nsteps")
                per_step = 60.0 / float(rpm) if isinstance(rpm, int | float) and rpm > 0 \
                    else 1.0
                period = max(steps * per_step / max(f.magnets, 1), 0.001)
        elif req.arg_text.strip():
            period = _number(req)
        f.energize_magnets(period)  # ValueError: ERROR 004
        return True

    @command("IsEnergized", idempotent=True, role=Role.OBSERVER)
    def is_energized(self, req: Request, caller: Caller) -> bool:
        return self._heard().energized

    @command("RotaryDumperMoving", idempotent=True, role=Role.OBSERVER)
    def rotary_dumper_moving(self, req: Request, caller: Caller) -> bool:
        return self._heard().energized

    @command("DenergizeMagnets", role=Role.OPERATOR)
    def denergize_magnets(self, req: Request, caller: Caller) -> bool:
        self._heard().denergize_magnets()
        return True

    @command("MoveAbsolute", role=Role.OPERATOR)
    def move_absolute(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        return self._move(req, f, drive, relative=False)

    @command("MoveRelative", role=Role.OPERATOR)
    def move_relative(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        return self._move(req, f, drive, relative=True)

    def _move(self, req: Request, f: Furnace, drive: str, relative: bool) -> bool:
        data = _json(req)
        position = _number(req, "position")
        units = str(data.get("units") or "steps")
        velocity = data.get("velocity")
        try:
            f.move_drive(drive, position, units,
                         float(velocity) if isinstance(velocity, int | float) else None,
                         relative=relative)
        except DriveError as exc:
            raise PychronError(ErrorCode.POSITION, exc) from None
        return True

    @command("GetPosition", idempotent=True, role=Role.OBSERVER)
    def get_position(self, req: Request, caller: Caller) -> float:
        f, drive = self._drive(req)
        units = str(_json(req).get("units") or "steps")
        return round(f.drives[drive].position(f.model.t, units), 3)

    @command("Moving", idempotent=True, role=Role.OBSERVER)
    def moving(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        return f.drives[drive].moving(f.model.t)

    @command("Stalled", idempotent=True, role=Role.OBSERVER)
    def stalled(self, req: Request, caller: Caller) -> bool:
        self._drive(req)
        return False  # a simulated drive never stalls

    @command("Slew", role=Role.OPERATOR)
    def slew(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        scalar = _number(req, "scalar") if "scalar" in _json(req) else 1.0
        f.drives[drive].slew(f.model.t, scalar)
        return True

    @command("SetHome", role=Role.OPERATOR)
    def set_home(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        f.drives[drive].set_home(f.model.t)
        return True

    @command("StopDrive", role=Role.OPERATOR)
    def stop_drive(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        f.drives[drive].stop(f.model.t)
        return True

    @command("StartJitter", role=Role.OPERATOR)
    def start_jitter(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        data = _json(req)
        f.drives[drive].start_jitter(f.model.t, float(data.get("turns", 10)),  # type: ignore[arg-type]
                                     float(data.get("p1", 0.1)),  # type: ignore[arg-type]
                                     float(data.get("p2", 0.1)))  # type: ignore[arg-type]
        return True

    @command("StopJitter", role=Role.OPERATOR)
    def stop_jitter(self, req: Request, caller: Caller) -> bool:
        f, drive = self._drive(req)
        f.drives[drive].stop(f.model.t)
        return True

    # -- bake-out (spec 8.2) -------------------------------------------------------------------
    def _bakeout(self, req: Request, key: str = "value") -> tuple[Furnace, object, str | None]:
        f = self._heard()
        channel, value = _channel_and_value(req, key)
        try:
            f.bakeout_channel(channel)
        except KeyError:
            raise PychronError(ErrorCode.DEVICE_CONNECTION, f"bakeout {channel}") from None
        return f, channel, value

    @command("GetBakeoutSetpoint", idempotent=True, role=Role.OBSERVER)
    def get_bakeout_setpoint(self, req: Request, caller: Caller) -> float:
        f, channel, _ = self._bakeout(req)
        return f.bakeout_channel(channel).setpoint

    @command("SetBakeoutClosedLoopSetpoint", role=Role.OPERATOR)
    def set_bakeout_setpoint(self, req: Request, caller: Caller) -> bool:
        f, channel, value = self._bakeout(req, "setpoint")
        if value is None:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        f.set_bakeout_setpoint(channel, float(value))  # ValueError: ERROR 004
        return True

    @command("SetBakeoutControlMode", role=Role.OPERATOR)
    def set_bakeout_control_mode(self, req: Request, caller: Caller) -> bool:
        f, channel, mode = self._bakeout(req, "mode")
        f.set_bakeout_mode(channel, (mode or "").strip().lower())  # ValueError: ERROR 004
        return True

    @command("GetBakeoutTemperature", idempotent=True, role=Role.OBSERVER)
    def get_bakeout_temperature(self, req: Request, caller: Caller) -> float:
        f, channel, _ = self._bakeout(req)
        return round(f.bakeout_channel(channel).temperature, 2)

    @command("GetBakeoutTempPower", idempotent=True, role=Role.OBSERVER)
    def get_bakeout_temp_power(self, req: Request, caller: Caller) -> str:
        f, channel, _ = self._bakeout(req)
        ch = f.bakeout_channel(channel)
        return f"{ch.temperature:.2f},{ch.power:.2f}"

    # -- channels -------------------------------------------------------------------------------
    @command("GetChannelState", idempotent=True)
    def get_channel_state(self, req: Request, caller: Caller) -> bool:
        self._heard()
        name = _text(req, "name", "value")
        for bank in self.banks:
            if bank.has(name):
                return bank.is_open(name)
        raise PychronError(ErrorCode.INVALID_VALVE, name)
