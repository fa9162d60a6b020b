"""From request text to reply text: the command table of a Pychron-family server.

A :class:`CommandSet` groups the handlers of one vocabulary (valves, furnace, laser...); a
:class:`Dispatcher` joins several and turns every outcome into exact reply text:
handler results through :func:`render_reply`, :class:`PychronError` as raised, argument
errors as ``ERROR 004``, anything else as ``ERROR 002`` -- a peer always gets an answer
(spec 17, defects 1 and 2).

Access (docs/adr/0100): every command declares the role it needs (queries ``observer``,
actuations ``operator``, locks and configuration ``admin``); the dispatcher asks the node's
:class:`~labbridge.access.Gate` before running a handler, for every server of the family
(TCP in any framing, UDP, the relay processor), and audits the outcome of every command that
changes state. A refusal is the real table's ``ERROR 013`` (no access at all) or ``ERROR 012``
(access, but not this role), with the reason.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from labbridge.access import DONE, FAILED, AccessDenied, Action, Gate, Principal, Role
from labbridge.protocol.pychron.messages import (
    ErrorCode,
    PychronError,
    Request,
    RequestError,
    error_text,
    parse_request,
    render_reply,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the peer address (ownership), the framing used, and the
    :class:`~labbridge.access.Principal` the node's gate judges.

    ``framing`` ``"udp"`` marks a datagram (read-only unless the policy says otherwise);
    ``identity`` is set only when a credential proved it (TLS client certificate); ``tls``
    marks a TLS connection (with or without a known identity).
    """

    peer: str
    framing: str = "plain"
    via: str = "command-server"
    identity: str | None = None
    udp: bool = False
    tls: bool = False
    principal: Principal = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        transport = ("udp" if self.udp or self.framing == "udp"
                     else "tls" if self.tls or self.identity is not None
                     else "local" if self.peer == "local" else "tcp")
        object.__setattr__(self, "principal", Principal(self.peer, self.via, transport,
                                                        self.identity))


Handler = Callable[[Request, Caller], Any]


F = TypeVar("F", bound=Callable[..., Any])


def command(name: str, *, idempotent: bool = False, role: Role | None = None
            ) -> Callable[[F], F]:
    """Mark a method of a :class:`CommandSet` as the handler of command ``name``.

    ``role`` is what the caller needs: by default ``observer`` for an idempotent query and
    ``operator`` for anything else (so a command that forgets to say is never open to mere
    observers); give ``Role.ADMIN`` for locks and configuration.
    """

    def deco(fn: F) -> F:
        fn._pychron_command = name  # type: ignore[attr-defined]
        fn._pychron_idempotent = idempotent  # type: ignore[attr-defined]
        fn._pychron_role = role if role is not None else (  # type: ignore[attr-defined]
            Role.OBSERVER if idempotent else Role.OPERATOR)
        return fn

    return deco


class CommandSet:
    """A vocabulary: methods decorated with :func:`command`."""

    def commands(self) -> dict[str, tuple[Handler, Role]]:
        out: dict[str, tuple[Handler, Role]] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            name = getattr(fn, "_pychron_command", None)
            if name is not None:
                out[name] = (getattr(self, attr), fn._pychron_role)  # type: ignore[union-attr]
        return out


#: Handler results that are final (not awaitable): checked by exact type before asking
#: :func:`inspect.isawaitable`.
_PLAIN: Final = frozenset({str, bool, int, float, type(None), bytes, PychronError})

#: Request texts whose parsed request and access action are kept (a client asks the same few
#: things over and over); longer texts and JSON requests are parsed each time.
_PLAN_TEXT_MAX: Final = 128
_PLANS_MAX: Final = 1024


