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

    async def _on_accept(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        if self.connected and not self._closing:
            newcomer = _peer(writer)
            idle = self._stale(newcomer)
            if idle is not None:
                self.replaced_count += 1
                self.log.warning("%s: client %s is not the controller's command socket (stale "
                                 "for %.1f s); replacing it with %s", self.name, self.peer,
                                 idle, newcomer)
                await self.close_client()
        was = self._writer
        await super()._on_accept(reader, writer)
        if self._writer is not was and self._writer is writer:
            self.connected_at = time.monotonic()


def _peer(obj: Any) -> str:
    peer = obj.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
