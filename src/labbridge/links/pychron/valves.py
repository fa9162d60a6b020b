"""The valve-controller vocabulary of the RemoteCommandServer (spec pychron.md section 5).

Replies follow the current real server byte for byte (vectors ``replies``), except where the
real server sends nothing or leaves the socket open (spec 17): there labbridge answers with an
error. ``Lock`` and ``Unlock`` are labbridge additions (the real server changes locks only on
the valve node's own screen); a real Pychron client never sends them.
"""

from __future__ import annotations

from collections.abc import Sequence

from labbridge.access import Role
from labbridge.devices.backends import BackendError
from labbridge.devices.flags import Flag
from labbridge.devices.gauges import GaugeController
from labbridge.devices.valves import Outcome, ValveBank
from labbridge.links.pychron.dispatch import Caller, CommandSet, command
from labbridge.protocol.pychron.crc import state_checksum
from labbridge.protocol.pychron.messages import OK_UNCHANGED, ErrorCode, PychronError, Request
from labbridge.protocol.pychron.words import (
    checksum_keys,
    owners_word,
    state_word,
    version1_word,
)


class ValveCommands(CommandSet):
    """Valves (one or more banks), flags and gauge controllers of one node."""

    def __init__(self, banks: Sequence[ValveBank], flags: Sequence[Flag] = (),
                 gauges: Sequence[GaugeController] = ()) -> None:
        self.banks = list(banks)
        self.flags = {f.name: f for f in flags}
        self.gauges = {g.name: g for g in gauges}

    # -- lookups ------------------------------------------------------------------------------
    def _bank_of(self, name: str) -> ValveBank | None:
        for bank in self.banks:
            if bank.has(name):
                return bank
        return None

    def _all_names(self) -> list[tuple[ValveBank, str]]:
        return [(bank, n) for bank in self.banks for n in bank.names]

    def _known(self, name: str) -> ValveBank:
        bank = self._bank_of(name)
        if bank is None:
            raise PychronError(ErrorCode.INVALID_VALVE, name)
        return bank

    @staticmethod
    def _valve_arg(req: Request) -> str:
        if req.data is not None:
            if "value" not in req.data and "name" not in req.data:
                raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, "")
            return str(req.data.get("value", req.data.get("name")))
        return req.arg_text

    # -- actuation ----------------------------------------------------------------------------
    async def _actuate(self, req: Request, caller: Caller, action: str) -> object:
        name = self._valve_arg(req)
        bank = self._bank_of(name)
        if bank is None:
            flag = self.flags.get(name)
            if flag is not None and name.endswith("Flag"):
                # "Open <x>Flag" is "Set <x>Flag 1" (the real server calls a missing method
                # and never answers).
                return flag.set(1 if action == "open" else 0, caller.peer)
            if name == "":
                if req.is_json:
                    # No real reply to copy (the real server leaves a JSON request without a
                    # valve unanswered): the missing-argument error, as for no "value" key.
                    raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command)
                # The real plain reply, byte for byte: "ERROR 015 : Valve  failed to actuate
                # open" (vectors replies.cases; labbridge's clients refuse to send it).
                raise PychronError(ErrorCode.VALVE_ACTUATION, "", action)
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text or name)
        if action == "open":
            result = await bank.open(name, caller.peer)
        else:
            result = await bank.close(name, caller.peer)
        if result.outcome is Outcome.ACTUATED:
            return True
        if result.outcome is Outcome.LOCKED:
            return OK_UNCHANGED
        if result.outcome is Outcome.UNKNOWN:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text or name)
        # Plain and braced requests get the real reply byte for byte; a JSON request (no
        # real counterpart for a refusal) also learns why: "... open (interlock: B is open)".
        raise PychronError(ErrorCode.VALVE_ACTUATION, name, action,
                           detail=result.reason if req.is_json else "")

    @command("Open")
    async def open(self, req: Request, caller: Caller) -> object:
        return await self._actuate(req, caller, "open")

    @command("Close")
    async def close(self, req: Request, caller: Caller) -> object:
        return await self._actuate(req, caller, "close")

    # -- single-valve queries -----------------------------------------------------------------
    @command("GetValveState", idempotent=True)
    def get_valve_state(self, req: Request, caller: Caller) -> bool:
        name = self._valve_arg(req)
        return self._known(name).is_open(name)

    @command("GetIndicatorState", idempotent=True)
    async def get_indicator_state(self, req: Request, caller: Caller) -> bool:
        name = self._valve_arg(req)
        return await self._known(name).indicator_state(name)

    @command("GetValveLockState", idempotent=True)
    def get_valve_lock_state(self, req: Request, caller: Caller) -> bool | None:
        name = self._valve_arg(req)
        bank = self._bank_of(name)
        return None if bank is None else bank.is_locked(name)

    # -- words ----------------------------------------------------------------------------------
    @command("GetValveStates", idempotent=True)
    def get_valve_states(self, req: Request, caller: Caller) -> str:
        return state_word([(n, b.is_open(n)) for b, n in self._all_names()])

    @command("GetValveLockStates", idempotent=True)
    def get_valve_lock_states(self, req: Request, caller: Caller) -> str:
        return state_word([(n, b.is_locked(n)) for b, n in self._all_names()])

    @command("GetValveOwners", idempotent=True)
    def get_valve_owners(self, req: Request, caller: Caller) -> str:
        return owners_word([(n, b.owner(n)) for b, n in self._all_names()])

    @command("GetStateWord", idempotent=True)
    def get_state_word(self, req: Request, caller: Caller) -> str:
        return version1_word([(n, b.is_open(n)) for b, n in self._all_names()])

    @command("GetLockWord", idempotent=True)
    def get_lock_word(self, req: Request, caller: Caller) -> str:
        return version1_word([(n, b.is_locked(n)) for b, n in self._all_names()])

    @command("GetStateChecksum", idempotent=True)
    def get_state_checksum(self, req: Request, caller: Caller) -> int:
        names = {n: b for b, n in self._all_names()}
        keys = checksum_keys(req.single, names)
        return state_checksum(names[k].state_str(k) for k in keys if k in names)

    # -- locks (labbridge extension) --------------------------------------------------------------
    @command("Lock", role=Role.ADMIN)
    async def lock(self, req: Request, caller: Caller) -> bool:
        name = self._valve_arg(req)
        bank = self._known(name)
        bank.lock(name)
        if bank.durable:
            await bank.saved()  # acknowledged means durable (docs/adr/0110)
        return True

    @command("Unlock", role=Role.ADMIN)
    async def unlock(self, req: Request, caller: Caller) -> bool:
        name = self._valve_arg(req)
        bank = self._known(name)
        bank.unlock(name)
        if bank.durable:
            await bank.saved()
        return True

    # -- flags, generic devices ---------------------------------------------------------------------
    def _flag(self, name: str) -> Flag:
        flag = self.flags.get(name)
        if flag is None:
            raise PychronError(ErrorCode.DEVICE_CONNECTION, name)
        return flag

    @command("Read", idempotent=True)
    def read(self, req: Request, caller: Caller) -> object:
        name = req.single if req.data is None else str(req.data.get("value", ""))
        return self._flag(name).read()

    @command("Set")
    def set(self, req: Request, caller: Caller) -> object:
        if req.data is not None:
            name, value_text = str(req.data.get("device", "")), str(req.data.get("value", ""))
        else:
            name, _, value_text = req.arg_text.partition(" ")
        flag = self._flag(name)
        try:
            value = float(value_text)
        except ValueError:
            raise PychronError(ErrorCode.INVALID_ARGUMENTS, "Set", req.arg_text) from None
        return flag.set(int(value) if value.is_integer() else value, caller.peer)

    @command("Ping", idempotent=True)
    def ping(self, req: Request, caller: Caller) -> object:
        name = req.single if req.data is None else str(req.data.get("device", ""))
        return self._flag(name).ping(caller.peer)

    # -- gauges -------------------------------------------------------------------------------------
    @command("GetPressure", idempotent=True)
    async def get_pressure(self, req: Request, caller: Caller) -> float:
        if req.data is not None:
            ctrl, gauge = str(req.data.get("controller", "")), str(req.data.get("gauge", ""))
        else:
            parts = [*req.args, "", ""]
            ctrl, gauge = parts[0], parts[1]
        dev = self.gauges.get(ctrl)
        if dev is None or not dev.has(gauge):
            raise PychronError(ErrorCode.INVALID_GAUGE, ctrl, gauge)
        try:
            return await dev.pressure(gauge)
        except BackendError:
            raise PychronError(ErrorCode.NO_RESPONSE) from None
