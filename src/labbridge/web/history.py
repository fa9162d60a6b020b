"""The dashboard's read side of a recorder's SQLite file (history on page load; ADR 0132).

The recorder (``labbridge.bus.recorder``, schema in its docstring and ADR 0035) writes every
bus message it hears; the dashboard opens the same file read-only, in its one history thread,
and asks three things:

* :meth:`RecorderHistory.topics`: the topics recorded in a time window (bounded), so a
  page learns about series the dashboard has not heard live yet (it started after them);
* :meth:`RecorderHistory.series`: each topic's points in the window, **thinned in SQLite**:
  the window is cut into ``max_points`` equal time buckets and only the last row of each
  bucket leaves the database, so memory and work in Python are bounded by ``max_points``
  whatever the recording rate (the old reader loaded every row, then thinned);
* :meth:`RecorderHistory.latest_meta`: the last metadata message of every device, so units
  are known from the first page.

Every method is synchronous and must run in the history thread (one connection, used by one
thread at a time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from labbridge.bus.recorder import Record, RecordStore
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.telemetry.envelope import Encoding
from labbridge.web.state import META_SIGNAL, is_plain_signal, numeric_items, split_topic

_COLUMNS = "id, time, received, topic, publisher, seq, encoding, payload, meta"


def _record(row: tuple[Any, ...]) -> Record:
    i, t, r, tp, p, s, e, pl, m = row
    return Record(int(i), float(t), float(r), str(tp), p, s, Encoding(e), bytes(pl),
                  None if m is None else bytes(m))


class RecorderHistory:
    """See the module docstring."""

    def __init__(self, path: Path, *, max_topics: int = 200) -> None:
        self.path = path
        self.max_topics = max_topics
        self._store: RecordStore | None = None

    def store(self) -> RecordStore | None:
        """The file, opened read-only on first use; None while it does not exist yet."""
        if self._store is None:
            if not self.path.exists():
                return None
            self._store = RecordStore(self.path, readonly=True)
        return self._store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def topics(self, since: float, until: float) -> list[str]:
        """Topics with rows in ``[since, until)`` that can hold trend points (no
        heartbeats, events or metadata), at most ``max_topics``."""
        store = self.store()
        if store is None:
            return []
        rows = store.db.execute(
            "SELECT DISTINCT topic FROM messages WHERE time >= ? AND time < ?", (since, until))
        out: list[str] = []
        for (topic,) in rows:
            topic = str(topic)
            if is_plain_signal(topic):
                out.append(topic)
                if len(out) >= self.max_topics:
                    break
        return sorted(out)

    def _thinned(self, store: RecordStore, topic: str, since: float, until: float,
                 max_points: int) -> list[Record]:
        """At most ``max_points`` (+1) rows of ``topic``: the last of each of ``max_points``
        equal time buckets of the window (the newest row is always among them). Buckets
        are aligned on multiples of their width, not on ``since``, so two requests a
        moment apart thin the same rows the same way."""
        bucket = max((until - since) / max(1, max_points), 1e-6)
        rows = store.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id IN ("
            "  SELECT max(id) FROM messages WHERE topic = ? AND time >= ? AND time < ?"
            "  GROUP BY CAST(time / ? AS INTEGER))"
            " ORDER BY time, id LIMIT ?",
            (topic, since, until, bucket, max_points + 2))
        return [_record(r) for r in rows]

    def series(self, wanted: Iterable[str] | None, since: float, until: float,
               max_points: int) -> dict[str, list[list[float]]]:
        """``{series topic: [[t, v], ...]}`` for the ``wanted`` series topics (all recorded
        ones in the window when None). A series of a record's field (``....scan.H1``) is read
        from its record's topic (``....scan``)."""
        store = self.store()
        if store is None:
            return {}
        recorded = set(self.topics(since, until))
        if wanted is None:
            sources = sorted(recorded)
            keep: set[str] | None = None
        else:
            keep = set(wanted)
            srcs: set[str] = set()
            for t in keep:
                if t in recorded:
                    srcs.add(t)
                elif "." in t and t.rsplit(".", 1)[0] in recorded:
                    srcs.add(t.rsplit(".", 1)[0])
            sources = sorted(srcs)
        out: dict[str, list[list[float]]] = {}
        for topic in sources[:self.max_topics]:
            if not self._numeric(store, topic):
                continue
            for rec in self._thinned(store, topic, since, until, max_points):
                try:
                    items = numeric_items(topic, rec.value)
                except (ProtocolError, ValueError):
                    continue
                for series_topic, v in items or ():
                    if keep is None or series_topic in keep:
                        out.setdefault(series_topic, []).append([rec.time, v])
        return out

    @staticmethod
    def _numeric(store: RecordStore, topic: str) -> bool:
        """Only JSON payloads can be numbers: frames (arrays) are never decoded here."""
        row = store.db.execute(
            "SELECT encoding FROM messages WHERE topic = ? ORDER BY time DESC LIMIT 1",
            (topic,)).fetchone()
        return row is not None and Encoding(row[0]) is Encoding.JSON

    def latest_meta(self, since: float, limit: int = 512) -> list[tuple[str, float, Any]]:
        """``[(topic, time, value)]``: the last metadata message of each device since
        ``since``."""
        store = self.store()
        if store is None:
            return []
        rows = store.db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id IN ("
            "  SELECT max(id) FROM messages WHERE time >= ? AND topic LIKE ? GROUP BY topic)"
            " LIMIT ?", (since, f"%.{META_SIGNAL}", limit))
        out = []
        for row in rows:
            rec = _record(row)
            if split_topic(rec.topic)[2] != META_SIGNAL or rec.encoding is not Encoding.JSON:
                continue
            try:
                out.append((rec.topic, rec.time, rec.value))
            except (ProtocolError, ValueError):
                continue
        return out


def finite_points(points: list[list[float]]) -> list[list[float]]:
    return [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
