"""The notifier's REP request/reply vocabulary (spec pychron.md §13, §17 #14).

A request is one frame of UTF-8 text: a name, optionally a space and an argument string.
``ping`` is answered ``echo``; a registered name by its handler; **every other request gets an
error reply** so a REP socket can never be left waiting for a reply that is never sent (the
real notifier wedges there). The exact reply strings are built here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from labbridge.protocol.telemetry.envelope import Buffer

PING: Final = "ping"
ECHO: Final = b"echo"
#: Longest request accepted (longer ones get an error reply; ZeroMQ MAXMSGSIZE also caps).
MAX_REQUEST: Final = 65536


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    args: str = ""


class BadRequest(Exception):
    """The request cannot be parsed; ``reply`` is what to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reply = error_reply(reason)


def parse_request(frames: Sequence[Buffer]) -> Request:
    """Parse the frames of one REP request, or raise :class:`BadRequest`."""
    if len(frames) != 1:
        raise BadRequest(f"expected a one-frame request, got {len(frames)} frames")
    mv = memoryview(frames[0])
    if mv.nbytes > MAX_REQUEST:
        raise BadRequest(f"request of {mv.nbytes} bytes exceeds {MAX_REQUEST}")
    try:
        text = bytes(mv).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8 text") from None
    if not text:
        raise BadRequest("empty request")
    name, _, args = text.partition(" ")
    return Request(name, args.strip())


def error_reply(reason: str) -> bytes:
    """``error <reason>`` (one line)."""
    return ("error " + " ".join(reason.split())).encode("utf-8")


def unknown_reply(name: str) -> bytes:
    """``error unknown request <name>`` [lb]."""
    return error_reply(f"unknown request {name}")


def exception_reply(exc: BaseException) -> bytes:
    """``error <exception text>`` [lb]; the exception type when it has no text."""
    return error_reply(str(exc) or type(exc).__name__)
