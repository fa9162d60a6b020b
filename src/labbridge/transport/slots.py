"""Fair connection slots: who may keep a connection when a server is full (issue 13).

A server admits every new connection through one :class:`SlotTable`. The table decides who
stays; the protocol of each connection only reports what it sees, through its :class:`Slot`:

* :meth:`Slot.active` -- a whole request arrived (useful progress): the idle clock restarts;
* :meth:`Slot.set_busy` -- the server is working on a request of this connection (a slow
  actuation): a busy connection is never evicted;
* :meth:`Slot.finished` -- the connection has nothing left to do (a lingering close after the
  last reply): it is the first to go;
* :meth:`Slot.hold` -- how many bytes this connection holds buffered right now (a partial
  request, queued requests, replies the peer has not read). ``Slot.measure`` may be set to a
  function that returns that number, so the table can refresh stale figures itself.

Rules the table applies:

1. **Per-address cap** (``max_per_address``, none by default): a newcomer from an address that
   already holds that many connections evicts that address's connection idle longest.
2. **Full server** (``max_connections``): a newcomer evicts the connection idle longest
   (the one whose last progress is oldest). A peer that trickles a partial request, holds a
   connection open without a word, or stops reading our replies makes no progress, so it goes
   before any client that is being served. The newcomer is refused only when every slot is
   busy.
3. **Budget of buffered bytes** (``max_buffered``): when the connections together hold more
   than that, the connection holding the most (and not busy) is evicted until the total fits;
   memory then grows only with bytes a server has agreed to hold.

An evicted connection is aborted (``transport.abort()``) and :attr:`Slot.evicted` is set, so
its protocol can tell. The table logs one line when it starts evicting and one when the
pressure is over (with the count), never one line per eviction: a flood of connections must
not become a flood of log lines.

Generic by design: any ``asyncio`` server can use it (``TcpServer`` does for every TCP server
of labbridge; the relay processor does on its Unix socket).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

log = logging.getLogger(__name__)


def per_address(max_connections: int, max_per_address: int | None) -> int:
    """The per-address cap a server asks for, or a quarter of its slots when it gives none."""
    return max_per_address if max_per_address is not None else max(1, max_connections // 4)


class Slot:
    """One admitted connection, as its server's :class:`SlotTable` sees it."""

    __slots__ = ("_table", "busy", "evicted", "held", "last_active", "measure", "opened",
                 "peer", "transport")

    def __init__(self, table: SlotTable | None, transport: asyncio.BaseTransport | None,
                 peer: str, now: float) -> None:
        self._table = table
        self.transport = transport
        self.peer = peer
        self.opened = now
        self.last_active = now
        self.busy = False
        self.evicted = False
        self.held = 0
        #: Optional: returns the bytes this connection holds now (refreshed under pressure).
        self.measure: Callable[[], int] | None = None

    @classmethod
    def detached(cls) -> Slot:
        """A slot belonging to no table (a connection made without one: in-memory pipes)."""
        return cls(None, None, "local", 0.0)

    def active(self) -> None:
        """Useful progress (a whole request arrived): this connection is not idle."""
        if self._table is not None:
            self._table._touch(self)

    def set_busy(self, busy: bool) -> None:
        """The server is (or no longer) working on a request of this connection."""
        self.busy = busy

    def finished(self) -> None:
        """Nothing left to do here (lingering close): evict this one first."""
        if self._table is not None:
            self._table._demote(self)

    def hold(self, nbytes: int | None = None) -> bool:
        """Report the bytes held (or measure them); False if this connection was evicted."""
        if self._table is None:
            return True
        if nbytes is None:
            nbytes = self.measure() if self.measure is not None else 0
        self._table._hold(self, nbytes)
        return not self.evicted


