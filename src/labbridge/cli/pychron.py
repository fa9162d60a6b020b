"""``labbridge call`` and ``labbridge monitor``: talk to a Pychron-family command server.

``--tls-ca CA --tls-cert CERT --tls-key KEY`` talk TLS to a command server whose node file
has a ``tls`` section: CA is the site CA (the server's certificate must be signed by it and
name the host connected to), CERT/KEY are this client's certificate (its common name is the
identity the node gives a role). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from labbridge.cli.common import parse_hostport, run_async
from labbridge.links.pychron.client import PychronClient, PychronClientError
from labbridge.links.pychron.monitor import StatusMonitor, ValveView
from labbridge.links.pychron.remote import RemoteValves
from labbridge.protocol.base import ProtocolError

FRAMINGS = ("braced", "plain", "json")


def tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--tls-ca``, ``--tls-cert``, ``--tls-key``: the client side of the braced channel's
    TLS (docs/security.md)."""
    for opt in reversed((
        click.option("--tls-ca", type=click.Path(dir_okay=False),
                     help="Talk TLS; trust server certificates signed by this CA "
                          "(`labbridge keys tls-ca`)."),
        click.option("--tls-cert", type=click.Path(dir_okay=False),
                     help="This client's certificate (`labbridge keys tls-cert NAME`); its "
                          "name is the identity the node gives a role."),
        click.option("--tls-key", type=click.Path(dir_okay=False),
                     help="The key of --tls-cert."),
    )):
        fn = opt(fn)
    return fn


def tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The client context the ``--tls-*`` options ask for, or None; a usage error (one line,
    exit 2) when they do not fit together or a file is missing or unusable."""
    if ca is None:
        if cert is not None or key is not None:
            raise click.UsageError("--tls-cert and --tls-key need --tls-ca (the site CA that "
                                   "signed the server's certificate)")
        return None
    if (cert is None) != (key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    from labbridge.transport.tls import TlsConfigError, client_context

    try:
        return client_context(ca, cert, key, check_hostname=True)
    except TlsConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--framing", type=click.Choice(FRAMINGS), default="braced", show_default=True,
              help="braced for labbridge nodes; plain (or json) for real Pychron servers.")
@click.option("--udp", is_flag=True, help="Send one UDP datagram instead of using TCP.")
@click.option("--relay", is_flag=True,
              help="TARGET is a legacy RemoteHardwareServer: decode its F-CRC reply frame "
                   "and check the CRC.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds.")
@tls_options
@click.argument("target")
@click.argument("command", nargs=-1, required=True)
def call(framing: str, udp: bool, relay: bool, timeout: float, tls_ca: str | None,
         tls_cert: str | None, tls_key: str | None, target: str,
         command: tuple[str, ...]) -> None:
    """Send COMMAND to the server at TARGET (HOST:PORT) and print the reply.

    Exit code 0 for a normal reply, 1 for an ERROR reply (``Error:`` from Qtegra too), 2 when
    no reply came (or a relay frame failed its check).
    """
    host, port = parse_hostport(target)
    text = " ".join(command)
    tls = tls_context(tls_ca, tls_cert, tls_key)
    if tls is not None and (udp or relay):
        raise click.UsageError("--tls-* is for a labbridge command server over TCP "
                               "(not with --udp or --relay)")
    client_log = logging.getLogger("labbridge.links.pychron.client")
    if client_log.getEffectiveLevel() > logging.DEBUG:
        # One request, one outcome: the failure is reported below in one line; the client's
        # own "unreachable, backing off" line would only say it twice.
        client_log.setLevel(logging.ERROR)

    async def _main() -> str:
        if relay:
            from labbridge.links.pychron.clients import RelayClient

            async with RelayClient(host, port, udp=udp, timeout=timeout) as rclient:
                return await rclient.ask(text)
        async with PychronClient(host, port, framing=framing,  # type: ignore[arg-type]
                                 udp=udp, timeout=timeout, ssl=tls) as client:
            return await client.ask(text)

    try:
        reply = run_async(_main())
    except (PychronClientError, ProtocolError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(reply)
    if reply[:5].upper() == "ERROR":
        sys.exit(1)


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
@tls_options
@click.argument("target")
def monitor(framing: str, timeout: float, update_period: float, once: bool,
            tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
            target: str) -> None:
    """Live table of the valves on TARGET (HOST:PORT), updated in place."""
    from rich.console import Console
    from rich.live import Live

    host, port = parse_hostport(target)
    tls = tls_context(tls_ca, tls_cert, tls_key)
    console = Console()

    async def _main() -> int:
        client = PychronClient(host, port, framing=framing,  # type: ignore[arg-type]
                               timeout=timeout, ssl=tls)
        changed = asyncio.Event()
        mon = StatusMonitor(RemoteValves(client), update_period=update_period,
                            on_change=lambda old, new: changed.set(),
                            on_status=lambda s, d: changed.set())
        await mon.start()
        try:
            if once:
                done = asyncio.ensure_future(mon.wait_synced())
                try:
                    async with asyncio.timeout(timeout * 3):
                        await done
                except TimeoutError:
                    from rich.markup import escape

                    why = f": {mon.last_error}" if mon.last_error else ""
                    console.print(f"[red]{escape(f'no answer from {target}{why}')}[/]",
                                  highlight=False)
                    return 2
                console.print(_table(mon, target))
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            with Live(_table(mon, target), console=console, auto_refresh=False) as live:
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
