"""The ``labbridge`` command line.

Each family adds its subcommands in its own module (``labbridge.cli.<name>``) that exposes
``register(group)``, and lists the command names here in ``COMMANDS``. A module is imported
only when one of its commands runs (or ``--help`` lists them all): ``labbridge serve`` does not
pay for the imports of every other command, which matters when the demo starts eight nodes.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
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
    "hexapod": "labbridge.cli.rotator",
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

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f"did you mean '{close[0]}'?" if close else \
                f"the commands are: {', '.join(self.list_commands(ctx))}"
            ctx.fail(f"no such command '{name}'; {hint}")
        return super().resolve_command(ctx, args)


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
    """Entry point of the console script; returns the exit code.

    Every failure a user can cause ends here as ONE line on stderr naming the cause and what to
    do, with a non-zero exit code: usage errors (a mistyped command or option: 2), clean
    command errors (1), and, as a last resort, an unexpected exception (1; the traceback only
    with ``LABBRIDGE_TRACEBACK=1``).
    """
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="labbridge",
                 standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "labbridge"
        click.echo(f"Error: {_one_line(exc.format_message())} (see '{where} --help')",
                   err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("LABBRIDGE_TRACEBACK"):
            raise
        if _is_user_error(exc):  # a command that did not catch it itself
            logging.getLogger("labbridge.cli").debug("error", exc_info=True)
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            return 1
        if isinstance(exc, OSError):  # a port in use, an address not here, a file...
            from labbridge.node.node import start_hint

            logging.getLogger("labbridge.cli").debug("error", exc_info=True)
            hint = start_hint(exc)
            click.echo(f"Error: {_one_line(exc.strerror or str(exc))}"
                       + (f"; {hint}" if hint else ""), err=True)
            return 1
        logging.getLogger("labbridge.cli").debug("unexpected error", exc_info=True)
        click.echo(f"Error: internal error: {type(exc).__name__}: {_one_line(str(exc))}; "
                   "this is a bug in labbridge, please report it (LABBRIDGE_TRACEBACK=1 "
                   "shows the traceback)", err=True)
        return 1
    return 0


def _is_user_error(exc: BaseException) -> bool:
    """A node that cannot start or a configuration mistake: the message says it all."""
    node = sys.modules.get("labbridge.node.node")
    config = sys.modules.get("labbridge.node.config")
    kinds = tuple(k for k in (getattr(node, "StartError", None),
                              getattr(config, "ConfigError", None)) if k is not None)
    return bool(kinds) and isinstance(exc, kinds)


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
