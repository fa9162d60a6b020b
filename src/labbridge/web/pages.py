"""Connected dashboard pages: a bounded outgoing buffer each, and fair slots (issue 13).

A page is one WebSocket. The server never buffers more than ``max_bytes`` (and
``max_messages``) of pushes for it: a page that cannot keep up is dropped and reconnects to a
fresh snapshot, instead of growing the server's memory.

Slots (ADR 0131): at most ``max_pages`` pages, at most ``max_per_address`` from one address.
A page proves it is a page by sending ``{"type": "hello"}`` right after it connects and
``{"type": "ping"}`` every ``ping_interval`` seconds (the page's script does both). When a
newcomer finds no free slot, :meth:`Slots.choose` picks a page to evict instead of refusing
it, in this order:

1. at the per-address cap: the worst page of the newcomer's own address (a host can only
   push out its own pages);
2. otherwise a page that never said hello (the oldest first), then the one that has been
   silent (no ping for ``idle_after``) or stalled (a send blocked for ``stall_after``, or
   its buffer half full) the longest.

Only when every page is active and keeps up is the newcomer refused (HTTP 503): a connection
that holds a slot without being a page can never lock real pages out.

Pure: no sockets or tasks; the app passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ADMIT = "admit"
EVICT = "evict"
REFUSE = "refuse"


@dataclass(eq=False)
class Page:
    """One connected page and its outgoing buffer."""

    peer: str  # "ip:port"
    address: str  # ip
    joined: float
    max_bytes: int = 4 * 1024 * 1024
    max_messages: int = 256
    ws: Any = None
    transport: Any = None
    proven: bool = False
    #: The id of the login session the page was opened with (closed when it ends).
    session: str | None = None
    last_heard: float | None = None
    #: When the send in progress started (None: idle sender).
    sending_since: float | None = None
    overflowed: bool = False
    closing: bool = False
    queued_bytes: int = 0
    #: Messages received from the page in the current one-second window (rate limit).
    window_start: float = 0.0
    window_count: int = 0
    queue: deque[str | None] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, text: str, *, first: bool = False) -> bool:
        """Queue one message; False (and ``overflowed``) when the page is too far behind.
        The ``first`` message (the snapshot, bounded by the state's own limits) is always
        taken."""
        if self.overflowed or self.closing:
            return False
        if not first and (self.queued_bytes + len(text) > self.max_bytes
                          or len(self.queue) >= self.max_messages):
            self.overflowed = True
            return False
        self.queue.append(text)
        self.queued_bytes += len(text)
        self.wake.set()
        return True

    def take(self) -> str | None:
        text = self.queue.popleft()
        if text is not None:
            self.queued_bytes -= len(text)
        return text

    def heard(self, now: float, kind: str) -> None:
        self.last_heard = now
        if kind == "hello":
            self.proven = True

    def count_message(self, now: float, limit: int) -> bool:
        """Count one message from the page; False when it sends more than ``limit`` a
        second (a page sends one ping every few seconds)."""
        if now - self.window_start >= 1.0:
            self.window_start, self.window_count = now, 0
        self.window_count += 1
        return self.window_count <= limit

    def silence(self, now: float) -> float:
        return now - (self.last_heard if self.last_heard is not None else self.joined)

    def stalled(self, now: float, stall_after: float) -> float:
        """Seconds this page has been unable to take what we send (0: keeping up)."""
        behind = 0.0
        if self.sending_since is not None and now - self.sending_since > stall_after:
            behind = now - self.sending_since
        if self.queued_bytes * 2 > self.max_bytes or len(self.queue) * 2 > self.max_messages:
            behind = max(behind, stall_after)
        return behind


@dataclass
class Slots:
    max_pages: int = 64
    max_per_address: int = 16
    idle_after: float = 30.0
    stall_after: float = 2.0

    def badness(self, page: Page, now: float) -> tuple[int, float]:
        """How evictable a page is: (class, seconds); higher is more evictable. Class 2: not
        a page (no hello); 1: idle or stalled; 0: an active page."""
        if page.closing:
            return (3, 0.0)
        if not page.proven:
            return (2, now - page.joined)
        silent = page.silence(now)
        stalled = page.stalled(now, self.stall_after)
        if silent > self.idle_after or stalled > 0:
            return (1, max(silent, stalled))
        return (0, silent)

    def choose(self, pages: Iterable[Page], address: str,
               now: float) -> tuple[str, Page | None, str]:
        """``(ADMIT, None, "")``, ``(EVICT, victim, why)`` or ``(REFUSE, None, why)`` for a
        newcomer from ``address``."""
        live = [p for p in pages if not p.closing]
        mine = [p for p in live if p.address == address]
        if len(mine) >= self.max_per_address:
            victim = max(mine, key=lambda p: self.badness(p, now))
            return (EVICT, victim, f"{self.max_per_address} pages from {address} at most")
        if len(live) < self.max_pages:
            return (ADMIT, None, "")
        victim = max(live, key=lambda p: self.badness(p, now))
        cls, secs = self.badness(victim, now)
        if cls == 0:
            return (REFUSE, None, f"all {self.max_pages} pages are active")
        why = ("it never said hello" if cls == 2 else
               f"it has been idle or stalled for {secs:.0f} s")
        return (EVICT, victim, why)
