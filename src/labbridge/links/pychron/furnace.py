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
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from labbridge.access import Role
from labbridge.devices.furnace import Furnace, PIDGains
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

    # -- channels -------------------------------------------------------------------------------
    @command("GetChannelState", idempotent=True)
    def get_channel_state(self, req: Request, caller: Caller) -> bool:
        self._heard()
        name = _text(req, "name", "value")
        for bank in self.banks:
            if bank.has(name):
                return bank.is_open(name)
        raise PychronError(ErrorCode.INVALID_VALVE, name)
