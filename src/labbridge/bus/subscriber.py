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

Connections (ADR 0121): a publisher that refuses is retried by ZeroMQ itself, 0.1 s doubling to
5 s. A peer that accepts and then closes or speaks something else (a command port given by
mistake), or a connection that drops, is retried by us with the same backoff: ZeroMQ would
retry the first every 100 ms for ever and never retry after a protocol error. One log line per
state change of an endpoint (up, lost, failing, back), never one per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from labbridge.bus import sockets
from labbridge.bus.auth import ClientKeys, apply_client, keys_of
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.envelope import Encoding, decode, decode_meta
from labbridge.protocol.telemetry.sequence import Gap, SequenceTracker
from labbridge.transport.backoff import Backoff

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

_LINK_EVENTS = (zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
#: A connection that stayed up this long was healthy: its loss restarts the backoff.
HEALTHY_AFTER = 1.0


class Link:
    """The connection state of one endpoint of a Subscriber (what the log lines report)."""

    __slots__ = (
        "aliases",
        "attempts",
        "backoff",
        "keys",
        "logged_down",
        "reason",
        "refused",
        "state",
        "timer",
        "up_since",
        "url",
    )

    def __init__(self, url: str, keys: ClientKeys | None = None) -> None:
        self.url = url
        #: The Curve keys for this endpoint (None: plain ZeroMQ).
        self.keys = keys
        #: The publisher refused us (our key, our address, or the mechanism).
        self.refused = False
        #: "connecting" (first attempt), "up" (handshake done), "down" (retrying)
        self.state = "connecting"
        self.up_since = 0.0
        self.backoff = Backoff(initial=sockets.RECONNECT_FIRST, maximum=sockets.RECONNECT_MAX)
        self.reason = ""
        self.timer: asyncio.TimerHandle | None = None
        #: Connection attempts made by us (not counting ZeroMQ's own after a refusal).
        self.attempts = 0
        #: Other spellings of the endpoint in ZeroMQ's events (resolved host names).
        self.aliases: set[str] = set()
        #: The current outage has been reported (one line per outage, one when it ends).
        self.logged_down = False


class Subscriber:
    """SUB socket(s) connected to one or more publishers, with callbacks and gap counting."""

    def __init__(self, connect: str | Sequence[str], topics: Iterable[str] = ("",), *,
                 on_message: MessageListener | None = None,
                 on_gap: GapListener | None = None,
                 ctx: zmq.asyncio.Context | None = None, rcvhwm: int = 100_000,
                 max_batch: int = 256, accept_legacy: bool = True,
                 decode_payloads: bool = True, max_message: int = 256 * 1024 * 1024,
                 keepalive: float = 1.0,
                 clock: Callable[[], float] = time.time, name: str = "subscriber",
                 curve: ClientKeys | None = None) -> None:
        given = [connect] if isinstance(connect, str) else list(connect)
        self.endpoints = [sockets.normalize_endpoint(e) for e in given]
        #: Curve keys per endpoint: a SecureEndpoint's own, else ``curve`` (ADR 0127).
        self.keys: dict[str, ClientKeys | None] = {
            url: keys_of(e) or curve for url, e in zip(self.endpoints, given, strict=True)}
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
        self._mon: sockets.Monitor | None = None
        #: Per endpoint connection state (see the module docstring); ``link_event`` is set
        #: whenever one changes (the consumer clears it).
        self.links: dict[str, Link] = {}
        self.link_event = asyncio.Event()
        #: Connections we re-established (a drop, or a peer that accepted and closed).
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
        links = {url: Link(url, self.keys.get(url)) for url in self.endpoints}
        secure = any(link.keys is not None for link in links.values())
        await self._resolve_aliases(links)
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
        sockets.set_reconnect(sock)
        try:
            mon = sockets.Monitor(sock, _LINK_EVENTS)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        try:
            for t in self.topics:
                sock.setsockopt(zmq.SUBSCRIBE, t.encode("utf-8"))
            for ep in self.endpoints:
                if secure:  # the mechanism is taken at connect time, per endpoint
                    apply_client(sock, links[ep].keys)
                sockets.connect(sock, ep, self.name)
        except BaseException:
            mon.close()
            sock.close(linger=0)
            raise
        self.links = links
        self._sock = sock
        self._sync = sockets.shadow(sock)
        self._mon = mon
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-recv")
        self._monitor = asyncio.create_task(self._watch_connections(mon.socket),
                                            name=f"{self.name}-monitor")

    async def _resolve_aliases(self, links: dict[str, Link]) -> None:
        """ZeroMQ names an endpoint by its resolved address in some events: learn those."""
        loop = asyncio.get_running_loop()
        for url, link in links.items():
            proto, _, rest = url.partition("://")
            host, sep, port = rest.rpartition(":")
            if proto != "tcp" or not sep or not port.isdigit():
                continue
            host = host.strip("[]")
            try:
                async with asyncio.timeout(2.0):
                    infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (OSError, TimeoutError):
                continue
            for info in infos:
                ip = str(info[4][0])
                link.aliases.add(f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._monitor) if t is not None]
        self._task = self._monitor = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self.links.values():
            if link.timer is not None:
                link.timer.cancel()
                link.timer = None
        if self._mon is not None:  # before the socket: see sockets.Monitor
            self._mon.close()
            self._mon = None
        sockets.close(self._sock)
        self._sock = None
        self._sync = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

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

    # -- connections (ADR 0121) --------------------------------------------------------------
    async def _watch_connections(self, mon: zmq.asyncio.Socket) -> None:
        """Follow every endpoint's connection events; reconnect with backoff where ZeroMQ
        would not, or would without backoff."""
        while True:
            try:
                event = parse_monitor_message(await mon.recv_multipart())
            except zmq.ZMQError:
                return
            ep = event.get("endpoint", b"")
            url = ep.decode("utf-8", "replace") if isinstance(ep, bytes) else str(ep)
            link = self._link_for(url)
            if link is not None:
                self._on_event(link, int(event["event"]), event.get("value"))

    def _link_for(self, url: str) -> Link | None:
        link = self.links.get(url)
        if link is not None:
            return link
        for candidate in self.links.values():
            if url in candidate.aliases:
                return candidate
        if len(self.links) == 1:
            return next(iter(self.links.values()))
        return None

    def _on_event(self, link: Link, kind: int, value: Any) -> None:
        if link.timer is not None:  # our own reconnect is pending: old news
            return
        before = link.state
        self._on_link_event(link, kind, value)
        if link.state != before:
            self.link_event.set()

    async def wait_link(self, state: str, url: str | None = None, *,
                        timeout: float | None = None) -> Link:
        """Wait until the endpoint ``url`` (default: the first) is in ``state`` ("up",
        "down")."""
        link = self.links[url or self.endpoints[0]]
        async with asyncio.timeout(timeout):
            while link.state != state:
                self.link_event.clear()
                await self.link_event.wait()
        return link

    def _on_link_event(self, link: Link, kind: int, value: Any) -> None:
        now = time.monotonic()
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if link.state == "connecting":
                log.debug("%s: connected to %s", self.name, link.url)
            elif link.state == "down" and link.logged_down:
                log.info("%s: connected to %s again", self.name, link.url)
                link.logged_down = False
            link.state = "up"
            link.up_since = now
            link.reason = ""
            link.refused = False
        elif kind & _HANDSHAKE_FAILED:
            link.reason = _handshake_reason(kind, value, link.keys is not None)
            link.refused = _refused(kind, value, link.keys is not None)
        elif kind == zmq.EVENT_CONNECT_RETRIED:
            # ZeroMQ itself retries a connection that could not be made (refused,
            # unreachable), with the backoff set by sockets.set_reconnect
            if link.state != "down" or not link.logged_down:
                self._log_down(link, "%s: cannot connect to %s (nothing accepts there yet?); "
                                     "retrying every %g s at most", self.name, link.url,
                               sockets.RECONNECT_MAX)
            link.state = "down"
        elif kind == zmq.EVENT_DISCONNECTED:
            self._lost(link, now)

    def _log_down(self, link: Link, *args: Any) -> None:
        if not link.logged_down:
            link.logged_down = True
            log.warning(*args)

    def _lost(self, link: Link, now: float) -> None:
        was = link.state
        if was != "up" and link.keys is not None and not link.reason:
            # a Curve server closes a handshake it cannot decrypt without a word
            link.reason = _CURVE_CLOSED
            link.refused = True
        healthy = was == "up" and now - link.up_since >= HEALTHY_AFTER
        if healthy:
            # a connection that had been working: a new episode (one line), fast retries
            link.backoff.reset()
            link.logged_down = False
            self._log_down(link, "%s: connection to %s lost%s; reconnecting", self.name,
                           link.url, f" ({link.reason})" if link.reason else "")
        elif was == "up":
            # up for a moment only: the same episode goes on (no new line), backing off
            self._log_down(link, "%s: connection to %s lost%s; reconnecting", self.name,
                           link.url, f" ({link.reason})" if link.reason else "")
        elif link.refused:
            self._log_down(link, "%s: %s %s; retrying every %g s at most", self.name,
                           link.url, link.reason, sockets.RECONNECT_MAX)
        else:
            self._log_down(link, "%s: %s accepted the connection but then %s: is it a ZeroMQ "
                                 "publisher (a notifier or dashboard PUB port), and does it "
                                 "want Curve keys (server_key and client_key, or --server-key "
                                 "and --client-key)? retrying every %g s at most", self.name,
                           link.url, link.reason or "closed it", sockets.RECONNECT_MAX)
        link.state = "down"
        sock = self._sock
        if sock is None or sock.closed:
            return
        # take the endpoint away from ZeroMQ (it would retry every 100 ms, or never after a
        # protocol error) and connect again ourselves after the backoff delay
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(link.url)
        delay = link.backoff.next()
        link.timer = asyncio.get_running_loop().call_later(delay, self._reconnect, link)

    def _reconnect(self, link: Link) -> None:
        link.timer = None
        sock = self._sock
        if sock is None or sock.closed:
            return
        link.attempts += 1
        self.reconnects += 1
        try:
            if any(lk.keys is not None for lk in self.links.values()):
                apply_client(sock, link.keys)
            sock.connect(link.url)
        except zmq.ZMQError as exc:  # cannot happen for an endpoint that connected before
            log.warning("%s: cannot reconnect to %s: %s", self.name, link.url, exc.strerror)

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


def _refused(kind: int, value: Any, curve: bool = False) -> bool:
    """Whether a failed handshake is a refusal (credentials, mechanism), not a stranger."""
    return curve or kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH or (
        kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and int(value or 0) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)


def _handshake_reason(kind: int, value: Any, curve: bool = False) -> str:
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        if curve:
            return (f"refused our Curve key (status {value}): its node must list our public "
                    "key as the curve_key of an identity with a role (security.identities)")
        return (f"refused us (status {value}): its node gives this address no role "
                "(security.addresses), or it wants Curve keys")
    if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if int(value or 0) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if curve:
                return "does not use Curve: leave out the server and client keys"
            return ("uses Curve encryption: give its public key and a key pair of ours "
                    "(server_key and client_key, or --server-key and --client-key)")
        if not curve:
            return f"did not speak the ZeroMQ protocol (ZMTP error {int(value or 0):#x})"
    if curve:
        return _CURVE_CLOSED
    return "closed it during the ZeroMQ handshake"


_CURVE_CLOSED = ("closed our Curve handshake: is server_key (--server-key) the public key of "
                 "that node?")
