"""Subscriber: a ZeroMQ SUB socket delivering decoded messages to callbacks (ADR 0031, 0033).

Callback API (what the StatusMonitor and the recorder build on)::

    sub = Subscriber(["tcp://valves:5555"], topics=["lab.valves."])
    sub.add_listener(lambda topic, payload, meta: ...)   # every message, decoded
    sub.add_gap_listener(lambda gap: ...)                # every detected loss / late join
    await sub.start(); ...; await sub.stop()

``meta`` is a :class:`MessageMeta`: publisher id, sequence number, source timestamp, the gap
(if any) detected just before this message, and the running gap counters. Gaps are also
observable as :attr:`Subscriber.gap_event` (an :class:`asyncio.Event` set on each gap; the
consumer clears it) and :attr:`Subscriber.gaps`.

Legacy single-frame strings (``dashboard {...}``, ``<Dev,val> 1.5``, ``pychron {...}``) are
delivered too, with ``topic`` = the tag, ``payload`` = the JSON object for JSON tags or the
text otherwise, and ``meta.legacy`` True (no sequence numbers: no gap detection).

Listeners run synchronously in the event loop; one that raises is logged and kept. Messages
that cannot be decoded are counted (:attr:`decode_errors`) and logged (rate-limited), never
fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from labbridge.bus import sockets
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.envelope import Encoding, decode, decode_meta
from labbridge.protocol.telemetry.sequence import Gap, SequenceTracker

log = logging.getLogger(__name__)

_NB = int(zmq.NOBLOCK)
#: Frames larger than this are kept as views on ZeroMQ's buffer (arrays: no copy at all).
ZERO_COPY_MIN = 65536


def _frame_data(f: zmq.Frame) -> Any:
    """bytes for small frames; a memoryview on the frame for large ones (zero-copy)."""
    return f.buffer if len(f) >= ZERO_COPY_MIN else f.bytes


class MessageMeta(NamedTuple):
    """Everything about a message except its topic and payload (immutable; a NamedTuple
    because one is built per message and tuples are cheap to build, ADR 0033)."""

    #: Publisher id (None for legacy lines).
    publisher: int | None
    #: Per-(publisher, topic) sequence number, first = 1 (None for legacy lines).
    seq: int | None
    #: Source timestamp, Unix seconds (None for legacy lines).
    ts: float | None
    #: Local receive time (the subscriber's clock).
    received: float
    encoding: Encoding
    #: The gap detected just before this message, or None.
    gap: Gap | None
    #: Gaps detected so far on this subscriber (mid-stream gaps + late joins).
    gaps: int
    #: Messages known lost so far.
    missed: int
    #: Array payloads: numpy dtype string and shape (also when payloads are not decoded).
    dtype: str = ""
    shape: tuple[int, ...] = ()

    @property
    def legacy(self) -> bool:
        return self.encoding is Encoding.LEGACY


MessageListener = Callable[[str, Any, MessageMeta], None]
GapListener = Callable[[Gap], None]


class Subscriber:
    """SUB socket(s) connected to one or more publishers, with callbacks and gap counting."""

    def __init__(self, connect: str | Sequence[str], topics: Iterable[str] = ("",), *,
                 on_message: MessageListener | None = None,
                 on_gap: GapListener | None = None,
                 ctx: zmq.asyncio.Context | None = None, rcvhwm: int = 100_000,
                 max_batch: int = 256, accept_legacy: bool = True,
                 decode_payloads: bool = True, max_message: int = 256 * 1024 * 1024,
                 keepalive: float = 1.0,
                 clock: Callable[[], float] = time.time, name: str = "subscriber") -> None:
        self.endpoints = [sockets.normalize_endpoint(e) for e in
                          ([connect] if isinstance(connect, str) else list(connect))]
        self.topics = list(topics)
        self._ctx = ctx
        self.rcvhwm = rcvhwm
        self.max_batch = max_batch
        self.accept_legacy = accept_legacy
        #: False: deliver frame 1 (or the whole legacy line) undecoded, as bytes (the
        #: recorder stores payloads as they came). Meta and gaps are still decoded.
        self.decode_payloads = decode_payloads
        #: Largest message accepted (ZeroMQ MAXMSGSIZE): a publisher sending more is
        #: disconnected by ZeroMQ instead of filling our memory.
        self.max_message = max_message
        #: ZMTP heartbeat interval, seconds (0 = off). A connection that carries nothing for
        #: 3 x keepalive is dropped and re-made, so a publisher behind a partition or on a
        #: rebooted host is found again instead of waiting on a dead TCP connection for ever
        #: (ADR 0162); what it published meanwhile shows up as a gap.
        self.keepalive = keepalive
        self.clock = clock
        self.name = name
        self.tracker = SequenceTracker()
        self._listeners: list[MessageListener] = []
        self._gap_listeners: list[GapListener] = []
        if on_message is not None:
            self._listeners.append(on_message)
        if on_gap is not None:
            self._gap_listeners.append(on_gap)
        self.gap_event = asyncio.Event()
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        #: Connections re-established after ZeroMQ dropped them (see _watch_connections).
        self.reconnects = 0
        self._waiters: list[tuple[Callable[[str, Any, MessageMeta], bool],
                                  asyncio.Future[tuple[str, Any, MessageMeta]]]] = []
        self.received = 0
        self.decode_errors = 0
        self.legacy_received = 0
        self._last_error_log = 0.0

    # -- listeners ---------------------------------------------------------------------------
    def add_listener(self, listener: MessageListener) -> Callable[[], None]:
        """Call ``listener(topic, payload, meta)`` for every message; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._remove(self._listeners, listener)

    def add_gap_listener(self, listener: GapListener) -> Callable[[], None]:
        """Call ``listener(gap)`` whenever messages were lost; returns an unsubscribe."""
        self._gap_listeners.append(listener)
        return lambda: self._remove(self._gap_listeners, listener)

    @staticmethod
    def _remove(lst: list[Any], item: Any) -> None:
        with contextlib.suppress(ValueError):
            lst.remove(item)

    @property
    def gaps(self) -> int:
        """Gaps detected so far (mid-stream gaps plus late joins)."""
        return self.tracker.gaps + self.tracker.late_joins

    @property
    def missed(self) -> int:
        return self.tracker.missed

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            return
        ctx = self._ctx or sockets.context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message)
        if self.keepalive > 0:
            ivl = max(1, int(self.keepalive * 1000))
            sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
            # The publisher drops us too after this long without a word (frees its queue).
            sock.setsockopt(zmq.HEARTBEAT_TTL, min(3 * ivl, 6_553_500))
            # A reconnect whose SYN is lost is retried after this, not after the kernel's
            # two minutes of SYN retries.
            sock.setsockopt(zmq.CONNECT_TIMEOUT, 3 * ivl)
        try:
            for t in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, t.encode("utf-8"))
            for ep in self.endpoints:
                sock.connect(ep)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise sockets.BusError(f"{self.name}: cannot connect {self.endpoints}: "
                                   f"{exc.strerror}") from None
        self._sock = sock
        self._sync = sockets.shadow(sock)
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-recv")
        mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._monitor = asyncio.create_task(self._watch_connections(mon),
                                            name=f"{self.name}-monitor")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._monitor) if t is not None]
        self._task = self._monitor = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sock is not None and not self._sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.disable_monitor()
        sockets.close(self._sock)
        self._sock = None
        self._sync = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    def subscribe(self, topic: str) -> None:
        """Add a topic prefix while running."""
        self.topics.append(topic)
        if self._sock is not None:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))

    def connect(self, endpoint: str) -> None:
        """Connect to one more publisher while running."""
        url = sockets.normalize_endpoint(endpoint)
        self.endpoints.append(url)
        if self._sock is not None:
            self._sock.connect(url)

    # -- waiting (tests, startup handshakes) -------------------------------------------------
    async def wait_for(self, predicate: Callable[[str, Any, MessageMeta], bool] | None = None,
                       *, timeout: float | None = None) -> tuple[str, Any, MessageMeta]:
        """The next message for which ``predicate(topic, payload, meta)`` holds."""
        fut: asyncio.Future[tuple[str, Any, MessageMeta]] = (
            asyncio.get_running_loop().create_future())
        entry = (predicate or (lambda t, p, m: True), fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    # -- connections -------------------------------------------------------------------------
    async def _watch_connections(self, mon: Any) -> None:
        """Re-connect an endpoint whenever ZeroMQ drops its connection.

        ZeroMQ retries a connection that the peer closed, but not one it dropped itself on a
        protocol error such as a message over MAXMSGSIZE: that publisher would be cut off for
        good, silently. Re-connecting on every disconnect is harmless in the ordinary case
        and logs what happened; messages lost meanwhile show up as gaps.
        """
        try:
            while True:
                try:
                    event = parse_monitor_message(await mon.recv_multipart())
                except zmq.ZMQError:
                    return
                ep = event.get("endpoint", b"")
                url = ep.decode("utf-8", "replace") if isinstance(ep, bytes) else str(ep)
                sock = self._sock
                if sock is None or sock.closed or url not in self.endpoints:
                    continue
                log.warning("%s: connection to %s dropped; reconnecting", self.name, url)
                try:
                    sock.disconnect(url)
                except zmq.ZMQError:
                    pass
                sock.connect(url)
                self.reconnects += 1
        finally:
            mon.close(linger=0)

    # -- receiving ---------------------------------------------------------------------------
    async def _run(self) -> None:
        sock, sync = self._sock, self._sync
        assert sock is not None and sync is not None
        max_batch = self.max_batch
        while True:
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM or sock.closed:
                    return
                log.warning("%s: receive failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            self._handle(frames)
            # Drain what is already queued without one future per message: one recv per
            # frame with plain-int flags, ``Frame.more`` instead of a RCVMORE getsockopt
            # (each costs ~2 us in pyzmq), then yield so a flood cannot starve the rest of
            # the event loop (ADR 0033).
            recv = sync.recv
            n = 0
            try:
                while n < max_batch:
                    try:
                        f = recv(_NB, copy=False)
                    except zmq.Again:
                        break
                    frames = [_frame_data(f)]
                    while f.more:
                        f = recv(_NB, copy=False)
                        frames.append(_frame_data(f))
                    self._handle(frames)
                    n += 1
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ETERM or sock.closed:
                    return
                log.warning("%s: receive failed: %s", self.name, exc)
            if n == max_batch:
                await asyncio.sleep(0)

    def _bad(self, what: str, exc: Exception) -> None:
        self.decode_errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 5.0:
            self._last_error_log = now
            log.warning("%s: dropped an undecodable message (%s): %s (%d so far)", self.name,
                        what, exc, self.decode_errors)

    def _handle(self, frames: list[Any]) -> None:
        self.received += 1
        gap: Gap | None = None
        if len(frames) == 3:
            try:
                if self.decode_payloads:
                    topic, payload, m = decode(frames)
                else:
                    m = decode_meta(frames[2])
                    f0 = frames[0]
                    topic = (f0 if isinstance(f0, bytes) else bytes(f0)).decode("utf-8")
                    payload = frames[1]
            except (ProtocolError, UnicodeDecodeError) as exc:
                self._bad("envelope", exc)
                return
            gap = self.tracker.observe(m.publisher, topic, m.seq)
            meta = MessageMeta(m.publisher, m.seq, m.ts, self.clock(), m.encoding, gap,
                               self.tracker.gaps + self.tracker.late_joins,
                               self.tracker.missed, m.dtype, m.shape)
        elif len(frames) == 1 and self.accept_legacy:
            try:
                lm = legacy.parse(frames[0])
            except ProtocolError as exc:
                self._bad("legacy line", exc)
                return
            self.legacy_received += 1
            topic = lm.tag
            if not self.decode_payloads:
                payload = frames[0]
            else:
                payload = lm.event if lm.event is not None else lm.text
            meta = MessageMeta(None, None, None, self.clock(), Encoding.LEGACY, None,
                               self.tracker.gaps + self.tracker.late_joins,
                               self.tracker.missed)
        else:
            self._bad("frames", ValueError(f"{len(frames)} frames"))
            return
        if gap is not None:
            self.gap_event.set()
            for gl in tuple(self._gap_listeners):
                try:
                    gl(gap)
                except Exception:
                    log.exception("%s: gap listener %r failed", self.name, gl)
        for listener in tuple(self._listeners):
            try:
                listener(topic, payload, meta)
            except Exception:
                log.exception("%s: listener %r failed on %s", self.name, listener, topic)
        if self._waiters:
            for pred, fut in tuple(self._waiters):
                if fut.done():
                    continue
                try:
                    ok = pred(topic, payload, meta)
                except Exception as exc:
                    fut.set_exception(exc)
                    continue
                if ok:
                    fut.set_result((topic, payload, meta))
