"""The acquisition side of a valve node: the seed's RemoteExtractionLineManager.

:class:`RemoteValves` wraps a :class:`PychronClient`. ``open``/``close`` do what a real
Pychron client does (spec 7): send the actuation, then confirm through
``GetIndicatorState``. If the actuation's reply is lost, it is **never re-sent**: the state is
read back (an idempotent request, retried) and either confirms the target or
:class:`ActuationUncertain` says what is known.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from labbridge.links.pychron.client import (
    ErrorReply,
    PychronClient,
    PychronClientError,
    ReplyLost,
)
from labbridge.protocol.pychron.crc import checksums_equal, state_checksum
from labbridge.protocol.pychron.messages import format_json_request, format_request, to_bool
from labbridge.protocol.pychron.words import parse_owners_word, parse_state_word

log = logging.getLogger(__name__)


class ActuationError(PychronClientError):
    """The node refused or failed an actuation (``ERROR ...``), or it did not confirm."""


class ActuationUncertain(PychronClientError):
    """The reply to an actuation was lost and the state read afterwards does not confirm it,
    or the node answered but the confirming read failed (``observed`` None)."""

    def __init__(self, message: str, name: str, observed: bool | None) -> None:
        super().__init__(message)
        self.name = name
        self.observed = observed


@dataclass(frozen=True, slots=True)
class Actuation:
    """What ``open``/``close`` observed."""

    name: str
    action: str
    reply: str | None  # None when the reply was lost
    state: bool  # the confirmed state
    locked: bool = False  # the node skipped it: the valve is software-locked ("ok")


class RemoteValves:
    """Valves of a remote node, driven over the Pychron command channel."""

    def __init__(self, client: PychronClient, *, confirm: bool = True,
                 confirm_delay: float = 0.0, kinds: dict[str, str] | None = None) -> None:
        self.client = client
        self.confirm = confirm
        self.confirm_delay = confirm_delay
        #: state_str prefix per valve for the checksum (``VALVE`` unless told otherwise).
        self.kinds = kinds or {}

    def __repr__(self) -> str:
        return f"<RemoteValves {self.client.host}:{self.client.port}>"

    async def open(self, name: str) -> Actuation:
        return await self._actuate(name, True)

    async def close(self, name: str) -> Actuation:
        return await self._actuate(name, False)

    async def _actuate(self, name: str, target: bool) -> Actuation:
        action = "open" if target else "close"
        command = "Open" if target else "Close"
        if not name or name != name.strip():
            # The real server answers "Open" alone with an actuation error on the valve ''
            # ("ERROR 015 : Valve  failed to actuate open"): say what is wrong instead.
            raise ActuationError(f"{action} {name!r}: a valve name is required (no spaces "
                                 "around it); nothing was sent")
        if self.client.framing == "braced" and not self.client.udp:
            # Braced frames are spoken by labbridge nodes only: ask in the JSON form, whose
            # refusal carries the reason ("... (interlock: B is open)", ADR 0140).
            request = format_json_request(command, value=name)
        else:
            request = format_request(command, name)
        try:
            reply: str | None = await self.client.ask(request, idempotent=False)
        except ReplyLost as exc:
            log.warning("%s: reply to %r lost; reading the state instead of re-sending", self,
                        request)
            try:
                observed = await self.indicator_state(name)
            except PychronClientError as exc2:
                raise ActuationUncertain(
                    f"{action} {name}: reply lost and the state cannot be read ({exc2}); "
                    "the valve may or may not have moved", name, None) from exc
            if observed != target:
                raise ActuationUncertain(
                    f"{action} {name}: reply lost and the valve reads "
                    f"{'open' if observed else 'closed'}", name, observed) from exc
            return Actuation(name, action, None, observed)
        assert reply is not None
        if reply[:5].upper() == "ERROR":
            raise ActuationError(f"{action} {name}: {reply}")
        if reply == "ok":
            # Software-locked on the node: no actuation happened.
            return Actuation(name, action, reply, await self.state(name), locked=True)
        if to_bool(reply) is not True:
            raise ActuationError(f"{action} {name}: unexpected reply {reply!r}")
        if not self.confirm:
            return Actuation(name, action, reply, target)
        if self.confirm_delay:
            await asyncio.sleep(self.confirm_delay)
        try:
            observed = await self.indicator_state(name)
        except PychronClientError as exc:
            # The node said it actuated; only the confirmation was lost. Say so, rather than
            # let a query's NoReply read as if the open itself had failed (a caller that took
            # it for that would actuate again).
            raise ActuationUncertain(
                f"{action} {name}: node answered {reply} but the state cannot be read back "
                f"({exc}); the valve has probably moved", name, None) from exc
        if observed != target:
            raise ActuationError(f"{action} {name}: node answered {reply} but the indicator "
                                 f"reads {'open' if observed else 'closed'}")
        return Actuation(name, action, reply, observed)

    # -- queries --------------------------------------------------------------------------------
    async def _bool(self, request: str) -> bool:
        reply = await self.client.call(request)
        value = to_bool(reply)
        if value is None:
            raise PychronClientError(f"{request}: unexpected reply {reply!r}")
        return value

    async def state(self, name: str) -> bool:
        return await self._bool(format_request("GetValveState", name))

    async def indicator_state(self, name: str) -> bool:
        return await self._bool(format_request("GetIndicatorState", name))

    async def lock_state(self, name: str) -> bool:
        reply = await self.client.call(format_request("GetValveLockState", name))
        if reply == "No Response":
            raise ErrorReply(f"ERROR 005 : {name} is not a registered valve name")
        value = to_bool(reply)
        if value is None:
            raise PychronClientError(f"GetValveLockState {name}: unexpected reply {reply!r}")
        return value

    async def states(self) -> dict[str, bool]:
        return parse_state_word(await self.client.call("GetValveStates"))

    async def locks(self) -> dict[str, bool]:
        return parse_state_word(await self.client.call("GetValveLockStates"))

    async def owners(self) -> dict[str, str]:
        return parse_owners_word(await self.client.call("GetValveOwners"))

    async def checksum(self, names: list[str]) -> int:
        reply = await self.client.call(format_request("GetStateChecksum", *names))
        try:
            return int(reply)
        except ValueError:
            raise PychronClientError(f"GetStateChecksum: unexpected reply {reply!r}") from None

    def local_checksum(self, states: dict[str, bool], locks: dict[str, bool],
                       names: list[str]) -> int:
        """The checksum the node should answer for ``names`` given what we believe."""
        parts = []
        for n in names:
            prefix = self.kinds.get(n, "VALVE")
            if prefix == "MANUAL_SWITCH":
                parts.append(f"{prefix}-{n}{states.get(n, False)}")
            else:
                parts.append(f"{prefix}-{n}{states.get(n, False)}{locks.get(n, False)}")
        return state_checksum(parts)

    async def verify(self, states: dict[str, bool], locks: dict[str, bool]) -> bool:
        names = sorted(states)
        theirs = await self.checksum(names)
        return checksums_equal(self.local_checksum(states, locks, names), theirs)

    async def lock(self, name: str) -> None:
        await self.client.call(format_request("Lock", name))

    async def unlock(self, name: str) -> None:
        await self.client.call(format_request("Unlock", name))
