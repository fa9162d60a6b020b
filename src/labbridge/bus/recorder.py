"""Recorder: every bus message into one SQLite file, with a query API (issue 4 item 5;
ADR 0035).

Schema (one file; WAL journal so ``labbridge history`` can read while recording)::

    messages(id, time, received, topic, publisher, seq, encoding, payload, meta)
        time      source timestamp (envelope ts) or, for legacy lines and for a source
                  timestamp that is not a plausible Unix time (NaN, infinite, before 1970 or
                  after 3000), the receive time
        payload   frame 1 exactly as received (JSON text, raw array bytes) or the legacy line
        meta      the meta frame, kept for arrays only (dtype and shape)
        index (topic, time) and (time)
    gaps(id, received, topic, publisher, expected, got, missed, late_join, reason)
        one row per detected loss, so a history shows where it is incomplete: reason ""
        for messages that never reached us (a sequence gap, a late join), "not stored" for
        messages we received but could not write (the database stayed unwritable until
        ``max_pending`` messages waited)

Writes stay off the event loop's critical path: the receive callback only appends a tuple
to a list; a flush task hands whole batches to one writer thread that inserts each batch in
one transaction (``executemany``). A full batch (``batch_size``) triggers a flush at once;
otherwise the list is flushed every ``flush_interval`` seconds.

A database that cannot be written (another program holds its lock, the disk is full) keeps
the batch in memory and is retried with backoff (0.1 s doubling to 5 s); one log line when
writing stops and one when it works again (ADR 0124). Every SQLite call is bounded: a
statement waits at most ``busy_timeout`` for a lock, then the loop decides.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from labbridge.bus.auth import ClientKeys
from labbridge.bus.sockets import BusError
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.envelope import (
    Encoding,
    decode_meta,
    decode_payload,
    encode_meta_fields,
)
from labbridge.protocol.telemetry.sequence import Gap
from labbridge.transport.backoff import Backoff

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    received REAL NOT NULL,
    topic TEXT NOT NULL,
    publisher INTEGER,
    seq INTEGER,
    encoding INTEGER NOT NULL,
    payload BLOB NOT NULL,
    meta BLOB
);
CREATE INDEX IF NOT EXISTS messages_topic_time ON messages(topic, time);
CREATE INDEX IF NOT EXISTS messages_time ON messages(time);
CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    received REAL NOT NULL,
    topic TEXT NOT NULL,
    publisher INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    got INTEGER NOT NULL,
    missed INTEGER NOT NULL,
    late_join INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS gaps_topic_time ON gaps(topic, received);
"""

#: ``gaps.reason`` of messages the recorder received but could not write.
NOT_STORED = "not stored"
#: How long one SQLite statement waits for another program's lock (seconds); longer locks
#: are the retry loop's business, so that stop() and the event loop never wait long.
BUSY_TIMEOUT = 1.0

#: Plausible source timestamps, Unix seconds: [1970, 3000). Outside, a publisher's clock is
#: broken (or the value is NaN/infinite, which SQLite stores as NULL and Python cannot turn
#: into a date), and the recorder stores the receive time instead.
TS_MIN = 0.0
TS_MAX = 32503680000.0  # 3000-01-01T00:00:00Z


def plausible_ts(ts: float | None) -> bool:
    """True when ``ts`` is a finite Unix time in [TS_MIN, TS_MAX)."""
    return ts is not None and math.isfinite(ts) and TS_MIN <= ts < TS_MAX


