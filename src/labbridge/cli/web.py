"""``labbridge dashboard CONFIG``: run a node whose file has a ``web_dashboard`` service and
print the page's URL (issue 8 item 5; docs/web.md).

It runs the node exactly as ``labbridge serve`` does (:func:`~labbridge.node.node.run_node`:
the ready file exists only while the node serves) and prints each dashboard's URL once
everything listens.
"""

from __future__ import annotations

import asyncio
import signal

import click

from labbridge.cli.common import fail_on_config_error, run_async
from labbridge.node.node import Node, build_node, run_node


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--host", help="Listen on this address instead of the file's (e.g. 0.0.0.0).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port of the web page (0 = any free port; the URL is printed).")
@click.option("--ready-file", type=click.Path(dir_okay=False), envvar="LABBRIDGE_READY_FILE",
              help="Write JSON with every bound service here once all are listening "
                   "(removed again on stop). Default: $LABBRIDGE_READY_FILE.")
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

    def print_urls(_: Node) -> None:
        for w in webs:
            click.echo(f"dashboard {w.name}: {w.url}")

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_node(node, ready_file=ready_file, stop=stop, on_ready=print_urls)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        run_async(_main())
    except OSError as exc:  # the page's port in use, an address not on this machine...
        raise click.ClickException(f"cannot start node {node.name}: {exc}") from None


def register(group: click.Group) -> None:
    group.add_command(dashboard)
