"""``labbridge serve CONFIG``: run a node until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import faulthandler
import linecache
import signal
import sys
from typing import Any

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
    """Run the node described by CONFIG until interrupted (Ctrl-C or SIGTERM: exit 0).

    SIGUSR1 writes the stack of every Python thread, then of every asyncio task, to stderr
    (the node's log) and the node goes on: what a node that seems stuck is doing, without
    stopping it. The threads come even when the event loop is blocked.
    """
    node_file(config)
    with fail_on_config_error():
        node = build_node(config, host=host, port=port, state_dir=state_dir)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        dump = getattr(signal, "SIGUSR1", None)
        if dump is not None:
            # The loop's handler first, then faulthandler over it: the threads are written
            # from the signal handler itself, then the loop (if it runs) writes the tasks.
            loop.add_signal_handler(dump, _write_tasks)
            faulthandler.register(dump, file=sys.stderr, all_threads=True, chain=True)
        try:
            await run_node(node, ready_file=ready_file, stop=stop)
        finally:
            if dump is not None:
                faulthandler.unregister(dump)
                loop.remove_signal_handler(dump)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    with fail_on_start_error(node.name):
        run_async(_main())


def _write_tasks() -> None:
    """Every asyncio task's await chain to stderr (the second half of a SIGUSR1 dump): each
    coroutine the task is waiting in, outermost first, down to what it awaits now."""
    tasks = asyncio.all_tasks()
    out = [f"asyncio tasks: {len(tasks)}"]
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.append(f"Task {task.get_name()!r} (outermost first):")
        obj: Any = task.get_coro()
        for _ in range(64):  # an await chain is short; never loop on a strange object
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) \
                or getattr(obj, "ag_frame", None)
            if frame is None:
                if obj is not None:
                    out.append(f"  awaiting {obj!r:.200}")
                break
            code = frame.f_code
            out.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
            line = linecache.getline(code.co_filename, frame.f_lineno).strip()
            if line:
                out.append(f"    {line}")
            obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) \
                or getattr(obj, "ag_await", None)
    print("\n".join(out), file=sys.stderr, flush=True)


def register(group: click.Group) -> None:
    group.add_command(serve)
