"""``labbridge dashboard CONFIG``: run a node whose file has a ``web_dashboard`` service and
print the page's URL (issue 8 item 5; docs/web.md)."""

from __future__ import annotations

import asyncio
import signal

import click

from labbridge.cli.common import fail_on_config_error, run_async
from labbridge.node.node import build_node


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", help="Listen on this address instead of the file's (e.g. 0.0.0.0).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port of the web page (0 = any free port; the URL is printed).")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Write JSON with every bound service here once all are listening.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where state files live (default: next to the config).")
def dashboard(config: str, host: str | None, port: int | None, ready_file: str | None,
              state_dir: str | None) -> None:
    """Serve the live web dashboard described by CONFIG until interrupted."""
    try:
        from labbridge.node.kinds.web import WebDashboardService
    except ModuleNotFoundError as exc:
        raise click.ClickException(f"the web dashboard is not installed: {exc}") from None
    with fail_on_config_error():
        node = build_node(config, host=host, state_dir=state_dir)
    webs = [s for s in node.services if isinstance(s, WebDashboardService)]
    if not webs:
        raise click.ClickException(f"{config}: no service of kind web_dashboard in this node "
                                   "file (see examples/dashboard-web.yaml)")
    if port is not None:
        webs[0].dashboard.config.port = port

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        try:
            await node.start()
            try:
                if ready_file:
                    node.write_ready_file(ready_file)
                for w in webs:
                    click.echo(f"dashboard {w.name}: {w.url}")
                await stop.wait()
            finally:
                await node.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    run_async(_main())


def register(group: click.Group) -> None:
    group.add_command(dashboard)
