"""The one place where a node decides whether a request may run, and records what happened.

Every link hands the gate the :class:`~labbridge.access.model.Principal` that asked and the
:class:`~labbridge.access.model.Action` it wants to carry out, before calling a device. The
gate asks the node's :class:`~labbridge.access.policy.Policy`, refuses with a reason fit for
the peer (the link wraps it in its protocol's own error), and writes every refusal and every
state change to the audit trail: a line in the node log (logger ``labbridge.audit``) and an
:class:`~labbridge.access.model.AuditEvent` for each sink (the bus publisher, the web page).
Reads are checked but not audited.

A peer that repeats a refused request (a misconfigured controller retrying every 0.1 s, a
script in a loop) is audited once per minute per (who, verb, reason), with the count of
repeats; every refusal still counts in :attr:`Gate.refusals`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from labbridge.access.model import (
    DONE,
    FAILED,
    REFUSED,
    AccessDenied,
    Action,
    AuditEvent,
    Principal,
    Role,
)
from labbridge.access.policy import Policy

audit_log = logging.getLogger("labbridge.audit")
log = logging.getLogger(__name__)

AuditSink = Callable[[AuditEvent], None]
T = TypeVar("T")


class Gate:
    """Access checks and the audit trail of one node."""

    #: Seconds during which repeats of one refusal are counted instead of audited.
    QUIET = 60.0
    #: Refusal kinds remembered for that (oldest forgotten first).
    QUIET_KEYS = 1024

    def __init__(self, policy: Policy | None = None, node: str = "",
                 history: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy if policy is not None else Policy.default()
        self.node = node
        self.clock = clock
        self._sinks: list[AuditSink] = []
        #: (who, via, verb, reason) -> [first audited at, repeats since]
        self._quiet: OrderedDict[tuple[str, str, str, str], list[float]] = OrderedDict()
        #: Refusals counted but not written out (repeats within QUIET).
        self.quieted = 0
        #: The latest audit events (bounded), newest last.
        self.recent: deque[AuditEvent] = deque(maxlen=history)
        self.refusals = 0
        self.changes = 0

    # -- sinks -----------------------------------------------------------------------------
    def add_sink(self, sink: AuditSink) -> Callable[[], None]:
        """Call ``sink`` with every audit event; returns a function that removes it."""
        self._sinks.append(sink)

        def remove() -> None:
            if sink in self._sinks:
                self._sinks.remove(sink)

        return remove

    # -- checks ----------------------------------------------------------------------------
    def role_of(self, principal: Principal) -> Role:
        return self.policy.role_of(principal)

    def may(self, principal: Principal, needs: Role) -> bool:
        """Whether ``principal`` has role ``needs`` (no audit: for connection-level checks
        and for deciding what to show)."""
        return self.policy.role_of(principal) >= needs

    def check(self, principal: Principal, action: Action) -> Role:
        """Return the principal's role, or audit the refusal and raise :class:`AccessDenied`."""
        role = self.policy.role_of(principal)
        if role >= action.needs:
            return role
        reason = self._reason(principal, action, role)
        self._refused(principal, action, role, reason)
        raise AccessDenied(principal, action, role, reason)

    def refuse(self, principal: Principal, action: Action, reason: str,
               role: Role = Role.NOBODY, *, every: bool = False) -> AccessDenied:
        """Audit a refusal decided by a service's own filter (an ``allow:`` list, a bad
        credential, a missing CSRF token) and return the :class:`AccessDenied` to raise or
        report. ``role`` is the principal's role where the filter knows it; ``every`` audits
        each one, not once a minute (failed logins: the caller limits their rate itself)."""
        self._refused(principal, action, role, reason, every=every)
        return AccessDenied(principal, action, role, reason)

    def audit(self, principal: Principal, verb: str, target: str = "", outcome: str = DONE,
              reason: str = "") -> None:
        """Audit a security event that is not a device action (a login, a logout, a session
        ended by the server)."""
        self._emit(principal, Action(Role.NOBODY, verb, target), self.role_of(principal),
                   outcome, reason)

    def record(self, principal: Principal, action: Action, outcome: str = DONE,
               reason: str = "", role: Role | None = None) -> None:
        """Audit the outcome of a checked action that changes state (reads are not audited)."""
        if not action.changes_state:
            return
        if outcome == DONE:
            self.changes += 1
        self._emit(principal, action, self.policy.role_of(principal) if role is None else role,
                   outcome, reason)

    async def run(self, principal: Principal, action: Action,
                  fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Check, await ``fn(*args, **kwargs)``, audit its outcome (an exception is
        ``failed`` with its text) and return its result."""
        role = self.check(principal, action)
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self.record(principal, action, FAILED, str(exc) or type(exc).__name__, role)
            raise
        self.record(principal, action, DONE, "", role)
        return result

    def call(self, principal: Principal, action: Action, fn: Callable[..., T], *args: Any,
             **kwargs: Any) -> T:
        """:meth:`run` for a synchronous ``fn``."""
        role = self.check(principal, action)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.record(principal, action, FAILED, str(exc) or type(exc).__name__, role)
            raise
        self.record(principal, action, DONE, "", role)
        return result

    # -- internals -------------------------------------------------------------------------
    def _refused(self, principal: Principal, action: Action, role: Role, reason: str, *,
                 every: bool = False) -> None:
        self.refusals += 1
        if every:
            self._emit(principal, action, role, REFUSED, reason)
            return
        key = (principal.who, principal.via, action.verb, reason)
        now = self.clock()
        entry = self._quiet.get(key)
        if entry is not None and now - entry[0] < self.QUIET:
            entry[1] += 1
            self.quieted += 1
            return
        repeats = int(entry[1]) if entry is not None else 0
        self._quiet[key] = [now, 0]
        self._quiet.move_to_end(key)
        while len(self._quiet) > self.QUIET_KEYS:
            self._quiet.popitem(last=False)
        if repeats:
            reason = f"{reason} (and {repeats} more like it before)"
        self._emit(principal, action, role, REFUSED, reason)

    def _reason(self, principal: Principal, action: Action, role: Role) -> str:
        who = principal.who
        if role is Role.NOBODY:
            if principal.identity is not None:
                return f"{principal.identity} is not an identity of node {self.node or 'here'}"
            return f"{who} has no access to node {self.node or 'here'}"
        if (principal.transport == "udp" and principal.identity is None
                and self.policy.address_role(principal.address) >= action.needs):
            return (f"{action.verb} changes state and UDP is read-only on this node; send it "
                    f"over TCP, or list {principal.address} in security.udp_writers")
        return f"{action.verb} needs the {action.needs.label} role; {who} is {role.label}"

    def _emit(self, principal: Principal, action: Action, role: Role, outcome: str,
              reason: str) -> None:
        # Positional: keyword arguments cost a state change a fifth more (docs/adr/0200).
        # Order: node, outcome, verb, target, who, address, via, transport, role, detail,
        # reason.
        event = AuditEvent(self.node, outcome, action.verb, action.target, principal.who,
                           principal.address, principal.via, principal.transport, role.label,
                           action.detail, reason)
        self.recent.append(event)
        level = logging.WARNING if outcome in (REFUSED, FAILED) else logging.INFO
        if audit_log.isEnabledFor(level):  # the record is built only if the level is on
            audit_log.log(level, "%s", event)
        if not self._sinks:
            return
        for sink in tuple(self._sinks):
            try:
                sink(event)
            except Exception:  # a broken sink must not break the request
                log.exception("audit sink %r failed", sink)

