"""Bus commands: ``labbridge record``, ``labbridge history``, ``labbridge watch`` (docs/bus.md).

* ``record ENDPOINT... --db FILE [--topic T]...``: store every message in SQLite until
  interrupted (or ``--count``/``--duration``), then print what was stored and lost.
* ``history TOPIC --db FILE --since 1h [--png out.png]``: print (or plot) a recorded signal.
* ``watch ENDPOINT [TOPIC...]``: a live, filtered, readable view of a bus.

``record`` and ``watch`` reach a bus with Curve through ``--server-key`` (the node's public
key: its NAME.key, or the key itself) and ``--client-key`` (our NAME.key_secret, mode 600);
``history`` shows a node's audit trail (topic ``<node>.audit``) one event per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from labbridge.access import AuditEvent
from labbridge.bus.auth import ClientKeys, KeyFileError, read_public_key, read_secret_key
from labbridge.bus.recorder import GapRecord, Record, Recorder, RecordStore
from labbridge.bus.sockets import BusError, normalize_endpoint
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.cli.common import run_async
from labbridge.devices.state_file import write_json_atomic
from labbridge.protocol.telemetry.sequence import Gap

DEFAULT_DB = "labbridge-bus.sqlite"
_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time: ``now``, a duration ago (``90s``, ``10m``, ``2h``, ``1d``), an ISO 8601
    date/time (local time unless it has an offset) or Unix seconds (``@1700000000``)."""
    now = time.time() if now is None else now
    t = text.strip()
    if t == "now":
        return now
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            raise click.BadParameter(f"bad Unix time {text!r}") from None
    m = _REL.match(t)
    if m and m.group(2) is not None:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        if m:  # a bare number: seconds ago
            return now - float(m.group(1))
        raise click.BadParameter(
            f"cannot read {text!r} as a time: use now, 10m, 2h, 1d, @<unix seconds> or an "
            "ISO date like 2026-01-31T12:00") from None
    return when.timestamp()


def _datetime(ts: float) -> dt.datetime | None:
    """Local date and time of a Unix time; None when there is none (NaN, infinite, or out of
    the platform's range: an older recording or a publisher with a broken clock)."""
    try:
        return dt.datetime.fromtimestamp(ts)
    except (OverflowError, OSError, ValueError, TypeError):
        return None


def _stamp(ts: float) -> str:
    when = _datetime(ts)
    return when.isoformat(timespec="milliseconds") if when is not None else f"<time {ts!r}>"


def _short(value: Any, width: int = 200) -> str:
    if isinstance(value, np.ndarray):
        return f"<array {value.dtype} {tuple(value.shape)}>"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                           default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _keys(server_key: str | None, client_key: str | None) -> ClientKeys | None:
    """``--server-key`` and ``--client-key`` (both or neither), read and checked."""
    if server_key is None and client_key is None:
        return None
    if client_key is None:
        raise click.BadParameter("--server-key needs --client-key too: our key pair "
                                 "(NAME.key_secret, made by `labbridge keys curve NAME`)",
                                 param_hint="--client-key")
    if server_key is None:
        raise click.BadParameter("--client-key needs --server-key too: the public key of the "
                                 "node (its NAME.key)", param_hint="--server-key")
    try:
        server = read_public_key(server_key)
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--server-key") from None
    try:
        pair = read_secret_key(client_key)
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--client-key") from None
    return ClientKeys(server, pair)


def _key_options(fn: Any) -> Any:
    fn = click.option("--client-key", metavar="FILE",
                      help="Our Curve key pair (NAME.key_secret, mode 600), for a bus with "
                           "Curve; its public key must be listed by the node.")(fn)
    return click.option("--server-key", metavar="FILE|KEY",
                        help="The node's Curve public key (its NAME.key, or the 40-character "
                             "key), for a bus with Curve.")(fn)


# -- record -------------------------------------------------------------------------------------
@click.command()
@click.argument("endpoints", nargs=-1, required=True)
@click.option("--db", "db", type=click.Path(dir_okay=False), default=DEFAULT_DB,
              show_default=True, help="SQLite file to append to (created if missing).")
@click.option("--topic", "topics", multiple=True,
              help="Topic prefix to record (repeatable; default: everything).")
@click.option("--count", type=click.IntRange(1), help="Stop after this many messages.")
@click.option("--duration", type=click.FloatRange(0, min_open=True),
              help="Stop after this many seconds.")
@click.option("--ready-file", type=click.Path(dir_okay=False), envvar="LABBRIDGE_READY_FILE",
              help="Write JSON here once subscribed (for scripts and tests). Default: "
                   "$LABBRIDGE_READY_FILE.")
