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
import re
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.table import Table

from labbridge.cli.common import logs_above, parse_hostport, run_async
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
    if command[0] in ("Open", "Close") and len(command) == 1:
        raise click.UsageError(f"{command[0]} needs a valve name, e.g. labbridge call {target} "
                               f"{command[0]} A (nothing was sent)")
    tls = tls_context(tls_ca, tls_cert, tls_key)
    if tls is not None and (udp or relay):
        raise click.UsageError("--tls-* is for a labbridge command server over TCP "
                               "(not with --udp or --relay)")
    client_log = logging.getLogger("labbridge.links.pychron.client")
    if client_log.getEffectiveLevel() > logging.DEBUG:
        # One request, one outcome: the failure is reported below in one line; the client's
        # own per-attempt lines ("unreachable, backing off") would only say it again.
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
                try:
                    async with asyncio.timeout(timeout * 3):
                        await mon.wait_synced()
                except TimeoutError:
                    why = f" ({mon.last_error})" if mon.last_error else ""
                    click.echo(f"error: no answer from {target} within {timeout * 3:g} s{why}; "
                               "is the node running (labbridge serve FILE) and is "
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