class SlotTable:
    """Admission, eviction and the byte budget of one server's connections."""

    def __init__(self, name: str, *, max_connections: int = 1024,
                 max_per_address: int | None = None, max_buffered: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.name = name
        self.max_connections = max_connections
        #: Default: no cap below ``max_connections`` (servers choose one: the Pychron-family
        #: servers use a quarter of their slots, so one host never fills them).
        self.max_per_address = max(1, max_per_address if max_per_address is not None
                                   else max_connections)
        self.max_buffered = max_buffered
        self.clock = clock
        self.log = logger or log
        # Least recently active first: eviction walks from the front.
        self._lru: OrderedDict[Slot, None] = OrderedDict()
        self._by_addr: dict[str, OrderedDict[Slot, None]] = {}
        self._held_total = 0
        self.evicted = 0  # connections evicted (all reasons)
        self.refused = 0  # newcomers refused (every slot busy)
        # Pressure episodes ("full", "budget", "address <peer>") -> evictions since it began.
        self._episode: dict[str, int] = {}

    # -- queries ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lru)

    @property
    def held(self) -> int:
        """Bytes the connections reported holding, in total."""
        return self._held_total

    def per_address(self, peer: str) -> int:
        conns = self._by_addr.get(peer)
        return len(conns) if conns else 0

    # -- admission ----------------------------------------------------------------------------
    def admit(self, transport: asyncio.BaseTransport, peer: str) -> Slot | None:
        """A new connection from ``peer``: its slot, or None if it must be refused."""
        now = self.clock()
        mine = self._by_addr.get(peer)
        if mine is not None and len(mine) >= self.max_per_address:
            victim = self._oldest_idle(mine)
            if victim is None:
                self._refuse(peer, f"address {peer} has {len(mine)} busy connections")
                return None
            self._evict(victim, f"address {peer}",
                        what=f"{peer} holds {len(mine)} connections, the most one address "
                             "may hold", detail="to admit its new one")
        if len(self._lru) >= self.max_connections:
            victim = self._oldest_idle(self._lru)
            if victim is None:
                self._refuse(peer, f"all {len(self._lru)} connections are busy")
                return None
            self._evict(victim, "full", what=f"full ({self.max_connections} connections)",
                        detail=f"to admit {peer}")
        slot = Slot(self, transport, peer, now)
        self._lru[slot] = None
        self._by_addr.setdefault(peer, OrderedDict())[slot] = None
        return slot

    def release(self, slot: Slot) -> None:
        """The connection ended: forget it; idempotent."""
        self._forget(slot)
        if self._episode:
            self._maybe_end_episodes()

    def _forget(self, slot: Slot) -> None:
        if slot not in self._lru:
            return  # never admitted, or already released (evicted)
        del self._lru[slot]
        mine = self._by_addr.get(slot.peer)
        if mine is not None:
            mine.pop(slot, None)
            if not mine:
                del self._by_addr[slot.peer]
        self._held_total -= slot.held
        slot.held = 0
        slot.transport = None  # no reference from the table's side outlives the connection
        slot.measure = None

    # -- reports from slots ---------------------------------------------------------------------
    def _touch(self, slot: Slot) -> None:
        try:
            self._lru.move_to_end(slot)  # KeyError: not (or no longer) in the table
        except KeyError:
            return
        slot.last_active = self.clock()
        mine = self._by_addr.get(slot.peer)
        if mine is not None:
            mine.move_to_end(slot)

    def _demote(self, slot: Slot) -> None:
        if slot in self._lru:
            slot.last_active = float("-inf")
            self._lru.move_to_end(slot, last=False)
            mine = self._by_addr.get(slot.peer)
            if mine is not None:
                mine.move_to_end(slot, last=False)

    def _hold(self, slot: Slot, nbytes: int) -> None:
        if slot not in self._lru:
            return
        self._held_total += nbytes - slot.held
        slot.held = nbytes
        if self.max_buffered is not None and self._held_total > self.max_buffered:
            self._enforce_budget()

    def _enforce_budget(self) -> None:
        assert self.max_buffered is not None
        total = 0
        for s in self._lru:  # refresh figures that may have gone stale (replies since read)
            if s.measure is not None:
                s.held = s.measure()
            total += s.held
        self._held_total = total
        while self._held_total > self.max_buffered:
            victim = max((s for s in self._lru if not s.busy), key=lambda s: s.held,
                         default=None)
            if victim is None or victim.held == 0:
                return
            self._evict(victim, "budget", what="over its budget of buffered bytes",
                        detail=f"holding {victim.held} bytes; the budget is "
                               f"{self.max_buffered}")

    # -- eviction -----------------------------------------------------------------------------
    @staticmethod
    def _oldest_idle(conns: OrderedDict[Slot, None]) -> Slot | None:
        for s in conns:
            if not s.busy:
                return s
        return None

    def _evict(self, victim: Slot, why: str, *, what: str, detail: str) -> None:
        """Abort ``victim``; the first eviction of a pressure episode ``why`` is logged."""
        count = self._episode.get(why, 0)
        if count == 0:
            idle = self.clock() - victim.last_active
            idle_text = "finished" if idle == float("inf") else f"idle {idle:.1f} s"
            self.log.warning("%s: %s: evicting %s (%s) %s; further evictions are counted, "
                             "not logged", self.name, what, victim.peer, idle_text, detail)
        self._episode[why] = count + 1
        self.evicted += 1
        victim.evicted = True
        tr = victim.transport
        self._forget(victim)  # an eviction never ends its own episode
        if tr is not None:
            abort = getattr(tr, "abort", None)
            (abort or tr.close)()

    def _maybe_end_episodes(self) -> None:
        """An episode ends when the pressure has clearly eased (below 90 %), so a server
        hovering at its limit logs once, not once per connection."""
        for why in list(self._episode):
            if why == "full":
                over = len(self._lru) < self.max_connections * 0.9
            elif why == "budget":
                over = self.max_buffered is None or self._held_total < self.max_buffered * 0.9
            else:  # "address <peer>"
                over = self.per_address(why[len("address "):]) < self.max_per_address * 0.9
            if over:
                n = self._episode.pop(why)
                self.log.info("%s: pressure over (%s): %d connection(s) evicted meanwhile",
                              self.name, why, n)

    def _refuse(self, peer: str, reason: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            self.log.warning("%s: refusing %s: %s (%d refused so far)", self.name, peer, reason,
                             self.refused)