@_key_options
def record(endpoints: tuple[str, ...], db: str, topics: tuple[str, ...], count: int | None,
           duration: float | None, ready_file: str | None, server_key: str | None,
           client_key: str | None) -> None:
    """Record every message from ENDPOINT(s) (tcp://host:port or host:port) into SQLite."""
    try:
        urls = [normalize_endpoint(e) for e in endpoints]
    except BusError as exc:
        raise click.BadParameter(str(exc)) from None
    rec = Recorder(db, urls, topics or ("",), curve=_keys(server_key, client_key))
    db_abs = str(Path(db).resolve())

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if count is not None:
            rec.subscriber.add_listener(
                lambda t, p, m: stop.set() if rec.subscriber.received >= count else None)
        await rec.start()
        try:
            if ready_file:
                write_json_atomic(Path(ready_file), {"db": db_abs,
                                                     "endpoints": urls})
            click.echo(f"recording {', '.join(urls)} into {db} (Ctrl-C to stop)", err=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await stop.wait()
        finally:
            await rec.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        click.echo(f"stored {rec.stored} messages; {rec.gap_count} gaps "
                   f"({rec.subscriber.missed} messages missed); {rec.dropped} not stored "
                   "(writing was stuck; recorded as gaps)", err=True)
        if rec.bad_ts:
            click.echo(f"{rec.bad_ts} messages had an implausible source timestamp and were "
                       "stored with the receive time", err=True)
        if rec.lost:
            click.echo(f"{rec.lost} messages lost: writing to {db} failed", err=True)

    try:
        run_async(_main())
    except BusError as exc:  # the recording cannot be opened: one line naming the path
        raise click.ClickException(str(exc)) from None


# -- history ------------------------------------------------------------------------------------
@click.command()
@click.argument("topic")
@click.option("--db", "db", type=click.Path(dir_okay=False), default=DEFAULT_DB,
              show_default=True, help="The recorder's SQLite file.")
@click.option("--since", default=None, help="Start: now, 10m, 2h, 1d, @unix or ISO time.")
@click.option("--until", default=None, help="End (exclusive), same forms as --since.")
@click.option("--prefix", is_flag=True, help="TOPIC is a prefix (a subtree of topics).")
@click.option("--limit", type=click.IntRange(1), help="At most this many messages.")
@click.option("--format", "fmt", type=click.Choice(["text", "csv", "json"]), default="text",
              show_default=True)
@click.option("--png", type=click.Path(dir_okay=False),
              help="Plot the signal into this PNG file (needs the 'plot' extra).")
def history(topic: str, db: str, since: str | None, until: str | None, prefix: bool,
            limit: int | None, fmt: str, png: str | None) -> None:
    """Print or plot the recorded messages of TOPIC."""
    t0 = parse_when(since) if since else None
    t1 = parse_when(until) if until else None
    try:
        store = RecordStore(db, readonly=True)
    except (FileNotFoundError, BusError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        rows = store.query(topic, since=t0, until=t1, prefix=prefix, limit=limit)
        gaps = store.gaps(topic, since=t0, until=t1, prefix=prefix)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the recording {db}: {exc}") from None
    finally:
        store.close()
    if png:
        _plot(rows, topic, png)
        click.echo(f"{len(rows)} messages plotted into {png}", err=True)
        return
    out = sys.stdout
    if fmt == "csv":
        out.write("time,topic,seq,value\n")
    if fmt == "text":
        # the gaps in time order among the messages: where the record is incomplete
        pending = sorted(gaps, key=lambda g: g.received)
        i = 0
        for r in rows:
            while i < len(pending) and pending[i].received <= r.time:
                out.write(_gap_line(pending[i]))
                i += 1
            out.write(_row_line(r, fmt))
        if limit is None or len(rows) < limit:
            for g in pending[i:]:
                out.write(_gap_line(g))
    else:
        for r in rows:
            out.write(_row_line(r, fmt))
    out.flush()
    missed = sum(g.missed for g in gaps if not g.not_stored)
    unstored = [g for g in gaps if g.not_stored]
    summary = f"{len(rows)} messages; {len(gaps) - len(unstored)} gaps ({missed} missed)"
    if unstored:
        summary += (f"; {sum(g.missed for g in unstored)} messages received but not stored "
                    f"({len(unstored)} gaps)")
    click.echo(summary, err=True)


def _gap_line(g: GapRecord) -> str:
    """``<time> <topic> ! ...``: a hole in the record, in words."""
    span = f" (#{g.expected}..#{g.got - 1})" if g.got > g.expected > 0 else ""
    if g.not_stored:
        what = f"{g.missed} messages received but not stored{span}: writing was stuck"
    elif g.late_join:
        what = f"joined late: {g.missed} earlier messages missed"
    else:
        what = f"{g.missed} messages missed{span}"
    return f"{_stamp(g.received)} {g.topic} ! {what}\n"


def _row_line(r: Record, fmt: str) -> str:
    try:
        value: Any = r.value
    except Exception as exc:  # a damaged row is shown, not fatal
        value = f"<undecodable: {exc}>"
    if fmt == "json":
        v = value.tolist() if isinstance(value, np.ndarray) else value
        if isinstance(v, bytes):
            v = v.hex()
        return json.dumps({"time": r.time, "topic": r.topic, "seq": r.seq, "value": v},
                          sort_keys=True, default=str) + "\n"
    if fmt == "csv":
        num = r.number()
        cell = repr(num) if num is not None else json.dumps(_short(value, 10_000))
        return f"{r.time!r},{r.topic},{'' if r.seq is None else r.seq},{cell}\n"
    audit = _audit_text(r.topic, value)
    if audit is not None:  # the audit trail: one readable line per event
        return f"{_stamp(r.time)} {r.topic} {audit}\n"
    seq = "" if r.seq is None else f" #{r.seq}"
    return f"{_stamp(r.time)} {r.topic}{seq} {_short(value)}\n"


_AUDIT_FIELDS = ("outcome", "verb", "who", "role", "via", "transport")


def _audit_text(topic: str, value: Any) -> str | None:
    """An audit event (topic ``<node>.audit``) as the node log writes it, or None."""
    if not topic.endswith(".audit") or not isinstance(value, dict) \
            or not all(isinstance(value.get(k), str) for k in _AUDIT_FIELDS):
        return None
    event = AuditEvent(node=str(value.get("node", "")), outcome=value["outcome"],
                       verb=value["verb"], target=str(value.get("target", "")),
                       who=value["who"], address=str(value.get("address", "")),
                       via=value["via"], transport=value["transport"], role=value["role"],
                       detail=str(value.get("detail", "")),
                       reason=str(value.get("reason", "")))
    return " ".join(event.line().split())  # one line, whatever a reason holds


def _plot(rows: list[Record], topic: str, png: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise click.ClickException(
            "plotting needs matplotlib: pip install 'labbridge[plot]'") from None
    # a time that is no date (an older recording's 1e300) is left out, not fatal
    pts = [(when, n) for r in rows
           if (n := r.number()) is not None and (when := _datetime(r.time)) is not None]
    if not pts:
        raise click.ClickException(f"no numeric values to plot on {topic!r}")
    fig, ax = plt.subplots(figsize=(10, 4))
    # matplotlib plots datetimes; its stubs only admit numbers, hence the Any
    times: Any = [when for when, _ in pts]
    ax.plot(times, [v for _, v in pts],
            marker="." if len(pts) < 500 else None, linewidth=1)
    ax.set_title(topic)
    ax.set_xlabel("time")
    ax.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# -- watch --------------------------------------------------------------------------------------
@click.command()
@click.argument("endpoint")
@click.argument("topics", nargs=-1)
@click.option("--count", type=click.IntRange(1), help="Exit after this many messages.")
@click.option("--no-legacy", is_flag=True, help="Hide legacy single-string messages.")
@_key_options
def watch(endpoint: str, topics: tuple[str, ...], count: int | None, no_legacy: bool,
          server_key: str | None, client_key: str | None) -> None:
    """Show messages from ENDPOINT live, filtered by TOPIC prefixes (default: all)."""
    try:
        url = normalize_endpoint(endpoint)
    except BusError as exc:
        raise click.BadParameter(str(exc)) from None
    keys = _keys(server_key, client_key)
    seen = 0

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def show(topic: str, payload: Any, meta: MessageMeta) -> None:
            nonlocal seen
            if (no_legacy and meta.legacy) or (count is not None and seen >= count):
                return
            seen += 1
            stamp = _stamp(meta.ts if meta.ts is not None else meta.received)[11:]
            seq = "" if meta.seq is None else f" #{meta.seq}"
            tag = " (legacy)" if meta.legacy else ""
            audit = _audit_text(topic, payload)
            click.echo(f"{stamp} {topic}{seq}{tag} {audit or _short(payload)}")
            if count is not None and seen >= count:
                stop.set()

        def gap(g: Gap) -> None:
            what = "joined late" if g.late_join else "gap"
            click.echo(click.style(f"! {what} on {g.topic}: {g.missed} message(s) missed "
                                   f"(expected #{g.expected}, got #{g.received})",
                                   fg="yellow"), err=True)

        sub = Subscriber(url, topics or ("",), on_message=show, on_gap=gap, name="watch",
                         curve=keys)
        await sub.start()
        click.echo(f"watching {url} {' '.join(topics) or '(all topics)'}", err=True)
        try:
            await stop.wait()
        finally:
            await sub.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    run_async(_main())


def register(group: click.Group) -> None:
    group.add_command(record)
    group.add_command(history)
    group.add_command(watch)
