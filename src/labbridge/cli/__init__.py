"""The ``labbridge`` command line.

Each family adds its subcommands in its own module (``labbridge.cli.<name>``) and lists it in
``_COMMAND_MODULES``; every module exposes ``register(group)``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from labbridge import __version__

_COMMAND_MODULES = (
    "labbridge.cli.serve",
    "labbridge.cli.bus",
    "labbridge.cli.pychron",
    "labbridge.cli.node",
    "labbridge.cli.run",
    "labbridge.cli.demo",
    "labbridge.cli.pymodaq",
    "labbridge.cli.rotator",
    "labbridge.cli.web",
)

LOG_LEVELS = ("debug", "info", "warning", "error")


class _Formatter(logging.Formatter):
    """One line per record: time, level, logger, message, then key=value extras."""

    def format(self, record: logging.LogRecord) -> str:
        base = (f"{self.formatTime(record, '%H:%M:%S')}.{int(record.msecs):03d} "
                f"{record.levelname.lower():7s} {record.name}: {record.getMessage()}")
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labbridge")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              envvar="LABBRIDGE_LOG_LEVEL", help="Logging level (logs go to stderr).")
def cli(log_level: str) -> None:
    """labbridge: drive instruments on one computer from an experiment on another."""
    setup_logging(log_level)


def _load_commands() -> None:
    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue  # a family that is not installed: its commands are absent
        module.register(cli)


_load_commands()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="labbridge",
                 standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
