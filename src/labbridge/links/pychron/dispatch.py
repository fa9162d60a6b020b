"""From request text to reply text: the command table of a Pychron-family server.

A :class:`CommandSet` groups the handlers of one vocabulary (valves, furnace, laser...); a
:class:`Dispatcher` joins several and turns every outcome into exact reply text:
handler results through :func:`render_reply`, :class:`PychronError` as raised, argument
errors as ``ERROR 004``, anything else as ``ERROR 002`` -- a peer always gets an answer
(spec 17, defects 1 and 2).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

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
    """Who sent a request: the peer address (ownership, allow-lists) and the framing used."""

    peer: str
    framing: str = "plain"


Handler = Callable[[Request, Caller], Any]


F = TypeVar("F", bound=Callable[..., Any])


def command(name: str, *, idempotent: bool = False) -> Callable[[F], F]:
    """Mark a method of a :class:`CommandSet` as the handler of command ``name``."""

    def deco(fn: F) -> F:
        fn._pychron_command = name  # type: ignore[attr-defined]
        fn._pychron_idempotent = idempotent  # type: ignore[attr-defined]
        return fn

    return deco


class CommandSet:
    """A vocabulary: methods decorated with :func:`command`."""

    def commands(self) -> dict[str, Handler]:
        out: dict[str, Handler] = {}
        for attr in dir(type(self)):
            fn = getattr(type(self), attr, None)
            name = getattr(fn, "_pychron_command", None)
            if name is not None:
                out[name] = getattr(self, attr)
        return out


class Dispatcher:
    """Routes requests to handlers; every path ends in reply text."""

    def __init__(self, sets: list[CommandSet] | None = None) -> None:
        self._table: dict[str, Handler] = {}
        for s in sets or []:
            self.add(s)

    def add(self, cmdset: CommandSet) -> None:
        for name, fn in cmdset.commands().items():
            if name in self._table:
                raise ValueError(f"command {name!r} is defined twice")
            self._table[name] = fn

    def dispatch(self, text: str, caller: Caller) -> str | Awaitable[str]:
        """Reply text, or an awaitable of it when the handler is asynchronous."""
        try:
            req = parse_request(text)
        except RequestError as exc:
            return exc.reply.text
        fn = self._table.get(req.command)
        if fn is None:
            return error_text(ErrorCode.INVALID_COMMAND, req.command)
        try:
            result = fn(req, caller)
        except Exception as exc:
            return self._error_reply(req, exc)
        if inspect.isawaitable(result):
            return self._finish(req, result)
        return render_reply(result)

    async def _finish(self, req: Request, awaitable: Awaitable[Any]) -> str:
        try:
            return render_reply(await awaitable)
        except Exception as exc:
            return self._error_reply(req, exc)

    def _error_reply(self, req: Request, exc: Exception) -> str:
        if isinstance(exc, PychronError):
            return exc.text
        if isinstance(exc, ValueError | KeyError | TypeError | IndexError):
            log.info("invalid arguments in %r: %s", req.text, exc)
            return error_text(ErrorCode.INVALID_ARGUMENTS, req.command, req.arg_text)
        log.exception("handler of %s failed", req.command)
        return error_text(ErrorCode.FUNC_CALL, exc, req.arg_text)
