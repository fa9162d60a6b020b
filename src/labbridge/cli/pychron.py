"""``labbridge call`` and ``labbridge monitor``: talk to a Pychron-family command server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys

import click
from rich.table import Table

from labbridge.cli.common import logs_above, parse_hostport, run_async
from labbridge.links.pychron.client import PychronClient, PychronClientError
from labbridge.links.pychron.monitor import StatusMonitor, ValveView
from labbridge.links.pychron.remote import RemoteValves
from labbridge.protocol.base import ProtocolError

FRAMINGS = ("braced", "plain", "json")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--framing", type=click.Choice(FRAMINGS), default="braced", show_default=True,
              help="braced for labbridge nodes; plain (or json) for real Pychron servers.")
@click.option("--udp", is_flag=True, help="Send one UDP datagram instead of using TCP.")
@click.option("--relay", is_flag=True,
              help="TARGET is a legacy RemoteHardwareServer: decode its F-CRC reply frame "
                   "and check the CRC.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds.")
@click.argument("target")
@click.argument("command", nargs=-1, required=True)
def call(framing: str, udp: bool, relay: bool, timeout: float, target: str,
         command: tuple[str, ...]) -> None:
    """Send COMMAND to the server at TARGET (HOST:PORT) and print the reply.

    Exit code 0 for a normal reply, 1 for an ERROR reply (``Error:`` from Qtegra too), 2 when
    no reply came (or a relay frame failed its check).
    """
    host, port = parse_hostport(target)
    text = " ".join(command)
    if command[0] in ("Open", "Close") and len(command) == 1:
        raise click.UsageError(f"{command[0]} needs a valve name, e.g. labbridge call {target} "
                               f"{command[0]} A (nothing was sent)")
    # This command prints its own one-line error; the client's per-attempt warnings would
    # only repeat it.
    logging.getLogger("labbridge.links.pychron.client").setLevel(logging.ERROR)

    async def _main() -> str:
        if relay:
            from labbridge.links.pychron.clients import RelayClient

            async with RelayClient(host, port, udp=udp, timeout=timeout) as rclient:
                return await rclient.ask(text)
        async with PychronClient(host, port, framing=framing,  # type: ignore[arg-type]
                                 udp=udp, timeout=timeout) as client:
            return await client.ask(text)

    try:
        reply = run_async(_main())
    except (PychronClientError, ProtocolError, OSError) as exc:
        click.echo(f"error: {_call_failure(exc, target, text, framing, udp, timeout)}",
                   err=True)
        sys.exit(2)
    click.echo(reply)
    if reply[:5].upper() == "ERROR":
        if (reply.startswith("ERROR 015 ") and framing != "json" and not relay
                and "(" not in reply):
            click.echo("the node's log says why; a labbridge node also puts the reason in the "
                       "reply with --framing json", err=True)
        sys.exit(1)


#: What a braced client sees when the server answers in another framing.
_FRAMING_MISMATCH = ("malformed frame header", "does not start with '{'")


def _call_failure(exc: BaseException, target: str, text: str, framing: str, udp: bool,
                  timeout: float) -> str:
    """One line: what went wrong talking to ``target`` and what to try."""
    from labbridge.links.pychron.client import NoReply, ReplyLost, UnknownCommand, Unreachable

    detail = str(exc)
    # The client prefixes its own repr; the target is named here already.
    detail = re.sub(r"^<PychronClient [^>]*>:\s*", "", detail)
    if isinstance(exc, Unreachable):
        reason = detail.removeprefix("cannot connect: ")
        return (f"cannot connect to {target}: {reason}; is the node running (labbridge serve "
                f"FILE) and is {target.rpartition(':')[2]} its port (labbridge ports FILE)?")
    if framing == "braced" and not udp and any(m in detail for m in _FRAMING_MISMATCH):
        sent = " (it may have acted on it)" if isinstance(exc, ReplyLost) else ""
        return (f"{target} did not answer in labbridge's braced frames{sent}: a real Pychron "
                "server or the Qtegra spectrometer wants --framing plain (or --udp)")
    if isinstance(exc, UnknownCommand):
        return (f"{target} closed the connection without a reply to {text!r}: real Pychron "
                "servers do that for an unknown command (names are case-sensitive), a Qtegra "
                "server for GetData before its first scan")
    if isinstance(exc, ReplyLost):
        return (f"no reply from {target} to {text!r} within {timeout:g} s; it may or may not "
                "have been carried out: read the state before sending it again")
    if isinstance(exc, NoReply):
        return (f"no reply from {target} to {text!r} within {timeout:g} s: the server may "
                "want another framing (--framing plain, --udp) or be busy (--timeout)")
    return f"{target}: {detail}"


def _table(monitor: StatusMonitor, target: str) -> Table:

    table = Table(title=f"valves on {target} — {monitor.status}", expand=False)
    for col in ("valve", "state", "lock", "owner", "source"):
        table.add_column(col)
    for name in sorted(monitor.valves):
        v: ValveView = monitor.valves[name]
        state = "?" if v.state is None else ("[green]open[/]" if v.state else "closed")
        lock = "?" if v.locked is None else ("[yellow]locked[/]" if v.locked else "")
        table.add_row(name, state, lock, v.owner or "", v.source)
    table.caption = (f"polls {monitor.polls}  resyncs {monitor.resyncs}  "
                     f"checksum mismatches {monitor.checksum_mismatches}")
    return table


@click.command()
@click.option("--framing", type=click.Choice(FRAMINGS), default="braced", show_default=True)
@click.option("--timeout", type=float, default=2.0, show_default=True)
@click.option("--update-period", type=float, default=1.0, show_default=True,
              help="Seconds per StatusMonitor tick (states every 3, locks every 5 ticks).")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@click.argument("target")
def monitor(framing: str, timeout: float, update_period: float, once: bool,
            target: str) -> None:
    """Live table of the valves on TARGET (HOST:PORT), updated in place."""
    from rich.console import Console
    from rich.live import Live

    host, port = parse_hostport(target)
    console = Console()

    async def _main() -> int:
        client = PychronClient(host, port, framing=framing,  # type: ignore[arg-type]
                               timeout=timeout)
        changed = asyncio.Event()
        mon = StatusMonitor(RemoteValves(client), update_period=update_period,
                            on_change=lambda old, new: changed.set(),
                            on_status=lambda s, d: changed.set())
        await mon.start()
        try:
            if once:
                try:
                    async with asyncio.timeout(timeout * 3):
                        await mon.wait_synced()
                except TimeoutError:
                    click.echo(f"error: no answer from {target} within {timeout * 3:g} s; is "
                               "the node running (labbridge serve FILE) and is "
                               f"{port} its command port (labbridge ports FILE)?", err=True)
                    return 2
                console.print(_table(mon, target))
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            click.echo(f"monitoring the valves on {target} (Ctrl-C to stop)", err=True)
            with logs_above(console), Live(_table(mon, target), console=console, auto_refresh=False) as live:
                while not stop.is_set():
                    changed.clear()
                    waiter = asyncio.ensure_future(changed.wait())
                    stopper = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({waiter, stopper}, timeout=1.0,
                                       return_when=asyncio.FIRST_COMPLETED)
                    for t in (waiter, stopper):
                        t.cancel()
                    live.update(_table(mon, target), refresh=True)
            return 0
        finally:
            await mon.stop()
            with contextlib.suppress(Exception):
                await client.close()

    sys.exit(run_async(_main()))


def register(group: click.Group) -> None:
    group.add_command(call)
    group.add_command(monitor)
