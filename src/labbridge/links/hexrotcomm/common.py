"""Pieces shared by both generations of the hexapod/rotator link.

Access (issue 12, docs/adr/0183): hexrotcomm carries no credentials, so a peer is judged by
its source address, or by its TLS client certificate when both ends are labbridge.
:class:`PeerAccess` is the one place that names the peer of a connection and asks the node's
gate whether it may connect and whether it may replace the connected client;
:func:`command_action` classifies each command (``CONFIG_*`` is ``admin``, every other command
``operator``) and :func:`refusal_reason` fits the gate's refusal into a COMMAND_STATUS reason.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from labbridge.access import AccessDenied, Action, Gate, Principal, Role
from labbridge.protocol.hexrotcomm.devices import DeviceSpec
from labbridge.protocol.hexrotcomm.structs import (
    COMMAND_STATUS_REASON_LEN,
    ErrorCode,
    SetStateParam,
)
from labbridge.transport.one_client import OneClientServer
from labbridge.transport.tls import peer_common_name

Callback = Callable[[Any], Awaitable[None] | None]


class CommandRejected(Exception):
    """The controller answered NO_ACK; ``reason`` is its text (spec §3.4)."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class LinkFault(ConnectionError):
    """The link is in FAULT: lost, refused, timed out or broken by a protocol error."""

    def __init__(self, message: str, error_code: ErrorCode) -> None:
        super().__init__(message)
        self.error_code = error_code


async def call_callback(cb: Callback | None, arg: Any, log: logging.Logger) -> None:
    """Run a user callback; its exceptions are logged and never break the link (spec §3.8)."""
    if cb is None:
        return
    try:
        res = cb(arg)
        if asyncio.iscoroutine(res):
            await res
    except Exception:
        log.exception("callback %r failed", cb)


#: Default of ``replace_idle_after`` for the hexrotcomm one-client servers (seconds): a real
#: controller sends telemetry at 10-50 Hz, a CSC may stay quiet between commands for longer.
REPLACE_IDLE_AFTER = 5.0


