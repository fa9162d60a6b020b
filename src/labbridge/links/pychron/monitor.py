"""The StatusMonitor: the acquisition side's view of a remote valve node (spec section 15).

It polls as the real one does -- states every ``state_freq`` ticks, locks every ``lock_freq``,
owners every ``owner_freq``, the state checksum every ``checksum_freq``, one tick =
``update_period`` seconds -- but each query runs on its own period (no cumulative sleeps, no
wrap at 100), a checksum mismatch resynchronises at once, and three failed polls in a row
report the node unreachable -- at once when the node's host refuses the connection (the
node is not running): the backoff while a node is down slows the retries, never the verdict.

Pushed changes (the telemetry bus, issue 4) are applied the moment they arrive through
:meth:`StatusMonitor.push`; while pushes keep coming the state/lock/owner polls pause and only
the cheap checksum poll keeps running as a check. When the bus falls silent for
``bus_silence`` seconds, or a gap in the bus sequence is reported (:meth:`gap_detected`), the
monitor resynchronises by polling and falls back to the seed's frequencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from labbridge.links.pychron.client import PychronClientError, TlsRefused
from labbridge.links.pychron.remote import RemoteValves
from labbridge.protocol.base import ProtocolError

log = logging.getLogger(__name__)

#: Retry delay before the verdict (seconds): failed polls are repeated quickly until
#: ``unreachable_after`` of them have failed, then backed off (from one tick up to 30 s).
QUICK_RETRY = 0.1
MAX_BACKOFF = 30.0
#: Connection errors that mean "nothing runs there" -- no point in waiting for more polls.
_DEFINITE = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)


def definitely_down(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the node is not there at all: the
    connection was refused, or there is no route to its host; or that it will not talk to us
    (it refused our TLS certificate: asking again will not change that)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError | TlsRefused) or (
                isinstance(e, OSError) and e.errno in _DEFINITE):
            return True
        e = e.__cause__ or e.__context__
    return False


@dataclass(frozen=True, slots=True)
class ValveView:
    """What the acquisition side believes about one valve."""

    name: str
    state: bool | None = None
    locked: bool | None = None
    owner: str | None = None
    ts: float = 0.0
    source: str = "poll"  # "poll" or "push"


ChangeCallback = Callable[[ValveView | None, ValveView], None]
StatusCallback = Callable[[str, str], None]  # (status, detail)


class StatusMonitor:
    """Keeps ``self.valves`` in step with a remote node and calls back on every change."""

    def __init__(self, valves: RemoteValves, *, state_freq: int = 3, lock_freq: int = 5,
                 owner_freq: int = 5, checksum_freq: int = 3, update_period: float = 1.0,
                 unreachable_after: int = 3, bus_silence: float = 5.0,
                 on_change: ChangeCallback | None = None,
                 on_status: StatusCallback | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        for label, f in (("state_freq", state_freq), ("lock_freq", lock_freq),
                         ("owner_freq", owner_freq), ("checksum_freq", checksum_freq)):
            if f < 1:
                raise ValueError(f"{label} must be at least 1")
        if update_period <= 0:
            raise ValueError("update_period must be positive")
        self.remote = valves
        self.periods = {
            "states": state_freq * update_period,
            "locks": lock_freq * update_period,
            "owners": owner_freq * update_period,
            "checksum": checksum_freq * update_period,
        }
        self.unreachable_after = unreachable_after
        self.bus_silence = bus_silence
        self.on_change = on_change
        self.on_status = on_status
        self.clock = clock
        self.valves: dict[str, ValveView] = {}
        self.status = "starting"
        self.failures = 0
        #: Why the latest poll failed ("" after a good one).
        self.last_error = ""
        self.polls = 0
        self.resyncs = 0
        self.checksum_mismatches = 0
        self.pushes = 0
        #: Failed polls since the node was declared unreachable (drives the backoff).
        self.down_polls = 0
        self._bad_reply_logged = False
        self._last_push: float | None = None
        self._due: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._resync_requested = True
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="status-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_synced(self) -> None:
        """Wait until a full poll has succeeded at least once."""
        await self._synced.wait()

    # -- inputs from the bus ----------------------------------------------------------------------
    def push(self, name: str, *, state: bool | None = None, locked: bool | None = None,
             owner: str | None = None, ts: float | None = None) -> None:
        """Apply a change pushed by the node (bus message) immediately."""
        self.pushes += 1
        self._last_push = self.clock()
        self._apply(name, state=state, locked=locked, owner=owner, source="push", ts=ts)

    def bus_alive(self) -> None:
        """A heartbeat or any message from the node's bus arrived."""
        self._last_push = self.clock()

    def gap_detected(self) -> None:
        """The bus lost messages: resynchronise by polling now."""
        log.info("%s: bus gap reported; resynchronising by polling", self.remote)
        self.request_resync()

    def request_resync(self) -> None:
        self._resync_requested = True
        self._wake.set()

    @property
    def pushing(self) -> bool:
        return (self._last_push is not None
                and self.clock() - self._last_push < self.bus_silence)

    # -- internals --------------------------------------------------------------------------------
    def _apply(self, name: str, *, source: str, ts: float | None = None, **fields: Any) -> None:
        old = self.valves.get(name)
        base = old or ValveView(name)
        changes = {k: v for k, v in fields.items() if v is not None and getattr(base, k) != v}
        if not changes and old is not None:
            return
        new = replace(base, **changes, ts=ts or time.time(), source=source)
        self.valves[name] = new
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("status monitor callback failed")

    def _set_status(self, status: str, detail: str = "") -> None:
        if status == self.status:
            return
        self.status = status
        log.log(logging.WARNING if status == "node_unreachable" else logging.INFO,
                "%s: %s %s", self.remote, status, detail)
        if self.on_status is not None:
            try:
                self.on_status(status, detail)
            except Exception:
                log.exception("status callback failed")

    async def _poll(self, what: str) -> None:
        r = self.remote
        if what == "states":
            for n, v in (await r.states()).items():
                self._apply(n, state=v, source="poll")
        elif what == "locks":
            for n, v in (await r.locks()).items():
                self._apply(n, locked=v, source="poll")
        elif what == "owners":
            owners = await r.owners()
            for n in self.valves:
                self._apply(n, owner=owners.get(n, ""), source="poll")
        elif what == "checksum":
            states = {n: bool(v.state) for n, v in self.valves.items()}
            locks = {n: bool(v.locked) for n, v in self.valves.items()}
            if states and not await r.verify(states, locks):
                self.checksum_mismatches += 1
                log.info("%s: state checksum mismatch; resynchronising", r)
                self._resync_requested = True
        self.polls += 1

    async def _run(self) -> None:
        now = self.clock()
        self._due = dict.fromkeys(self.periods, now)
        while True:
            try:
                if self._resync_requested:
                    self._resync_requested = False
                    self.resyncs += 1
                    for what in ("states", "locks", "owners"):
                        await self._poll(what)
                    now = self.clock()
                    for what in ("states", "locks", "owners", "checksum"):
                        self._due[what] = now + self.periods[what]
                    self._synced.set()
                else:
                    now = self.clock()
                    for what, due in sorted(self._due.items(), key=lambda kv: kv[1]):
                        if due > now:
                            continue
                        if what != "checksum" and self.pushing:
                            self._due[what] = now + self.periods[what]
                            continue
                        await self._poll(what)
                        self._due[what] = self.clock() + self.periods[what]
                        if self._resync_requested:
                            break
            except (PychronClientError, ProtocolError, ValueError) as exc:
                # A reply that cannot be parsed (bad CRC, malformed state/owner word:
                # ChecksumMismatch, WordError) is a failed poll like a lost one, not the end
                # of the monitor.
                self.failures += 1
                self.last_error = str(exc)
                if not isinstance(exc, PychronClientError) and not self._bad_reply_logged:
                    self._bad_reply_logged = True  # once per outage, not once per poll
                    log.warning("%s: bad reply to a poll: %r; resynchronising", self.remote,
                                exc)
                self._resync_requested = True
                if self.status == "node_unreachable":
                    self.down_polls += 1
                elif definitely_down(exc) or self.failures >= self.unreachable_after:
                    self._set_status("node_unreachable", str(exc))
                else:
                    # not sure yet: poll again soon, the verdict must not wait for a backoff
                    await self._sleep_or_wake(QUICK_RETRY)
                    continue
                # Exponential backoff while the node is down (from one tick up to 30 s), so a
                # dead node is not hammered; request_resync() still wakes the loop at once.
                delay = min(MAX_BACKOFF,
                            min(self.periods.values()) * (2 ** min(self.down_polls, 8)))
                await self._sleep_or_wake(delay)
                continue
            self.failures = 0
            self.down_polls = 0
            self.last_error = ""
            self._bad_reply_logged = False
            self._set_status("ok")
            if self._resync_requested:
                continue
            await self._sleep_or_wake(max(0.0, min(self._due.values()) - self.clock()))

    async def _sleep_or_wake(self, delay: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancellation of
        # stop() when it races the event being set, and stop() would hang.
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
