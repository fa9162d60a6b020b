"""Helpers shared by the subcommands."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import click

from labbridge.node.config import ConfigError

T = TypeVar("T")


@contextlib.contextmanager
def fail_on_config_error() -> Iterator[None]:
    """Turn a :class:`ConfigError` into a clean one-line CLI error (exit code 2)."""
    try:
        yield
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on one event loop for the process (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) to a tuple; clear error when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise click.BadParameter(f"expected HOST:PORT, got {text!r}")
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise click.BadParameter(f"port must be a number in {text!r}") from None
    if not 0 < p < 65536:
        raise click.BadParameter(f"port out of range in {text!r}")
    return host, p
