"""Gap detection on the subscriber side (spec pychron.md §13 and §15, ADR 0031).

PUB/SUB drops messages when a subscriber is slow (the publisher's high-water mark) and
everything published before a subscriber connected. Every envelope carries the publisher id
and a per-topic sequence number; :class:`SequenceTracker` turns those into gap reports so a
listener always knows it missed something (the StatusMonitor then re-polls).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages known to be missing on one topic of one publisher."""

    publisher: int
    topic: str
    expected: int
    received: int
    #: How many messages were lost (``received - expected``).
    missed: int
    #: True when this is the first message seen from that publisher on that topic and it is
    #: not the first one the publisher sent (we joined late).
    late_join: bool


class SequenceTracker:
    """Follows ``(publisher, topic) -> last seq``; bounded to ``max_streams`` entries.

    Counters: ``gaps`` (mid-stream jumps), ``late_joins``, ``missed`` (messages lost, both
    kinds), ``resets`` (a sequence going backwards: the publisher's counter for that topic
    was evicted and restarted; not a loss by itself).
    """

    __slots__ = ("_last", "gaps", "late_joins", "max_streams", "missed", "resets")

    def __init__(self, max_streams: int = 100_000) -> None:
        self.max_streams = max_streams
        self._last: OrderedDict[tuple[int, str], int] = OrderedDict()
        self.gaps = 0
        self.late_joins = 0
        self.missed = 0
        self.resets = 0

    def observe(self, publisher: int, topic: str, seq: int) -> Gap | None:
        """Record one message; return a :class:`Gap` when messages were missed before it."""
        key = (publisher, topic)
        last = self._last.get(key)
        self._last[key] = seq
        if last is None:
            if len(self._last) > self.max_streams:
                self._last.popitem(last=False)
            if seq > 1:
                self.late_joins += 1
                self.missed += seq - 1
                return Gap(publisher, topic, 1, seq, seq - 1, True)
            return None
        if seq == last + 1:
            return None
        if seq <= last:
            self.resets += 1
            return None
        missed = seq - last - 1
        self.gaps += 1
        self.missed += missed
        return Gap(publisher, topic, last + 1, seq, missed, False)

    def last_seq(self, publisher: int, topic: str) -> int | None:
        return self._last.get((publisher, topic))
