"""Helpers shared by the subcommands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from labbridge.node.config import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")

log = logging.getLogger("labbridge.cli")


@contextlib.contextmanager
def fail_on_config_error() -> Iterator[None]:
    """Turn a :class:`ConfigError` into a clean one-line CLI error (exit code 1)."""
    try:
        yield
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@contextlib.contextmanager
def fail_on_start_error(node: str) -> Iterator[None]:
    """Turn a failure to start a node (port in use, address not on this machine, bus endpoint
    that cannot be bound, ready file that cannot be written) into one line, exit code 1.

    The traceback goes to the log at debug level (``labbridge --log-level debug ...``).
    """
    from labbridge.node.node import StartError, start_hint

    try:
        yield
    except StartError as exc:
        log.debug("start failed", exc_info=exc.cause)
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        log.debug("start failed", exc_info=True)
        text = " ".join((exc.strerror or str(exc)).split())
        hint = start_hint(exc)
        raise click.ClickException(f"cannot start node {node}: {text}"
                                   + (f"; {hint}" if hint else "")) from None


_OTHER_KINDS = {
    "dashboard": ("a dashboard values file (what a dashboard_server samples)",
                  "name it in a node's dashboard_server service (config: {name}); "
                  "examples/dashboard-web.yaml is a node that does"),
    "device": ("a device file (an acquisition computer's link to one remote node)",
               "name it in a remote_manager service (device_file: {name}); "
               "examples/lab/acquisition.yaml is a node that does"),
    "server": ("a command-server file (host and port)",
               "put host and port in a pychron_command_server service of a node file"),
    "initialization": ("an initialization.xml (the seed's plugin list)",
                       "name it in a node file (initialization: {name}); "
                       "examples/lab/valve-controller.yaml is a node that does"),
}


def node_file(path: str) -> Path:
    """``path`` as a node file, or a one-line error saying what it is and what to do."""
    p = Path(path)
    if not p.exists():
        raise click.ClickException(f"{path}: no such file; check the path (the example "
                                   "nodes are examples/*.yaml in the labbridge repository)")
    if p.is_dir():
        raise click.ClickException(f"{path} is a directory; give a node file (YAML with "
                                   "node:, devices: and services:)")
    from labbridge.node.seed import detect_kind

    try:
        kind = detect_kind(p)
    except ConfigError:
        return p  # the node builder reports it with file, line and field
    if kind == "dashboard" and _looks_like_node(p):
        return p  # a node file without `node:`: "node: required field is missing" says it
    if kind in _OTHER_KINDS:
        what, todo = _OTHER_KINDS[kind]
        raise click.ClickException(f"{path} is {what}, not a node file: "
                                   + todo.format(name=p.name))
    return p


def _looks_like_node(p: Path) -> bool:
    from labbridge.node.config import load_yaml

    data = load_yaml(p)
    if not isinstance(data, dict):
        return False
    if "services" in data:
        return True
    devices = data.get("devices")
    return isinstance(devices, list) and any(isinstance(d, dict) and "kind" in d
                                             for d in devices)


@contextlib.contextmanager
def logs_above(console: Console) -> Iterator[None]:
    """While a rich ``Live`` display is up, print log records through its console (above the
    display) instead of writing them to stderr underneath it, where they tear the display.

    The root logger's handlers are swapped for one that keeps their formatter and level, and
    put back afterwards.
    """
    root = logging.getLogger()
    saved = list(root.handlers)
    formatter = saved[0].formatter if saved else None

    class _ThroughConsole(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                console.print(self.format(record), markup=False, highlight=False,
                              soft_wrap=True)
            except Exception:  # pragma: no cover - logging must never raise
                self.handleError(record)

    handler = _ThroughConsole()
    if formatter is not None:
        handler.setFormatter(formatter)
    for h in saved:
        root.removeHandler(h)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in saved:
            root.addHandler(h)


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
            raise click.BadParameter(f"expected HOST:PORT, e.g. 127.0.0.1:1061; got {text!r}",
                                     param_hint="'TARGET'")
        host, port = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise click.BadParameter(f"the port must be a number in {text!r} (HOST:PORT)",
                                 param_hint="'TARGET'") from None
    if not 0 < p < 65536:
        raise click.BadParameter(f"the port must be 1 to 65535 in {text!r}",
                                 param_hint="'TARGET'") from None
    return host, p
