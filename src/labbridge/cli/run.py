"""``labbridge run SCRIPT.py --lab CONFIG``: run an extraction script with live progress."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from labbridge.cli.common import (
    fail_on_config_error,
    fail_on_start_error,
    logs_above,
    node_file,
    run_async,
)
from labbridge.node.lab import Lab, ScriptError, Step, run_script_main
from labbridge.node.node import Node, build_node


def load_script(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"labbridge_script_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise click.ClickException(f"{path}: {type(exc).__name__}: {exc}") from None
    main = getattr(module, "main", None)
    if main is None or not callable(main):
        raise click.ClickException(f"{path} defines no main(lab) function")
    return main


def render(lab: Lab, title: str) -> Group:
    steps = Table(title=title, expand=False, show_edge=False)
    for col in ("", "step", "time", "detail"):
        steps.add_column(col)
    now = time.monotonic()
    for s in lab.steps[-15:]:
        mark = "…" if s.ok is None else ("[green]✓[/]" if s.ok else "[red]✗[/]")
        dt = (s.ended or now) - s.started
        steps.add_row(mark, s.what, f"{dt:5.2f} s", s.detail)
    valves = Table(title="valves", expand=False, show_edge=False)
    names: list[str] = []
    for mgr in lab.line._managers:
        names.extend(sorted(mgr.monitor.valves))
    for n in names:
        valves.add_column(n)
    if names:
        valves.add_row(*("[green]open[/]" if lab.line.is_open(n) else "closed" for n in names))
    return Group(steps, valves)


async def wait_ready(node: Node, timeout: float) -> None:
    """Wait until every remote manager has read its node once (or time out, and say so)."""
    services: list[Any] = [s for s in node.services if hasattr(s, "monitor")]
    if not services:
        return
    try:
        async with asyncio.timeout(timeout):  # not wait_for: 3.11 can lose a cancellation
            await asyncio.gather(*(s.monitor.wait_synced() for s in services))
    except TimeoutError:
        down = [f"{s.name} at {s.client.host}:{s.client.port}" for s in services
                if not s.monitor._synced.is_set()]
        raise ScriptError(f"no answer within {timeout:g} s from {', '.join(down)}: start "
                          "that node first (labbridge serve FILE) or fix its host and port in "
                          f"{node.source or 'the lab file'}") from None


async def run_script(node: Node, main: Any, *, console: Console | None, title: str,
                     ready_timeout: float = 10.0) -> int:
    await node.start()
    try:
        await wait_ready(node, ready_timeout)
        live = Live(console=console, auto_refresh=False) if console else None
        holder: list[Lab] = []

        def on_step(step: Step) -> None:
            if live is not None and holder:
                live.update(render(holder[0], title), refresh=True)

        lab = Lab(node, on_step=on_step)
        holder.append(lab)
        if live is not None and console is not None:
            with logs_above(console), live:
                await run_script_main(main, lab)
                live.update(render(lab, title), refresh=True)
        else:
            await run_script_main(main, lab)
        return 0
    finally:
        await node.stop()


@click.command("run")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.option("--lab", "lab_config", required=True, type=click.Path(),
              help="The acquisition node file (remote managers of the lab's nodes).")
@click.option("--no-progress", is_flag=True, help="Plain log lines instead of a live display.")
@click.option("--ready-timeout", type=float, default=10.0, show_default=True)
def run_cmd(script: str, lab_config: str, no_progress: bool, ready_timeout: float) -> None:
    """Run SCRIPT.py's main(lab) against the lab described by --lab."""
    main = load_script(Path(script))
    node_file(lab_config)
    with fail_on_config_error():
        node = build_node(lab_config)
    console = None if no_progress else Console()

    def on_step(step: Step) -> None:  # plain mode
        if step.ok is not None:
            click.echo(f"{'ok  ' if step.ok else 'FAIL'} {step.what} {step.detail}".rstrip())

    async def _main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        if console is None:
            await node.start()
            try:
                await wait_ready(node, ready_timeout)
                await run_script_main(main, Lab(node, on_step=on_step))
            finally:
                await node.stop()
            return 0
        return await run_script(node, main, console=console, title=Path(script).name,
                                ready_timeout=ready_timeout)

    try:
        with fail_on_start_error(node.name):
            code = run_async(_main())
    except ScriptError as exc:
        click.echo(f"script failed: {exc}", err=True)
        sys.exit(1)
    except asyncio.CancelledError:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code)


def register(group: click.Group) -> None:
    group.add_command(run_cmd)