_INSERT = ("INSERT INTO messages(time, received, topic, publisher, seq, encoding, payload, meta)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_GAP = ("INSERT INTO gaps(received, topic, publisher, expected, got, missed, late_join,"
               " reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class RecorderError(BusError):
    """The recording cannot be opened (a missing, read-only or damaged path); the message is
    one line naming the path and what to do."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def is_busy(exc: BaseException) -> bool:
    """A SQLite error that only means another connection holds a lock for now."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


@dataclass(frozen=True, slots=True)
class Record:
    """One stored message."""

    id: int
    time: float
    received: float
    topic: str
    publisher: int | None
    seq: int | None
    encoding: Encoding
    payload: bytes
    meta: bytes | None

    @property
    def value(self) -> Any:
        """The decoded payload (JSON value, numpy array, bytes, or legacy text/JSON)."""
        if self.encoding is Encoding.LEGACY:
            lm = legacy.parse(self.payload)
            return lm.event if lm.event is not None else lm.text
        if self.encoding is Encoding.JSON:
            return json.loads(self.payload)
        if self.encoding is Encoding.BYTES:
            return self.payload
        if self.meta is None:
            raise ProtocolError("array record without its meta frame", kind="bad_payload")
        return decode_payload(decode_meta(self.meta), self.payload)

    def number(self) -> float | None:
        """A plottable number: the value itself, or its ``value``/``state`` field."""
        try:
            v = self.value
        except (ProtocolError, ValueError):
            return None
        if isinstance(v, dict):
            v = v.get("value", v.get("state"))
        if isinstance(v, str):
            v = legacy.parse_number(v)
        if isinstance(v, bool | int | float):
            return float(v)
        return None


@dataclass(frozen=True, slots=True)
class GapRecord:
    received: float
    topic: str
    publisher: int
    expected: int
    got: int
    missed: int
    late_join: bool
    #: "" for messages that never reached the recorder, NOT_STORED for messages it could
    #: not write.
    reason: str = ""

    @property
    def not_stored(self) -> bool:
        return self.reason == NOT_STORED


def _prefix_end(prefix: str) -> str:
    """Smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class RecordStore:
    """The SQLite file (synchronous; one thread at a time)."""

    def __init__(self, path: str | Path, *, readonly: bool = False,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no recording at {self.path}")
            try:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                          timeout=busy_timeout, check_same_thread=False)
                self._columns = self._gap_columns()
            except sqlite3.Error as exc:
                raise RecorderError(f"cannot read the recording {self.path}: {exc} (is it "
                                    "a labbridge recording, and readable?)") from None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecorderError(
                f"cannot record into {self.path}: cannot create {self.path.parent}: "
                f"{_reason(exc)}; make that directory writable or choose another path "
                "(path: in the node file, or --db)") from None
        try:
            self.db = sqlite3.connect(self.path, timeout=busy_timeout,
                                      check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._columns = self._gap_columns()
            if "reason" not in self._columns:  # a recording made before gap reasons
                self.db.execute("ALTER TABLE gaps ADD COLUMN reason TEXT NOT NULL DEFAULT ''")
                self._columns = self._gap_columns()
            self.db.commit()
        except sqlite3.Error as exc:
            self.db.close()
            if is_busy(exc):
                raise
            raise self._open_error(exc) from None

    def _open_error(self, exc: sqlite3.Error) -> RecorderError:
        where = self.path.parent
        if not os.access(where, os.W_OK) or (self.path.exists()
                                             and not os.access(self.path, os.W_OK)):
            why = f"{where} is read-only"
        else:
            why = str(exc)
        return RecorderError(f"cannot record into {self.path}: {why}; make it writable or "
                             "choose another path (path: in the node file, or --db)")

    def _gap_columns(self) -> set[str]:
        return {str(row[1]) for row in self.db.execute("PRAGMA table_info(gaps)")}

    def close(self) -> None:
        self.db.close()

    def write(self, rows: Sequence[tuple[Any, ...]], gaps: Sequence[tuple[Any, ...]]) -> None:
        """Insert one batch in one transaction."""
        with self.db:
            if rows:
                self.db.executemany(_INSERT, rows)
            if gaps:
                self.db.executemany(_INSERT_GAP, gaps)

    def count(self, topic: str | None = None) -> int:
        if topic is None:
            return int(self.db.execute("SELECT count(*) FROM messages").fetchone()[0])
        return int(self.db.execute("SELECT count(*) FROM messages WHERE topic = ?",
                                   (topic,)).fetchone()[0])

    def topics(self) -> list[tuple[str, int]]:
        return [(str(t), int(n)) for t, n in self.db.execute(
            "SELECT topic, count(*) FROM messages GROUP BY topic ORDER BY topic")]

    def _where(self, topic: str | None, prefix: bool, since: float | None,
               until: float | None, tcol: str) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if topic:
            if prefix:
                clauses.append("topic >= ? AND topic < ?")
                args += [topic, _prefix_end(topic)]
            else:
                clauses.append("topic = ?")
                args.append(topic)
        if since is not None:
            clauses.append(f"{tcol} >= ?")
            args.append(since)
        if until is not None:
            clauses.append(f"{tcol} < ?")
            args.append(until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, topic: str | None = None, *, since: float | None = None,
              until: float | None = None, prefix: bool = False,
              limit: int | None = None) -> list[Record]:
        """Messages on ``topic`` (or under it when ``prefix``) in ``[since, until)``,
        oldest first."""
        where, args = self._where(topic, prefix, since, until, "time")
        sql = ("SELECT id, time, received, topic, publisher, seq, encoding, payload, meta "
               f"FROM messages{where} ORDER BY time, id")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Record(int(i), float(t), float(r), str(tp), p, s, Encoding(e), bytes(pl),
                       None if m is None else bytes(m))
                for i, t, r, tp, p, s, e, pl, m in self.db.execute(sql, args)]

    def gaps(self, topic: str | None = None, *, since: float | None = None,
             until: float | None = None, prefix: bool = False) -> list[GapRecord]:
        where, args = self._where(topic, prefix, since, until, "received")
        reason = "reason" if "reason" in self._columns else "''"
        return [GapRecord(float(r), str(t), int(p), int(e), int(g), int(m), bool(lj), str(rs))
                for r, t, p, e, g, m, lj, rs in self.db.execute(
                    f"SELECT received, topic, publisher, expected, got, missed, late_join, "
                    f"{reason} FROM gaps{where} ORDER BY received, id", args)]


class Recorder:
    """Subscribes to ``topics`` on ``connect`` and stores every message; see the module
    docstring."""

    def __init__(self, path: str | Path, connect: str | Sequence[str],
                 topics: Iterable[str] = ("",), *, batch_size: int = 5000,
                 flush_interval: float = 0.25, rcvhwm: int = 1_000_000,
                 max_pending: int = 2_000_000, ctx: zmq.asyncio.Context | None = None,
                 busy_timeout: float = BUSY_TIMEOUT, retry_max: float = 5.0,
                 stop_timeout: float = 5.0, clock: Callable[[], float] = time.time,
                 name: str = "recorder", curve: ClientKeys | None = None) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.busy_timeout = busy_timeout
        self.retry_max = retry_max
        #: How long stop() keeps trying to write what is pending (seconds).
        self.stop_timeout = stop_timeout
        self.clock = clock
        self.name = name
        self.subscriber = Subscriber(connect, topics, on_message=self._on_message,
                                     on_gap=self._on_gap, ctx=ctx, rcvhwm=rcvhwm,
                                     decode_payloads=False, clock=clock, name=name,
                                     curve=curve)
        self._rows: list[tuple[Any, ...]] = []
        self._in_flight = 0  # rows handed to the writer thread, not written yet
        self._gaps: list[tuple[Any, ...]] = []
        self._store: RecordStore | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._backoff = Backoff(initial=0.1, maximum=retry_max)
        #: Messages received but not kept (pending rows at max_pending), per (publisher,
        #: topic): [first receive time, first seq, last seq, count]; written as gaps.
        self._unstored: dict[tuple[int, str], list[Any]] = {}
        self.stored = 0
        #: Messages not kept in memory because writing was stuck and max_pending were
        #: waiting; they are recorded as "not stored" gaps once writing works again.
        self.dropped = 0
        self.gap_count = 0
        #: Messages whose source timestamp was implausible (stored with the receive time).
        self.bad_ts = 0
        #: Messages given up for good: still unwritten when the recorder stopped.
        self.lost = 0
        #: Failed write attempts (each is retried).
        self.write_failures = 0
        #: The last write failed and has not succeeded since; ``stalled`` is set meanwhile,
        #: ``writing`` once a write has succeeded (both for waiting in tests and status).
        self.last_error: str | None = None
        self.stalled = asyncio.Event()
        self.writing = asyncio.Event()

    @property
    def received(self) -> int:
        return self.subscriber.received

    @property
    def pending(self) -> int:
        return len(self._rows) + self._in_flight

    # -- receive side (event loop; cheap) ---------------------------------------------------
    def _on_message(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if len(self._rows) + self._in_flight >= self.max_pending:  # writing is stuck
            self._not_stored(topic, meta)
            return
        enc = meta.encoding
        meta_blob = None
        if enc is Encoding.NDARRAY:
            assert meta.publisher is not None and meta.seq is not None and meta.ts is not None
            meta_blob = encode_meta_fields(enc, meta.publisher, meta.seq, meta.ts, meta.dtype,
                                           meta.shape)
        when = meta.ts
        if when is None:  # a legacy line: no source time
            when = meta.received
        elif not plausible_ts(when):
            self.bad_ts += 1
            if self.bad_ts == 1 or self.bad_ts % 1000 == 0:
                log.warning("%s: %s from publisher %s has timestamp %r; stored with the "
                            "receive time instead (%d so far)", self.name, topic,
                            meta.publisher, when, self.bad_ts)
            when = meta.received
        self._rows.append((when, meta.received, topic, meta.publisher, meta.seq, int(enc),
                           bytes(payload), meta_blob))
        if len(self._rows) >= self.batch_size:
            self._full.set()

    def _not_stored(self, topic: str, meta: MessageMeta) -> None:
        self.dropped += 1
        key = (meta.publisher or 0, topic)
        seq = meta.seq or 0
        entry = self._unstored.get(key)
        if entry is None:
            if len(self._unstored) >= 100_000:  # bounded like the sequence tracker
                key = (0, "")
                entry = self._unstored.setdefault(key, [meta.received, 0, 0, 0])
            else:
                entry = self._unstored[key] = [meta.received, seq, seq, 0]
        entry[2] = seq
        entry[3] += 1
        if self.dropped == 1:
            log.warning("%s: %d messages are waiting for %s; further messages are not stored "
                        "(recorded as gaps) until writing catches up", self.name,
                        self.pending, self.path)

    @staticmethod
    def _gap_rows(unstored: dict[tuple[int, str], list[Any]]) -> list[tuple[Any, ...]]:
        """The "not stored" gap rows for ``unstored``."""
        return [(first_t, topic, pub, first, last + 1 if last else 0, n, 0, NOT_STORED)
                for (pub, topic), (first_t, first, last, n) in unstored.items()]

    def _restore_unstored(self, unstored: dict[tuple[int, str], list[Any]]) -> None:
        """Put back what a failed write took, merged with what was dropped meanwhile: one
        gap per (publisher, topic) and outage, not one per write attempt."""
        for key, (first_t, first, last, n) in unstored.items():
            newer = self._unstored.get(key)
            if newer is None:
                self._unstored[key] = [first_t, first, last, n]
            else:
                self._unstored[key] = [first_t, first, newer[2], n + newer[3]]

    def _on_gap(self, gap: Gap) -> None:
        self.gap_count += 1
        self._gaps.append((self.clock(), gap.topic, gap.publisher, gap.expected, gap.received,
                           gap.missed, int(gap.late_join), ""))

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the recording (retrying while another program holds its lock, up to
        ``stop_timeout``), then subscribe. :class:`RecorderError` (one line naming the path)
        when it cannot be opened."""
        if self._flusher is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self.name}-sqlite")
        loop = asyncio.get_running_loop()
        backoff = Backoff(initial=0.1, maximum=self.retry_max)
        deadline = loop.time() + max(self.stop_timeout, self.busy_timeout)
        try:
            while True:
                try:
                    self._store = await loop.run_in_executor(
                        self._executor, lambda: RecordStore(self.path,
                                                            busy_timeout=self.busy_timeout))
                    break
                except sqlite3.Error as exc:
                    if not is_busy(exc) or loop.time() >= deadline:
                        raise RecorderError(
                            f"cannot record into {self.path}: {exc} (another program holds "
                            "it? stop that program or choose another path)") from None
                    await asyncio.sleep(backoff.next())
            await self.subscriber.start()
        except BaseException:
            await self._close_store()
            raise
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"{self.name}-flush")

    async def stop(self) -> None:
        await self.subscriber.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._store is not None:
            await self._final_flush()
        await self._close_store()

    async def _final_flush(self) -> None:
        """Write what is pending, retrying for up to ``stop_timeout``; what still cannot be
        written is counted as lost and said in one line."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout
        while self._rows or self._gaps or self._unstored:
            if await self._try_flush():
                continue
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(self._backoff.next(), max(0.0, deadline - loop.time())))
        if self._rows or self._unstored:
            self.lost += len(self._rows) + sum(e[3] for e in self._unstored.values())
            log.error("%s: %d messages could not be written to %s (%s) and are lost",
                      self.name, self.lost, self.path, self.last_error)
            self._rows, self._gaps = [], []
            self._unstored.clear()

    async def _close_store(self) -> None:
        store, self._store = self._store, None
        executor, self._executor = self._executor, None
        if store is not None and executor is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(executor, store.close)
        if executor is not None:
            executor.shutdown(wait=True)

    async def flush(self) -> None:
        """Write everything received so far; raises the SQLite error when that fails (what
        could not be written stays pending and is retried)."""
        if not await self._try_flush() and self.last_error is not None:
            raise sqlite3.OperationalError(self.last_error)

    async def _try_flush(self) -> bool:
        """One write attempt of everything pending; True if it succeeded (or there was
        nothing to write)."""
        async with self._write_lock:
            rows, self._rows = self._rows, []
            gaps, self._gaps = self._gaps, []
            unstored, self._unstored = self._unstored, {}
            self._full.clear()
            if not rows and not gaps and not unstored:
                return True
            store = self._store
            assert store is not None and self._executor is not None
            loop = asyncio.get_running_loop()
            self._in_flight = len(rows)
            write = loop.run_in_executor(self._executor, store.write, rows,
                                         gaps + self._gap_rows(unstored))
            # Once handed to the writer thread, the rows are its own: a cancellation (stop()
            # ending the flush loop, a cancelled query) waits for the write's outcome
            # instead of dropping the rows unwritten (cancelling a write that has not
            # started yet would) and is passed on after.
            cancelled = False
            try:
                while True:
                    try:
                        await asyncio.shield(write)
                        break
                    except asyncio.CancelledError:
                        cancelled = True
            except sqlite3.Error as exc:
                # keep everything, oldest first, for the next attempt
                self._rows[:0] = rows
                self._gaps[:0] = gaps
                self._restore_unstored(unstored)
                self.write_failures += 1
                self._failed(exc)
                if cancelled:
                    raise asyncio.CancelledError from None
                return False
            finally:
                self._in_flight = 0
            self.stored += len(rows)
            if self.stalled.is_set():
                self.stalled.clear()
                log.info("%s: writing to %s again (%d messages had waited)", self.name,
                         self.path, len(rows))
            self.last_error = None
            self._backoff.reset()
            self.writing.set()
            if cancelled:
                raise asyncio.CancelledError
            return True

    def _failed(self, exc: sqlite3.Error) -> None:
        self.last_error = str(exc)
        if self.stalled.is_set():
            return  # one line per outage
        self.stalled.set()
        if is_busy(exc):
            log.warning("%s: %s is locked by another program; keeping messages in memory "
                        "(up to %d) and retrying", self.name, self.path, self.max_pending)
        else:
            log.error("%s: cannot write to %s: %s; keeping messages in memory (up to %d) "
                      "and retrying", self.name, self.path, exc, self.max_pending)

    async def _flush_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and stop() would then wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._full.wait()
            if not await self._try_flush():
                await asyncio.sleep(self._backoff.next())

    # -- queries (through the writer thread, so they see every flushed row) ------------------
    async def query(self, topic: str | None = None, **kw: Any) -> list[Record]:
        await self.flush()
        assert self._store is not None
        loop = asyncio.get_running_loop()
        store = self._store
        return await loop.run_in_executor(self._executor, lambda: store.query(topic, **kw))
