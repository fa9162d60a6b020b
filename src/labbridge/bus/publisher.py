"""Publisher: a ZeroMQ publishing socket that sends telemetry envelopes (ADR 0030, 0033,
0120).

``publish(topic, value)`` is synchronous and never blocks: the socket drops messages for a
subscriber whose queue is full (its high-water mark) instead of waiting, and the subscriber
learns about the loss from the sequence numbers. That lets device listeners (plain callables,
:mod:`labbridge.devices.base`) publish directly from the event loop.

Subscribers are peers too: each subscription is a message they send us, and ZeroMQ keeps
every subscription in memory (about 50 bytes per byte of prefix). The socket is an XPUB, which
behaves on the wire exactly as a PUB (plain SUB peers, Pychron's legacy readers) but shows us
the subscriptions, so that:

* a subscription longer than :data:`MAX_INBOUND` bytes (no topic is longer than 255) makes
  ZeroMQ drop that connection before reading it (``MAXMSGSIZE``);
* the distinct subscriptions held are capped (``max_subscriptions``, ``max_subscription_bytes``):
  beyond the cap the connection that has sent us the most bytes is dropped, which makes
  ZeroMQ forget its subscriptions; one log line when the limit is first hit, then at most one a
  minute while it keeps being hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from labbridge.access import Gate
from labbridge.bus import sockets
from labbridge.bus.auth import CurveKeyPair, SocketAuth, server_auth
from labbridge.protocol.telemetry.envelope import MAX_PUBLISHER_ID, EnvelopeEncoder

log = logging.getLogger(__name__)

_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)

#: Largest message a peer may send a publisher (a subscription: one flag byte and a prefix).
#: Topics are 1..255 bytes, so a longer prefix could never match; the rest is room for ZMTP
#: command framing (and, later, CURVE's 33 bytes per message).
MAX_INBOUND = 1024
#: Distinct subscription prefixes a publisher holds at most, and their total length.
MAX_SUBSCRIPTIONS = 1000
MAX_SUBSCRIPTION_BYTES = 64 * 1024
#: After dropping a connection, wait this long for its subscriptions to go before dropping
#: another (seconds).
DROP_GRACE = 0.1
#: While the limit keeps being hit, at most one log line per this many seconds.
LIMIT_LOG_EVERY = 60.0
#: Bytes one subscriber connection, and all of them together, may send us (handshake,
#: subscriptions and unsubscriptions: a subscriber sends nothing else).
MAX_SUBSCRIBER_BYTES = 64 * 1024
MAX_SUBSCRIBER_BYTES_TOTAL = 1024 * 1024
#: A connection that sent us less than this is never dropped for the limits: it cannot be
#: what filled them (a subscriber with a hundred legacy tags sends about 3 KiB), and right
#: after a drop the prefixes of the dropped connection may still be counted for a moment.
MIN_DROP_BYTES = 4096
#: How often the byte budgets are checked when no subscription arrives (seconds).
CHECK_EVERY = 1.0
#: ... and after this many new prefixes at the latest.
CHECK_BATCH = 256
#: What ZeroMQ and the kernel read ahead from one subscriber before we see it (the XPUB's
#: receive high-water mark, in messages, and the TCP receive buffer, in bytes). Subscribers
#: send little; a small TCP window slows a flood down to the pace at which it is read.
#: The high-water mark is this low because libzmq stores subscriptions in its trie in one
#: loop that runs until the pipe from the connection is empty, inside whichever call of ours
#: (a send, a receive, a readiness check) processes its commands, where no check of ours can
#: run. With a mark of 16 its I/O thread refilled the pipe while that loop inserted, and one
#: loop swallowed up to ~11,000 notifications of a flood of 120-byte prefixes (tens of MiB of
#: trie; an 85 MiB peak once in CI). With 2 the I/O thread may be one message ahead and waits
#: for the loop's acknowledgement of each, the pipe runs dry and the loop ends: measured, the
#: longest run was under ~1,200 notifications and the peak +3..5 MiB, idle or beside two
#: busy CPUs.
#: Not 1: with a ZAP handler (ADR 0127) libzmq first queues the peer's User-Id in that pipe,
#: and with a mark of 1 the subscriptions behind it are never delivered (libzmq 4.3.5).
INBOUND_HWM = 2
INBOUND_BUFFER = 32 * 1024
_PEER_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_CLOSED)


def new_publisher_id() -> int:
    """A random id in 1 .. 2**63-1: a restarted publisher is a new publisher."""
    return secrets.randbelow(MAX_PUBLISHER_ID) + 1


class Publisher:
    """PUB socket + envelope encoder.

    ``host``/``port`` say where to bind (port 0 = any free port; :attr:`port` tells which);
    ``connect`` lists endpoints to connect to instead (a publisher may also connect to a
    forwarder). ``sndhwm`` is the per-subscriber queue length before drops start.
    """

    def __init__(self, host: str | None = "127.0.0.1", port: int = 0, *,
                 connect: Sequence[str] = (), ctx: zmq.asyncio.Context | None = None,
                 publisher_id: int | None = None, sndhwm: int = 100_000,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS,
                 max_subscription_bytes: int = MAX_SUBSCRIPTION_BYTES,
                 max_subscriber_bytes: int = MAX_SUBSCRIBER_BYTES,
                 max_subscriber_bytes_total: int = MAX_SUBSCRIBER_BYTES_TOTAL,
                 clock: Callable[[], float] = time.time, name: str = "publisher",
                 port_key: str = "port", gate: Gate | None = None,
                 curve: CurveKeyPair | None = None, via: str = "") -> None:
        self.host = host
        self.requested_port = port
        self.connect_to = list(connect)
        self._ctx = ctx
        self.publisher_id = publisher_id or new_publisher_id()
        self.sndhwm = sndhwm
        self.clock = clock
        self.name = name
        self.port_key = port_key
        self.max_subscriptions = max_subscriptions
        self.max_subscription_bytes = max_subscription_bytes
        self.max_subscriber_bytes = max_subscriber_bytes
        self.max_subscriber_bytes_total = max_subscriber_bytes_total
        self.encoder = EnvelopeEncoder(self.publisher_id)
        #: Who may subscribe (a bound publisher): the node's gate through ZAP, over Curve
        #: when ``curve`` (the node's key pair) is given (ADR 0127). ``gate`` None: this
        #: machine only.
        self.gate = gate
        self.curve = curve
        self.via = via or name
        self.auth: SocketAuth | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self._mon: sockets.Monitor | None = None
        self._guard_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.sent = 0
        self.errors = 0
        #: Distinct subscription prefixes held (as ZeroMQ reports them) and their bytes.
        self.subscriptions: dict[bytes, None] = {}
        self.subscription_bytes = 0
        #: Connections we dropped for the subscription limit; connections ZeroMQ dropped
        #: (an oversized message, a peer gone); messages from peers that were no
        #: subscription (XSUB peers), ignored.
        self.peers_dropped = 0
        self.disconnects = 0
        self.foreign = 0
        self._peers: dict[int, tuple[Any, float]] = {}  # fd -> (peer address, since)
        self._over = False
        self._next_drop = 0.0
        self._last_check = 0.0
        self._last_limit_log = -1e300
        self._drops_unlogged = 0
        self._recheck: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create and bind (or connect) the socket; idempotent. Inside a running event loop
        this also starts the task that reads subscriptions (otherwise :meth:`start` does)."""
        if self._sock is not None:
            return
        ctx = self._ctx or sockets.context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND)
        sock.setsockopt(zmq.RCVHWM, INBOUND_HWM)
        sock.setsockopt(zmq.RCVBUF, INBOUND_BUFFER)
        sockets.set_reconnect(sock)
        auth = None
        if self.host is not None:
            auth = server_auth(self.gate, self.via, "subscribe", self.curve)
        events = _PEER_EVENTS | (SocketAuth.EVENTS if self.curve is not None else 0)
        try:
            mon = sockets.Monitor(sock, events)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        try:
            if auth is not None:
                auth.apply(sock)
            if self.host is not None:
                self.port = sockets.bind(sock, self.host, self.requested_port, self.name,
                                         self.port_key)
            for ep in self.connect_to:
                sockets.connect(sock, sockets.normalize_endpoint(ep), self.name)
        except BaseException:
            mon.close()
            sock.close(linger=0)
            if auth is not None:
                auth.release()
            raise
        self.auth = auth
        self._sock = sock
        self._sync = sockets.shadow(sock)
        self._mon = mon
        with contextlib.suppress(RuntimeError):  # no running loop: start() starts it
            self._start_guard()

    def _start_guard(self) -> None:
        if self.auth is not None:
            self.auth.start()
        if self._guard_task is None and self._sock is not None and self._mon is not None:
            self._guard_task = asyncio.get_running_loop().create_task(
                self._guard(self._sock, self._mon.socket), name=f"{self.name}-subscriptions")

    async def start(self) -> None:
        self.open()
        self._start_guard()

    def close(self) -> None:
        task, self._guard_task = self._guard_task, None
        if task is not None:
            task.cancel()
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self._mon is not None:  # before the socket: see sockets.Monitor
            self._mon.close()
        self._mon = None
        sockets.close(self._sock)
        self._sock = None
        self._sync = None
        if self.auth is not None:  # after the socket: no connection without its ZAP handler
            self.auth.release()
            self.auth = None
        self._peers.clear()
        self.subscriptions.clear()
        self.subscription_bytes = 0
        self._over = False

    async def stop(self) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._sync is not None

    @property
    def url(self) -> str:
        """Where subscribers connect (``tcp://127.0.0.1:<port>`` for a wildcard bind)."""
        if self.port is None or self.host is None:
            raise RuntimeError("publisher is not bound")
        return sockets.Address("zmq-pub", self.host, self.port).url

    # -- sending -----------------------------------------------------------------------------
    def _send(self, frames: list[Any], copy: bool = True) -> bool:
        sync = self._sync
        if sync is None:
            raise RuntimeError(f"{self.name}: publish() before open()")
        try:
            # One send per frame with plain-int flags: pyzmq's send_multipart combines enum
            # flags per frame, which costs more than the send itself (ADR 0033).
            send = sync.send
            if len(frames) == 3:
                send(frames[0], _NB_MORE)
                send(frames[1], _NB_MORE, copy=copy)
                send(frames[2], _NB)
            else:
                last = len(frames) - 1
                for i, frame in enumerate(frames):
                    send(frame, _NB_MORE if i < last else _NB, copy=copy)
        except zmq.Again:  # only with XPUB_NODROP-like options; PUB normally drops silently
            self.errors += 1
            return False
        except zmq.ZMQError as exc:
            self.errors += 1
            log.warning("%s: send failed: %s", self.name, exc)
            return False
        self.sent += 1
        return True

    def publish(self, topic: str, value: Any, ts: float | None = None, *,
                copy: bool = True) -> int:
        """Send ``value`` on ``topic``; returns the sequence number it carries.

        JSON for ordinary values, the binary array form for numpy arrays (``copy=False`` sends
        a large array without copying it; the caller must then not modify it until sent).
        """
        enc = self.encoder
        self._send(enc.encode(topic, value, self.clock() if ts is None else ts), copy)
        return enc.last_seq

    def publish_legacy(self, line: bytes) -> None:
        """Send one legacy single-frame string (``dashboard {...}``, ``<Dev,val> 1.5``)."""
        self._send([line])

    # -- subscriptions (ADR 0120) ------------------------------------------------------------
    async def _guard(self, sock: zmq.asyncio.Socket, mon: zmq.asyncio.Socket) -> None:
        """Read every subscription message (the XPUB queues them until read) and every
        connection event; keep the subscription limit."""
        poller = zmq.asyncio.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(mon, zmq.POLLIN)
        sync = sockets.shadow(sock)
        msync = sockets.shadow(mon)
        loop = asyncio.get_running_loop()
        try:
            while True:
                events = dict(await poller.poll(int(CHECK_EVERY * 1000)))
                if mon in events:
                    self._drain_monitor(msync)
                changed = self._drain_subscriptions(sync) if sock in events else False
                since = loop.time() - self._last_check
                if (since >= CHECK_EVERY or changed
                        or len(self.subscriptions) > self.max_subscriptions
                        or self.subscription_bytes > self.max_subscription_bytes):
                    self._last_check = loop.time()
                    if self._peers or self.subscriptions:
                        self._check_limit()
                # a flood of subscriptions must not starve the rest of the loop
                await asyncio.sleep(0)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.ETERM and not sock.closed:
                log.warning("%s: subscription reader stopped: %s", self.name, exc)
        except Exception:
            log.exception("%s: subscription reader failed", self.name)
            raise

    def _drain_monitor(self, msync: zmq.Socket[bytes]) -> None:
        for _ in range(1000):
            try:
                event = parse_monitor_message(msync.recv_multipart(_NB))
            except zmq.Again:
                return
            kind, fd = event["event"], event["value"]
            if kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if self.auth is not None:
                    self.auth.on_event(kind, fd)
                continue
            if kind in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
                peer = sockets.peer_name(fd)
                if peer is not None:
                    self._peers[fd] = (peer, time.monotonic())
                if self.auth is not None and kind == zmq.EVENT_ACCEPTED:
                    self.auth.on_event(kind, fd, peer)
            elif kind in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                if self.auth is not None and kind == zmq.EVENT_DISCONNECTED:
                    self.auth.on_event(kind, fd)
                known = self._peers.get(fd)
                # the event may come after the fd number was reused by a newer connection
                # (one we dropped, whose peer reconnected at once): keep that one
                if known is not None and sockets.peer_name(fd) != known[0]:
                    del self._peers[fd]
                self.disconnects += 1

    def _drain_subscriptions(self, sync: zmq.Socket[bytes]) -> bool:
        """Read queued (un)subscriptions; True if the set of prefixes changed.

        Returns early, for the caller to check the limits, once a new prefix takes the set
        over a limit or after :data:`CHECK_BATCH` new prefixes: each receive may let ZeroMQ
        store more subscriptions, so the limits are checked while a flood goes on, not after
        it. (Once over the limit, it keeps reading in batches: the unsubscriptions of a
        dropped connection queue up behind what that connection had sent.)
        """
        changed = False
        added = 0
        for _ in range(10_000):
            try:
                f = sync.recv(_NB, copy=False)
            except zmq.Again:
                break
            data = f.bytes
            if f.more or not data or data[0] > 1:
                # a message that is no (un)subscription (an XSUB peer): nothing to do with
                # it; drain the rest of a multipart one
                while f.more:
                    f = sync.recv(_NB, copy=False)
                self.foreign += 1
                if self.foreign == 1:
                    log.info("%s: a peer sent a message that is not a subscription; ignored "
                             "(counted in .foreign)", self.name)
                continue
            prefix = data[1:]
            if data[0] == 0:
                if prefix in self.subscriptions:
                    del self.subscriptions[prefix]
                    self.subscription_bytes -= len(prefix)
                    changed = True
                continue
            if prefix in self.subscriptions:
                continue
            self.subscriptions[prefix] = None
            self.subscription_bytes += len(prefix)
            changed = True
            added += 1
            if added >= CHECK_BATCH or (not self._over and (
                    len(self.subscriptions) > self.max_subscriptions
                    or self.subscription_bytes > self.max_subscription_bytes)):
                break
        return changed

    def subscription_count(self) -> int:
        """Distinct subscription prefixes held, as ZeroMQ reported them to us."""
        return len(self.subscriptions)

    def _check_limit(self) -> None:
        """Drop connections until the subscriptions held are within the limits.

        Our count of distinct prefixes comes from ZeroMQ's notifications, which a peer can
        skew (an unsubscription for a prefix it never sent is reported too). What a
        connection can have made ZeroMQ store is bounded by what it sent, which the kernel
        counts: so we also hold each connection, and all of them together, to a budget of
        bytes received (where the system tells; Linux does).
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._next_drop:  # the last drop is still taking effect
            self._schedule_recheck(self._next_drop)
            return
        peers = self._peer_bytes()
        total = sum(got for _, _, got in peers if got is not None)
        count = len(self.subscriptions)
        reason = ""
        if count > self.max_subscriptions:
            reason = f"{count} distinct prefixes held, limit {self.max_subscriptions}"
        elif self.subscription_bytes > self.max_subscription_bytes:
            reason = (f"{self.subscription_bytes} bytes of prefixes held, limit "
                      f"{self.max_subscription_bytes}")
        elif total > self.max_subscriber_bytes_total:
            reason = (f"subscribers sent {total} bytes in all, limit "
                      f"{self.max_subscriber_bytes_total}")
        victim = max(peers, key=lambda p: (-1 if p[2] is None else p[2], self._since(p[0])),
                     default=None)
        if victim is not None and victim[2] is not None and victim[2] < MIN_DROP_BYTES:
            victim = None
        if not reason and victim is not None and victim[2] is not None \
                and victim[2] > self.max_subscriber_bytes:
            reason = (f"one subscriber sent {victim[2]} bytes, limit "
                      f"{self.max_subscriber_bytes}")
        if not reason:
            if self._over:
                log.debug("%s: back within the subscription limits", self.name)
            self._over = False
            return
        self._over = True
        self._next_drop = now + DROP_GRACE
        self._schedule_recheck(self._next_drop)
        if victim is not None:
            self._drop(victim, reason)

    def _since(self, fd: int) -> float:
        entry = self._peers.get(fd)
        return entry[1] if entry is not None else 0.0

    def _schedule_recheck(self, when: float) -> None:
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_at(when, self._recheck_limit)

    def _recheck_limit(self) -> None:
        self._recheck = None
        if self._sock is not None:
            self._check_limit()

    def _peer_bytes(self) -> list[tuple[int, Any, int | None]]:
        """(fd, peer, bytes received or None where the system cannot tell) of every live
        connection; forgets connections that are gone."""
        out = []
        for fd, (peer, _) in list(self._peers.items()):
            got = sockets.bytes_received(fd, peer)
            if got == -1:
                self._peers.pop(fd, None)
                continue
            out.append((fd, peer, got))
        return out

    def _drop(self, victim: tuple[int, Any, int | None], reason: str) -> None:
        fd, peer, sent = victim
        self._peers.pop(fd, None)
        if not sockets.drop_peer(fd, peer):
            return
        self.peers_dropped += 1
        if time.monotonic() - self._last_limit_log < LIMIT_LOG_EVERY:
            self._drops_unlogged += 1
            return
        self._last_limit_log = time.monotonic()
        earlier = (f"; {self._drops_unlogged} more dropped since the last report"
                   if self._drops_unlogged else "")
        self._drops_unlogged = 0
        log.warning("%s: subscription limit reached (%s): dropped the connection from %s, "
                    "which sent %s bytes%s", self.name, reason, _addr(peer),
                    "?" if sent is None else sent, earlier)


def _addr(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)
