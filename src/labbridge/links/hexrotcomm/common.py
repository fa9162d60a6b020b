"""Pieces shared by both generations of the hexapod/rotator link."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from labbridge.protocol.hexrotcomm.structs import ErrorCode
from labbridge.transport.one_client import OneClientServer

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
REPLACE_IDLE_AFTER = 10.0


class ReplacingOneClientServer(OneClientServer):
    """A :class:`OneClientServer` that replaces an idle client when a new one arrives.

    Issue 13: one silent connection must not lock out the real peer of a one-client server.
    When a connection arrives while a client is connected, the current client is closed and
    the newcomer served if the current one has been idle for ``replace_idle_after`` seconds
    (None: never; the upstream rule of §6.2 #3, reject the newcomer); one log line says so.
    Otherwise the newcomer is refused as before.

    "Idle" is what ``idle_for(newcomer)`` says: by default the time since the client connected
    or last sent bytes (the owner calls :meth:`touch` when it receives some). The gen-A command
    socket, where the controller only reads, passes a rule that looks at its telemetry socket.

    Seam: ``transport.one_client.OneClientServer`` is getting the same policy (helper
    ``servers``, issue 13); once it has it, this subclass should go and the option be passed
    through. It overrides only the two accept paths.
    """

    def __init__(self, *args: Any, replace_idle_after: float | None = None,
                 idle_for: Callable[[str], float] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.replace_idle_after = replace_idle_after
        self._idle_for = idle_for or (lambda newcomer: self.idle_seconds())
        self._last_activity = time.monotonic()
        #: When the current client connected (``time.monotonic()``).
        self.connected_at = self._last_activity
        self.replaced_count = 0

    def touch(self) -> None:
        """The current client sent something."""
        self._last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the current client connected or last sent bytes."""
        return time.monotonic() - self._last_activity

    def _should_replace(self, newcomer: str) -> bool:
        if self.replace_idle_after is None or not self.connected:
            return False
        idle = self._idle_for(newcomer)
        if idle < self.replace_idle_after:
            return False
        self.replaced_count += 1
        self.log.warning("%s: replacing client %s (idle for %.1f s, limit %.1f s) by %s",
                         self.name, self.peer, idle, self.replace_idle_after, newcomer)
        return True

    def _gate_made(self, gate: Any) -> bool:  # protocol mode
        if self._gate is not None and self._should_replace(_peer(gate.transport)):
            old = self._gate
            old.transport.abort()
            self._gate_lost(old, "replaced: idle")
        accepted = super()._gate_made(gate)
        if accepted:
            self.touch()
            self.connected_at = self._last_activity
        return accepted

    async def _on_accept(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:  # stream mode
        if self._writer is not None and self._should_replace(_peer(writer)):
            await self.close_client()
        if not self.connected:
            self.touch()
            self.connected_at = self._last_activity
        await super()._on_accept(reader, writer)


def _peer(obj: Any) -> str:
    peer = obj.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
