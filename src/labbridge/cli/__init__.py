"""The ``labbridge`` command line.

Each family adds its subcommands in its own module (``labbridge.cli.<name>``) that exposes
``register(group)``, and lists the command names here in ``COMMANDS``. A module is imported
only when one of its commands runs (or ``--help`` lists them all): ``labbridge serve`` does not
pay for the imports of every other command, which matters when the demo starts eight nodes.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from labbridge import __version__

#: Command name -> the module whose ``register(group)`` adds it.
COMMANDS = {
    "serve": "labbridge.cli.serve",
    "record": "labbridge.cli.bus",
    "history": "labbridge.cli.bus",
    "watch": "labbridge.cli.bus",
    "call": "labbridge.cli.pychron",
    "monitor": "labbridge.cli.pychron",
    "check": "labbridge.cli.node",
    "ports": "labbridge.cli.node",
    "run": "labbridge.cli.run",
    "demo": "labbridge.cli.demo",
    "grab": "labbridge.cli.pymodaq",
    "rotator": "labbridge.cli.rotator",
    "dashboard": "labbridge.cli.web",
    "keys": "labbridge.cli.keys",
}


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use, from :data:`COMMANDS`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        module = COMMANDS.get(cmd_name)
        if command is None and module is not None and module not in self._loaded:
            self._loaded.add(module)
            try:
                importlib.import_module(module).register(self)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
                return None  # a family that is not installed: its commands are absent
            command = super().get_command(ctx, cmd_name)
        return command


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


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labbridge")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True,
              envvar="LABBRIDGE_LOG_LEVEL", help="Logging level (logs go to stderr).")
def cli(log_level: str) -> None:
    """labbridge: drive instruments on one computer from an experiment on another."""
    setup_logging(log_level)


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
