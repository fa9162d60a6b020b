"""The vocabulary of access control: roles, who is asking, what they ask, and what happened.

These are plain values. The policy that maps a :class:`Principal` to a :class:`Role` lives in
:mod:`labbridge.access.policy`; the one place that checks and audits is
:class:`labbridge.access.gate.Gate`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import NamedTuple

_now = time.time


class Role(enum.IntEnum):
    """What a principal may do on a node; each role includes the ones below it."""

    #: May not even read: every request is refused.
    NOBODY = 0
    #: Reads state and subscribes to telemetry.
    OBSERVER = 1
    #: Actuates (opens valves, sets setpoints, moves axes, registers hardware modules).
    OPERATOR = 2
    #: Locks and unlocks valves, changes configuration.
    ADMIN = 3

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def parse(cls, text: str) -> Role:
        """``"operator"`` -> :attr:`OPERATOR`; raises ``ValueError`` naming the choices."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r} (roles: observer, operator, admin, "
                             "nobody)") from None


_LABELS: dict[Role, str] = {r: r.name.lower() for r in Role}

#: How a request reached the node. ``local`` is a Unix socket in the node's private
#: directory or an in-process caller; ``udp`` is a datagram (its source can be forged).
TRANSPORTS = ("tcp", "udp", "tls", "unix", "local", "curve", "web", "epics")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: always an address, and an identity when a credential proved one.

    ``address`` is the peer's IP address as text (IPv4-mapped IPv6 addresses are folded to
    IPv4 by the policy), or ``"local"`` for Unix sockets and in-process callers. ``identity``
    is set only by a link that verified a credential (a TLS client certificate, a Curve key,
    a web login); a name a peer merely claims is never an identity.
    """

    address: str
    via: str = ""
    transport: str = "tcp"
    identity: str | None = None

    @property
    def who(self) -> str:
        """How the audit trail names this principal."""
        if self.identity:
            return f"{self.identity}@{self.address}"
        return self.address


@dataclass(frozen=True, slots=True)
class Action:
    """One request that a link wants to carry out: the role it needs, and what it is."""

    needs: Role
    verb: str
    target: str = ""
    detail: str = ""

    @property
    def changes_state(self) -> bool:
        return self.needs >= Role.OPERATOR


class AccessDenied(Exception):
    """The gate refused an action; ``str(exc)`` is a reason fit for the peer."""

    def __init__(self, principal: Principal, action: Action, role: Role, reason: str) -> None:
        super().__init__(reason)
        self.principal = principal
        self.action = action
        self.role = role
        self.reason = reason

    @property
    def no_access(self) -> bool:
        """True when the principal may do nothing at all here (not even read)."""
        return self.role is Role.NOBODY


#: Outcomes recorded in the audit trail.
DONE = "done"
FAILED = "failed"
REFUSED = "refused"


class _AuditFields(NamedTuple):
    node: str
    outcome: str
    verb: str
    target: str
    who: str
    address: str
    via: str
    transport: str
    role: str
    detail: str
    reason: str
    ts: float


class AuditEvent(_AuditFields):
    """One line of the audit trail: who asked what, when, and the result.

    Immutable. A NamedTuple rather than a frozen dataclass: one is built for every
    state-changing request, and a frozen dataclass sets each of its twelve fields through
    ``object.__setattr__``, which made building it most of what the gate costs a request
    (docs/adr/0200). ``ts`` defaults to now.
    """

    __slots__ = ()

    def __new__(cls, node: str, outcome: str, verb: str, target: str, who: str, address: str,
                via: str, transport: str, role: str, detail: str = "", reason: str = "",
                ts: float | None = None) -> AuditEvent:
        return super().__new__(cls, node, outcome, verb, target, who, address, via, transport,
                               role, detail, reason, _now() if ts is None else ts)

    def to_json(self) -> dict[str, object]:
        return {"node": self.node, "outcome": self.outcome, "verb": self.verb,
                "target": self.target, "who": self.who, "address": self.address,
                "via": self.via, "transport": self.transport, "role": self.role,
                "detail": self.detail, "reason": self.reason, "ts": self.ts}

    def __str__(self) -> str:
        return self.line()

    def line(self) -> str:
        """The node log's form of this event (one line)."""
        what = f"{self.verb} {self.target}".strip()
        if self.detail:
            what += f" ({self.detail})"
        text = (f"{self.outcome}: {what} by {self.who} as {self.role} "
                f"via {self.via or '?'}/{self.transport}")
        if self.reason:
            text += f": {self.reason}"
        return text