class Dispatcher:
    """Routes requests to handlers through the node's access gate; every path ends in reply
    text."""

    def __init__(self, sets: list[CommandSet] | None = None, gate: Gate | None = None) -> None:
        self._table: dict[str, tuple[Handler, Role]] = {}
        # Request text -> (request, handler, role needed, action): parsing and the action's
        # construction are done once per distinct text. The gate still judges every request.
        self._plans: dict[str, tuple[Request, Handler, Role, Action]] = {}
        #: The node's gate; a dispatcher built alone (tests, tools) gets the default
        #: policy: this machine is admin, nobody else may do anything.
        self.gate = gate if gate is not None else Gate()
        for s in sets or []:
            self.add(s)

    def add(self, cmdset: CommandSet) -> None:
        for name, entry in cmdset.commands().items():
            if name in self._table:
                raise ValueError(f"command {name!r} is defined twice")
            self._table[name] = entry
        self._plans.clear()

    def role_needed(self, command: str) -> Role | None:
        entry = self._table.get(command)
        return None if entry is None else entry[1]

    def dispatch(self, text: str, caller: Caller) -> str | Awaitable[str]:
        """Reply text, or an awaitable of it when the handler is asynchronous."""
        plan = self._plans.get(text)
        if plan is None:
            try:
                req = parse_request(text)
            except RequestError as exc:
                return exc.reply.text
            entry = self._table.get(req.command)
            if entry is None:
                return error_text(ErrorCode.INVALID_COMMAND, req.command)
            fn, needs = entry
            action = Action(needs, req.command, req.arg_text[:200])
            if req.data is None and len(text) <= _PLAN_TEXT_MAX:
                plans = self._plans
                if len(plans) >= _PLANS_MAX:
                    plans.clear()
                plans[text] = (req, fn, needs, action)
        else:
            req, fn, needs, action = plan
        principal = caller.principal
        gate = self.gate
        try:
            gate.check(principal, action)
        except AccessDenied as exc:
            return refusal_text(exc)
        try:
            result = fn(req, caller)
        except Exception as exc:
            reply = self._error_reply(req, exc)
            if needs >= Role.OPERATOR:
                gate.record(principal, action, FAILED, reply)
            return reply
        if result.__class__ not in _PLAIN and inspect.isawaitable(result):
            return self._finish(req, result, principal, action)
        reply = render_reply(result)
        if needs >= Role.OPERATOR:
            _audit_reply(gate, principal, action, reply)
        return reply

    async def _finish(self, req: Request, awaitable: Awaitable[Any], principal: Principal,
                      action: Action) -> str:
        try:
            reply = render_reply(await awaitable)
        except Exception as exc:
            reply = self._error_reply(req, exc)
        if action.needs >= Role.OPERATOR:
            _audit_reply(self.gate, principal, action, reply)
        return reply

    def _error_reply(self, req: Request, exc: Exception) -> str:
        if isinstance(exc, PychronError):
            return exc.text
        if isinstance(exc, ValueError | KeyError | TypeError | IndexError):
            log.info("invalid arguments in %r: %s", req.text, exc)
            return error_text(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        if isinstance(exc, OSError):
            # The environment failed (a state file that cannot be written, a device gone):
            # one line that says what and why; a traceback would add nothing.
            log.error("%s failed: %s", req.text[:200], exc)
        else:
            log.exception("handler of %s failed", req.command)
        return error_text(ErrorCode.FUNC_CALL, exc, req.arg_text)


def refusal_text(exc: AccessDenied) -> str:
    """The real error table's answer to a refused request: ``ERROR 013 : Not an approved ip
    address <addr>`` when the peer may do nothing here, else ``ERROR 012 : Access restricted
    to <role> (<verb>). You are <who> (<role>)`` -- the legacy system-lock form."""
    if exc.no_access:
        return error_text(ErrorCode.SECURITY, exc.principal.address)
    you = f"{exc.principal.who} ({exc.role.label})"
    if "UDP is read-only" in exc.reason:
        you += " over UDP, which is read-only here: send it over TCP"
    return error_text(ErrorCode.SYSTEM_LOCK, f"the {exc.action.needs.label} role",
                      exc.action.verb, you)


def _audit_reply(gate: Gate, principal: Principal, action: Action, reply: str) -> None:
    if reply.startswith("ERROR"):
        gate.record(principal, action, FAILED, reply)
    else:
        gate.record(principal, action, DONE, "" if reply == "OK" else reply[:200])