class PairedCommandServer(OneClientServer):
    """The generation-A command socket's one-client server (P+1).

    ``OneClientServer`` replaces a client that has *sent nothing* for ``replace_idle_after``
    when a newcomer arrives (issue 13). On the gen-A command socket the controller never sends,
    so silence says nothing there; this server decides instead with ``stale(newcomer)``, a
    rule that looks at the telemetry socket (``CommandTelemetryServer._command_stale``), and
    passes ``replace_idle_after=None`` to the base class. It records when its client connected
    (``connected_at``), which the rule needs.
    """

    def __init__(self, *args: Any, stale: Callable[[str], float | None], **kw: Any) -> None:
        super().__init__(*args, replace_idle_after=None, **kw)
        self._stale = stale
        #: When the current client connected (``time.monotonic()``).
        self.connected_at = time.monotonic()
        self._preadmitted: Any = None

    def _admitted(self, transport: asyncio.BaseTransport, peer: str, replacing: bool) -> bool:
        if transport is self._preadmitted:  # asked once already, as a replacement
            self._preadmitted = None
            return True
        return super()._admitted(transport, peer, replacing)

    async def _on_accept(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if self.connected and not self._closing:
            newcomer = _peer(writer)
            idle = self._stale(newcomer)
            if idle is not None:
                # Only a peer that may act as the controller replaces it (issue 12).
                if not self._admitted(writer.transport, newcomer, True):
                    await self._refuse_writer(writer)
                    return
                self._preadmitted = writer.transport
                self.replaced_count += 1
                self.log.warning("%s: client %s is not the controller's command socket (stale "
                                 "for %.1f s); replacing it with %s", self.name, self.peer,
                                 idle, newcomer)
                await self.close_client()
        was = self._writer
        await super()._on_accept(reader, writer)
        self._preadmitted = None
        if self._writer is not was and self._writer is writer:
            self.connected_at = time.monotonic()


def _peer(obj: Any) -> str:
    peer = obj.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


# -- access ------------------------------------------------------------------------------------
#: ``param1`` of SET_ENABLED_SUBSTATE that stops (rotator and hexapod both use 3).
_STOP_SUBSTATE = 3
_MOVES = frozenset({"MOVE", "POSITION_SET", "TRACK_VEL_CMD", "SET_CONSTANT_VEL", "OFFSET"})
#: Commands besides ``CONFIG_*`` that rewrite the controller's CONFIG (admin).
_CONFIGURING = frozenset({"SET_PIVOTPOINT"})


#: command_action results: a controller gets the same few commands over and over (an Action
#: is immutable). Keyed by the spec's identity, which the entry keeps alive and checks.
_ACTIONS: dict[tuple[int, int, tuple[float, ...], str], tuple[DeviceSpec, Action]] = {}
_ACTIONS_MAX = 1024


def command_action(spec: DeviceSpec, code: int, params: Sequence[float],
                   target: str) -> Action:
    """What a command asks for: ``admin`` for the commands that rewrite the controller's
    configuration (what its CONFIG reports): ``CONFIG_*`` (the limits it enforces, emergency
    limits included) and the hexapod's ``SET_PIVOTPOINT``; ``operator`` for everything else
    (state changes, ENABLE_DRIVES, moves, stops), unknown codes included."""
    key = (id(spec), code, tuple(params), target)
    hit = _ACTIONS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    action = _command_action(spec, code, params, target)
    if len(_ACTIONS) >= _ACTIONS_MAX:
        _ACTIONS.clear()
    _ACTIONS[key] = (spec, action)
    return action


def _command_action(spec: DeviceSpec, code: int, params: Sequence[float],
                    target: str) -> Action:
    verb, needs = _classify(spec.codes, code)
    p1 = params[0] if params else 0.0
    detail = ""
    if verb == "SET_STATE" and math.isfinite(p1):
        detail = _SET_STATE_NAMES.get(p1) or f"param1={p1:g}"
    elif params and any(params):
        shown = list(params)
        while shown and shown[-1] == 0:  # unused trailing parameters are sent as zeros
            shown.pop()
        detail = " ".join(f"{x:g}" for x in shown)
    return Action(needs, verb, target, detail)


@functools.lru_cache(maxsize=256)
def _classify(codes: type[enum.IntEnum], code: int) -> tuple[str, Role]:
    """(verb, role needed) of a command code (cached: this is on every command's path)."""
    try:
        verb = codes(code).name
    except ValueError:
        verb = f"command {code:#x}"
    needs = Role.ADMIN if verb.startswith("CONFIG_") or verb in _CONFIGURING else Role.OPERATOR
    return verb, needs


_SET_STATE_NAMES = {float(m.value): m.name for m in SetStateParam}


def _what(action: Action, params: Sequence[float]) -> str:
    verb = action.verb
    if verb.startswith("CONFIG_"):
        return "configure"
    if verb in ("SET_STATE", "FAULT"):
        return "change state"
    if verb == "ENABLE_DRIVES":
        return "enable drives"
    if verb == "SET_PIVOTPOINT":
        return "set the pivot"
    if verb == "SET_ENABLED_SUBSTATE":
        return "stop" if params and params[0] == _STOP_SUBSTATE else "move"
    if verb in _MOVES:
        return "move"
    return "command it"


def refusal_reason(exc: AccessDenied, params: Sequence[float] = ()) -> str:
    """The gate's refusal in the 49 characters of a COMMAND_STATUS reason, e.g.
    ``access: observer may not move`` (the full reason is in the audit line)."""
    if exc.no_access:
        text = f"access: {exc.principal.who} has no access here"
    else:
        text = f"access: {exc.role.label} may not {_what(exc.action, params)}"
    return text[: COMMAND_STATUS_REASON_LEN - 1]


class PeerAccess:
    """Names the peer of a hexrotcomm connection and asks the gate about it.

    ``connect_role`` is what a peer needs to be served at all: ``observer`` on a mock
    controller (it may watch telemetry; its commands are checked one by one), ``operator`` on
    the generation-A CSC-side sockets (whoever connects there acts as the controller: its
    telemetry becomes our state and it reads our commands). Replacing a silent client always
    needs ``operator``, so a stranger cannot kick the real CSC or controller off.

    With ``tls`` the peer's identity is its client certificate's common name, mapped by
    ``security.identities.<name>.cert``; a certificate whose name is not listed is nobody. A
    peer that fails the TLS handshake never reaches :meth:`admit`: the server reports it to
    :meth:`handshake_failed`, a refusal in the audit trail.
    """

    def __init__(self, gate: Gate | None, via: str, target: str, *,
                 connect_role: Role = Role.OBSERVER, tls: bool = False) -> None:
        self.gate = gate if gate is not None else Gate()
        self.via = via
        self.target = target
        self.connect_role = connect_role
        self.tls = tls

    def principal(self, transport: Any) -> Principal:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if not self.tls:
            return Principal(address, self.via, "tcp")
        cn = peer_common_name(transport)
        ident = self.gate.policy.identity_for_cert(cn) if cn is not None else None
        # An unlisted (or missing) name is still the identity the certificate proved: the
        # policy gives it no role, so the peer gets nothing (never its address's role).
        return Principal(address, self.via, "tls",
                         ident.name if ident is not None else (cn or "<no certificate>"))

    def admit(self, transport: Any, replacing: bool) -> str | None:
        """``OneClientServer``'s ``admit``: None to serve the peer, or why it is refused
        (audited by the gate)."""
        who = self.principal(transport)
        gate = self.gate
        connect = Action(self.connect_role, "connect", self.target)
        try:
            role = gate.check(who, connect)
        except AccessDenied as exc:
            return exc.reason
        gate.record(who, connect, role=role)  # audited when it needs operator (gen A)
        if replacing:
            replace = Action(Role.OPERATOR, "replace client", self.target,
                             "the connected client was silent")
            try:
                gate.check(who, replace)
            except AccessDenied as exc:
                return exc.reason
            gate.record(who, replace, role=role)
        return None

    def handshake_failed(self, host: str, reason: str) -> None:
        """``OneClientServer``'s ``on_handshake_failed``: a peer failed the TLS handshake (no
        certificate, another CA's, plain TCP, too slow); one refusal in the audit trail
        (repeats are counted by the gate's flood control)."""
        self.gate.refuse(Principal(host, self.via, "tls"),
                         Action(self.connect_role, "connect", self.target, "TLS handshake"),
                         f"TLS handshake failed: {reason}")
