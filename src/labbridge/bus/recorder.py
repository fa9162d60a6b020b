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
    gaps(id, received, topic, publisher, expected, got, missed, late_join)
        one row per detected loss, so a history shows where it is incomplete

Writes stay off the event loop's critical path: the receive callback only appends a tuple
to a list; a flush task hands whole batches to one writer thread that inserts each batch in
one transaction (``executemany``). A full batch (``batch_size``) triggers a flush at once;
otherwise the list is flushed every ``flush_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

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
    late_join INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_topic_time ON gaps(topic, received);
"""

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
_INSERT_GAP = ("INSERT INTO gaps(received, topic, publisher, expected, got, missed, late_join)"
               " VALUES (?, ?, ?, ?, ?, ?, ?)")


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


def _prefix_end(prefix: str) -> str:
    """Smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class RecordStore:
    """The SQLite file (synchronous; one thread at a time)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no recording at {self.path}")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                      check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self.db.commit()

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
        return [GapRecord(float(r), str(t), int(p), int(e), int(g), int(m), bool(lj))
                for r, t, p, e, g, m, lj in self.db.execute(
                    "SELECT received, topic, publisher, expected, got, missed, late_join "
                    f"FROM gaps{where} ORDER BY received, id", args)]


class Recorder:
    """Subscribes to ``topics`` on ``connect`` and stores every message; see the module
    docstring."""

    def __init__(self, path: str | Path, connect: str | Sequence[str],
                 topics: Iterable[str] = ("",), *, batch_size: int = 5000,
                 flush_interval: float = 0.25, rcvhwm: int = 1_000_000,
                 max_pending: int = 2_000_000, ctx: zmq.asyncio.Context | None = None,
                 clock: Callable[[], float] = time.time, name: str = "recorder") -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.clock = clock
        self.name = name
        self.subscriber = Subscriber(connect, topics, on_message=self._on_message,
                                     on_gap=self._on_gap, ctx=ctx, rcvhwm=rcvhwm,
                                     decode_payloads=False, clock=clock, name=name)
        self._rows: list[tuple[Any, ...]] = []
        self._gaps: list[tuple[Any, ...]] = []
        self._store: RecordStore | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._full = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.stored = 0
        self.dropped = 0
        self.gap_count = 0
        #: Messages whose source timestamp was implausible (stored with the receive time).
        self.bad_ts = 0
        #: Messages lost because writing their batch failed (logged by the flush loop).
        self.lost = 0

    @property
    def received(self) -> int:
        return self.subscriber.received

    # -- receive side (event loop; cheap) ---------------------------------------------------
    def _on_message(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if len(self._rows) >= self.max_pending:  # the disk cannot keep up: count, not grow
            self.dropped += 1
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

    def _on_gap(self, gap: Gap) -> None:
        self.gap_count += 1
        self._gaps.append((self.clock(), gap.topic, gap.publisher, gap.expected, gap.received,
                           gap.missed, int(gap.late_join)))

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._flusher is not None:
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self.name}-sqlite")
        loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, RecordStore, self.path)
        await self.subscriber.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"{self.name}-flush")

    async def stop(self) -> None:
        await self.subscriber.stop()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        if self._store is not None:
            await self.flush()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._store.close)
            self._store = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def flush(self) -> None:
        """Write everything received so far."""
        async with self._write_lock:
            rows, self._rows = self._rows, []
            gaps, self._gaps = self._gaps, []
            self._full.clear()
            if not rows and not gaps:
                return
            store = self._store
            assert store is not None and self._executor is not None
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, store.write, rows, gaps)
            except sqlite3.Error:
                self.lost += len(rows)
                raise
            self.stored += len(rows)

    async def _flush_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for swallows a cancellation that
            # arrives as the event is set, and stop() would then wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._full.wait()
            try:
                await self.flush()
            except sqlite3.Error as exc:
                log.error("%s: writing to %s failed: %s (%d messages lost so far)",
                          self.name, self.path, exc, self.lost)
                await asyncio.sleep(1.0)

    # -- queries (through the writer thread, so they see every flushed row) ------------------
    async def query(self, topic: str | None = None, **kw: Any) -> list[Record]:
        await self.flush()
        assert self._store is not None
        loop = asyncio.get_running_loop()
        store = self._store
        return await loop.run_in_executor(self._executor, lambda: store.query(topic, **kw))
