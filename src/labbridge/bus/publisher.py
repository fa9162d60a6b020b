"""Publisher: a ZeroMQ PUB socket that sends telemetry envelopes (ADR 0030, 0033).

``publish(topic, value)`` is synchronous and never blocks: a PUB socket drops messages for a
subscriber whose queue is full (its high-water mark) instead of waiting, and the subscriber
learns about the loss from the sequence numbers. That lets device listeners (plain callables,
:mod:`labbridge.devices.base`) publish directly from the event loop.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from labbridge.bus import sockets
from labbridge.protocol.telemetry.envelope import MAX_PUBLISHER_ID, EnvelopeEncoder

log = logging.getLogger(__name__)

_NB = int(zmq.NOBLOCK)
_NB_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)


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
                 clock: Callable[[], float] = time.time, name: str = "publisher") -> None:
        self.host = host
        self.requested_port = port
        self.connect_to = list(connect)
        self._ctx = ctx
        self.publisher_id = publisher_id or new_publisher_id()
        self.sndhwm = sndhwm
        self.clock = clock
        self.name = name
        self.encoder = EnvelopeEncoder(self.publisher_id)
        self._sock: zmq.asyncio.Socket | None = None
        self._sync: zmq.Socket[bytes] | None = None
        self.port: int | None = None
        self.sent = 0
        self.errors = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Create and bind (or connect) the socket; idempotent."""
        if self._sock is not None:
            return
        ctx = self._ctx or sockets.context()
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.host is not None:
                self.port = sockets.bind(sock, self.host, self.requested_port, self.name)
            for ep in self.connect_to:
                sock.connect(sockets.normalize_endpoint(ep))
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        self._sync = sockets.shadow(sock)

    async def start(self) -> None:
        self.open()

    def close(self) -> None:
        sockets.close(self._sock)
        self._sock = None
        self._sync = None

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

    def publish_json(self, topic: str, value: Any, ts: float | None = None) -> None:
        """Fast path for JSON-encodable values."""
        self._send(self.encoder.encode_json(topic, value, self.clock() if ts is None else ts))

    def publish_legacy(self, line: bytes) -> None:
        """Send one legacy single-frame string (``dashboard {...}``, ``<Dev,val> 1.5``)."""
        self._send([line])
