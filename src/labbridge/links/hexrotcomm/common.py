"""Pieces shared by both generations of the hexapod/rotator link."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from labbridge.protocol.hexrotcomm.structs import ErrorCode

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
