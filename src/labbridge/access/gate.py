"""The one place where a node decides whether a request may run, and records what happened.

Every link hands the gate the :class:`~labbridge.access.model.Principal` that asked and the
:class:`~labbridge.access.model.Action` it wants to carry out, before calling a device. The
gate asks the node's :class:`~labbridge.access.policy.Policy`, refuses with a reason fit for
the peer (the link wraps it in its protocol's own error), and writes every refusal and every
state change to the audit trail: a line in the node log (logger ``labbridge.audit``) and an
:class:`~labbridge.access.model.AuditEvent` for each sink (the bus publisher, the web page).
Reads are checked but not audited.
"""

from __future__ import annotations

import logging
from collections import deque
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

    def __init__(self, policy: Policy | None = None, node: str = "",
                 history: int = 1000) -> None:
        self.policy = policy if policy is not None else Policy.default()
        self.node = node
        self._sinks: list[AuditSink] = []
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
        self.refusals += 1
        self._emit(principal, action, role, REFUSED, reason)
        raise AccessDenied(principal, action, role, reason)

    def refuse(self, principal: Principal, action: Action, reason: str) -> AccessDenied:
        """Audit a refusal decided by a service's own filter (an ``allow:`` list, a bad
        credential) and return the :class:`AccessDenied` to raise or report."""
        self.refusals += 1
        self._emit(principal, action, Role.NOBODY, REFUSED, reason)
        return AccessDenied(principal, action, Role.NOBODY, reason)

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
        event = AuditEvent(node=self.node, outcome=outcome, verb=action.verb,
                           target=action.target, who=principal.who, address=principal.address,
                           via=principal.via, transport=principal.transport, role=role.label,
                           detail=action.detail, reason=reason)
        self.recent.append(event)
        level = logging.WARNING if outcome == REFUSED else logging.INFO
        audit_log.log(level, "%s", event.line())
        for sink in tuple(self._sinks):
            try:
                sink(event)
            except Exception:  # a broken sink must not break the request
                log.exception("audit sink %r failed", sink)

