"""``labbridge serve CONFIG``: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import click

from labbridge.cli.common import fail_on_config_error, fail_on_start_error, node_file, run_async
from labbridge.node.node import build_node, run_node


@click.command()
@click.argument("config", type=click.Path())
@click.option("--host", help="Listen on this address instead of the file's (e.g. 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port of the node's command server (0 = any free port).")
@click.option("--ready-file", type=click.Path(dir_okay=False), envvar="LABBRIDGE_READY_FILE",
              help="Write JSON with every bound service here once all are listening "
                   "(removed again on stop). Default: $LABBRIDGE_READY_FILE.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Where state files live (default: next to the config).")
def serve(config: str, host: str | None, port: int | None, ready_file: str | None,
          state_dir: str | None) -> None:
    """Run the node described by CONFIG until interrupted (Ctrl-C or SIGTERM: exit 0)."""
    node_file(config)
    with fail_on_config_error():
        node = build_node(config, host=host, port=port, state_dir=state_dir)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_node(node, ready_file=ready_file, stop=stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    with fail_on_start_error(node.name):
        run_async(_main())


def register(group: click.Group) -> None:
    group.add_command(serve)
