"""Control actions from the page, sent to the nodes' Pychron command servers (issue 8 item 3;
ADR 0072).

The web app never touches a device itself: a valve is opened the way an acquisition computer
opens it (seed 002 call chain), through :class:`~labbridge.links.pychron.remote.RemoteValves`
on the node's command server, so the node's own software locks, interlocks and ownership
checks decide. The outcome is turned into a :class:`ControlResult` the page can show:

* ``done``: the node actuated and the indicator confirms it;
* ``refused``: the node said no (``ERROR 015`` for ownership / interlock / hardware, or the
  lowercase ``ok`` a software-locked valve answers: nothing moved) -- ``reason`` says why;
* ``error``: the node could not be asked (unreachable, no reply, reply lost).

An actuation whose reply is lost is never re-sent (ADR 0005): the state is read back and the
result says what is known.
"""

from __future__ import annotations

import logging
import math
import ssl
from dataclasses import dataclass, field
from typing import Any

from labbridge.links.pychron.client import (
    ErrorReply,
    PychronClient,
    PychronClientError,
    ReplyLost,
)
from labbridge.links.pychron.remote import ActuationError, ActuationUncertain, RemoteValves
from labbridge.protocol.pychron.messages import format_request

log = logging.getLogger(__name__)

DONE = "done"
REFUSED = "refused"
ERROR = "error"


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What happened to one control action; JSON for the page."""

    outcome: str
    action: str
    target: str
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == DONE

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "outcome": self.outcome, "action": self.action,
                "target": self.target, "reason": self.reason, **self.detail}


@dataclass
class CommandTarget:
    """One node's command server."""

    node: str
    host: str
    port: int
    timeout: float = 3.0
    client: PychronClient | None = None
    #: TLS client context when the node's command server speaks TLS (docs/security.md).
    tls: ssl.SSLContext | None = None

    def remote(self) -> RemoteValves:
        if self.client is None:
            self.client = PychronClient(self.host, self.port, timeout=self.timeout, retries=1,
                                        ssl=self.tls)
        return RemoteValves(self.client)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class Controls:
    """Command-server clients by node name."""

    def __init__(self, targets: list[CommandTarget]) -> None:
        self.targets = {t.node: t for t in targets}

    def has(self, node: str) -> bool:
        return node in self.targets

    async def close(self) -> None:
        for t in self.targets.values():
            await t.close()

    async def read_valves(self, node: str) -> dict[str, dict[str, Any]]:
        """``{valve: {state, locked, owner}}`` read from the node (initial state, resync)."""
        rv = self.targets[node].remote()
        states = await rv.states()
        locks = await rv.locks()
        try:
            owners = await rv.owners()
        except ErrorReply:
            owners = {}
        return {n: {"state": s, "locked": locks.get(n, False), "owner": owners.get(n, "")}
                for n, s in states.items()}

    async def valve(self, node: str, valve: str, action: str) -> ControlResult:
        target = f"{node}/{valve}"
        t = self.targets.get(node)
        if t is None:
            return ControlResult(REFUSED, action, target,
                                 f"no command server configured for node {node!r}")
        if action not in ("open", "close"):
            return ControlResult(REFUSED, action, target, f"unknown action {action!r}")
        rv = t.remote()
        try:
            act = await (rv.open(valve) if action == "open" else rv.close(valve))
        except ActuationUncertain as exc:
            return ControlResult(ERROR, action, target, str(exc),
                                 {"state": None if exc.observed is None else
                                  ("open" if exc.observed else "closed")})
        except ActuationError as exc:
            return ControlResult(REFUSED, action, target, _node_reason(str(exc)))
        except ReplyLost as exc:  # pragma: no cover - RemoteValves turns it into Uncertain
            return ControlResult(ERROR, action, target, str(exc))
        except PychronClientError as exc:
            return ControlResult(ERROR, action, target, f"{node} command server: {exc}")
        except OSError as exc:
            return ControlResult(ERROR, action, target, f"{node} command server: {exc}")
        state = "open" if act.state else "closed"
        if act.locked:
            return ControlResult(
                REFUSED, action, target,
                f"valve {valve} is software-locked on {node}: nothing moved "
                f"(it stays {state}; unlock it on the node first)",
                {"state": state, "locked": True})
        return ControlResult(DONE, action, target, "", {"state": state})

    async def setpoint(self, node: str, device: str, value: float) -> ControlResult:
        target = f"{node}/{device}" if device else node
        t = self.targets.get(node)
        if t is None:
            return ControlResult(REFUSED, "setpoint", target,
                                 f"no command server configured for node {node!r}")
        if not math.isfinite(value):
            return ControlResult(REFUSED, "setpoint", target, "the setpoint must be a number")
        if t.client is None:
            t.remote()
        assert t.client is not None
        try:
            reply = await t.client.call(format_request("SetSetpoint", f"{value:g}"))
        except ErrorReply as exc:
            return ControlResult(REFUSED, "setpoint", target, _node_reason(str(exc)))
        except (PychronClientError, OSError) as exc:
            return ControlResult(ERROR, "setpoint", target, f"{node} command server: {exc}")
        return ControlResult(DONE, "setpoint", target, "", {"value": value, "reply": reply})


def _node_reason(text: str) -> str:
    """The node's error reply, prefixed so the page says who refused."""
    return f"the node refused: {text}"
