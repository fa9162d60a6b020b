"""One PyMoDAQ TCP connection on the asyncio loop, either side (spec pymodaq.md §7, §9).

:class:`PyMoDAQStream` is an ``asyncio.BufferedProtocol``: the kernel writes received bytes
straight into the codec's buffers (``recv_into`` a preallocated frame buffer for large items,
§9 #2), every decoded message goes to a handler callback, and a broken peer is dropped with one
log line naming the reason (never a crash, busy loop or hang: EOF is a single callback, §9 #1).

Server side: the codec is created only after the first 11 bytes identified the generation
(§7.1). Writes coalesce a command and its small payload into one ``write`` and send large
arrays from their own memory; ``TCP_NODELAY`` is set on every socket (§9 #3).

Slow and greedy peers (issue 13):

* every message has an absolute deadline (``message_timeout``) from the first byte received
  for it: a peer trickling a frame one byte at a time cannot extend it;
* a peer that does not read pauses our reading from it (``pause_writing`` pauses reading,
  ``resume_writing`` resumes it), and more than ``max_write_buffer`` bytes waiting for it
  drops it;
* the owner can pause reading (a full command queue): decoded messages then wait in the codec
  instead of piling up, and the deadline is suspended (the stall is ours);
* when the connection ends, the codec's buffers are released at once and the callbacks are
  dropped, so no reference cycle keeps received bytes alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.pymodaq._wire import ReceiveBudget
from labbridge.protocol.pymodaq.codec import (
    Codec,
    detect_generation,
    make_codec,
)
from labbridge.protocol.pymodaq.messages import Dialect, Generation, Role
from labbridge.transport.tcp import peer_host, set_nodelay

log = logging.getLogger(__name__)

_COALESCE = 64 * 1024
_HEAD = 11
#: TCP keepalive (spec §9 #11): first probe after 30 s idle, then every 10 s, 3 probes.
_KEEPALIVE = (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def _set_keepalive(transport: asyncio.BaseTransport) -> None:
    """A peer that vanished (cable pulled, host crashed) is noticed within about a minute."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in _KEEPALIVE:
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:  # pragma: no cover - platform dependent
        pass


class PyMoDAQStream(asyncio.BufferedProtocol):
    """A connection speaking G1 or G3 through a sans-I/O codec.

    ``on_message(stream, msg)`` is called for each decoded message; ``on_close(stream, reason)``
    once, when the connection is gone (``reason`` is None for a clean close).
    """

    def __init__(self, role: Role, *, on_message: Callable[[PyMoDAQStream, object], None],
                 on_close: Callable[[PyMoDAQStream, str | None], None] | None = None,
                 on_open: Callable[[PyMoDAQStream], None] | None = None,
                 generation: Generation | None = None, dialect: Dialect = Dialect.G1A,
                 detect_dialect: bool = True, max_message: int = 256 * 1024 * 1024,
                 name: str = "pymodaq", message_timeout: float | None = 60.0,
                 max_write_buffer: int | None = None,
                 budget: ReceiveBudget | None = None) -> None:
        self.role = role
        self.name = name
        self._on_message = on_message
        self._on_close = on_close
        self._on_open = on_open
        self._dialect = dialect
        self._detect_dialect = detect_dialect
        self.max_message = max_message
        #: Seconds from the first byte of a message to its last (None = no limit).
        self.message_timeout = message_timeout
        #: Bytes our side may have queued for a peer that does not read before it is dropped.
        self.max_write_buffer = (max_write_buffer if max_write_buffer is not None
                                 else max_message + 16 * 1024 * 1024)
        self._budget = budget
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = "?"
        self.codec: Codec | None = None
        self.generation: Generation | None = None
        self._head = bytearray(_HEAD)
        self._head_len = 0
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        self._pauses: set[str] = set()
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.close_reason: str | None = None
        self.bytes_received = 0
        #: Whole messages received, and loop time of the last one (or of the connection):
        #: how long a connection has been idle or stalled (slot eviction, issue 13).
        self.messages_received = 0
        self.last_progress = self._loop.time()
        if generation is not None:
            self._set_codec(generation)

    # -- setup ------------------------------------------------------------------------------------
    def _set_codec(self, generation: Generation) -> None:
        self.generation = generation
        self.codec = make_codec(generation, self.role, dialect=self._dialect,
                                detect=self._detect_dialect, max_message=self.max_message,
                                budget=self._budget)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        _set_keepalive(transport)
        self.host = peer_host(transport)
        self.peer = f"{self.host}:{(transport.get_extra_info('peername') or ('', 0))[1]}"
        self.last_progress = self._loop.time()
        if self._on_open is not None:
            self._on_open(self)

    # -- receiving --------------------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.codec is None:
            return memoryview(self._head)[self._head_len :]
        try:
            return self.codec.get_buffer(sizehint)
        except ProtocolError as exc:  # e.g. the receive budget is exhausted
            self.fail(f"{exc.kind}: {exc}")
            # asyncio needs somewhere to write the bytes already on their way; they are dropped
            return memoryview(bytearray(_HEAD))

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None:
            return  # failed in get_buffer: these bytes go nowhere
        self.bytes_received += nbytes
        try:
            if self.codec is None:
                self._head_len += nbytes
                gen = detect_generation(memoryview(self._head)[: self._head_len])
                if gen is None:
                    return
                self._set_codec(gen)
                assert self.codec is not None
                log.info("%s: %s client at %s", self.name, gen.name, self.peer)
                self.codec.receive_data(self._head)
            elif not self.codec.buffer_updated(nbytes) and not self._pauses and (
                    self._deadline is not None or self.message_timeout is None):
                # The read only went on filling a frame's array: no message can be complete,
                # and the deadline armed at the message's first byte stands (what
                # _drain_events and _watch_deadline would conclude), read after read.
                return
            self._drain_events()
        except ProtocolError as exc:
            self.fail(f"{exc.kind}: {exc}")

    def _drain_events(self) -> None:
        codec = self.codec
        assert codec is not None
        progress = False
        while self.transport is not None and not self._pauses - {"write"}:
            ev = codec.next_event()
            if ev is NEED_DATA:
                break
            progress = True
            self.messages_received += 1
            self.last_progress = self._loop.time()
            try:
                self._on_message(self, ev)
            except ProtocolError:
                raise
            except Exception:  # a handler bug must not kill the loop or other clients
                log.exception("%s: handler failed on %r from %s", self.name, ev, self.peer)
        self._watch_deadline(progress)

    def _watch_deadline(self, progress: bool) -> None:
        """Arm the message deadline at a message's first byte; never extend it for later
        bytes of the same message (a trickle cannot). Suspended while we paused reading."""
        if self.transport is None or self.message_timeout is None:
            return
        codec = self.codec
        busy = codec.in_message if codec is not None else self._head_len > 0
        if self._pauses - {"write"}:
            busy = False
        if busy and (self._deadline is None or progress):
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self._loop.call_later(self.message_timeout, self._expired)
        elif not busy and self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        self.fail(f"timeout: a message was not complete {self.message_timeout:g} s after "
                  "its first byte")

    def eof_received(self) -> bool:
        reason: str | None = None
        try:
            if self.codec is not None:
                self.codec.receive_eof()
            elif self._head_len:
                reason = "truncated: peer closed before a whole client type"
        except ProtocolError as exc:
            reason = f"{exc.kind}: {exc}"
        self._finish(reason)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None and exc is not None:
            self.close_reason = f"connection lost: {exc}"
        self._finish(self.close_reason)

    # -- flow control -----------------------------------------------------------------------------
    def pause_reading(self, reason: str) -> None:
        """Stop reading from the peer for ``reason`` (until :meth:`resume_reading`)."""
        if self.transport is None:
            return
        if not self._pauses:
            with contextlib.suppress(RuntimeError):  # transport closing
                self.transport.pause_reading()
        self._pauses.add(reason)
        self._watch_deadline(False)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if self.transport is None:
            return
        if not self._pauses:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()
        if self.codec is not None and not self._pauses - {"write"}:
            try:
                self._drain_events()  # messages decoded while the owner was paused
            except ProtocolError as exc:
                self.fail(f"{exc.kind}: {exc}")

    @property
    def reading_paused(self) -> bool:
        return bool(self._pauses)

    # -- sending ----------------------------------------------------------------------------------
    def send(self, msg: object) -> None:
        """Encode and write one message (coalesced; big arrays written from their memory)."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError(f"{self.name}: connection to {self.peer} is closed")
        if self.codec is None:
            raise ConnectionError(f"{self.name}: generation not known yet")
        chunks = self.codec.send_chunks(msg)
        transport = self.transport
        small: list[Any] = []
        for c in chunks:
            if len(c) >= _COALESCE:
                if small:
                    transport.write(b"".join(small))
                    small = []
                transport.write(c)
            else:
                small.append(c)
        if small:
            transport.write(b"".join(small))
        queued = transport.get_write_buffer_size()
        if queued > self.max_write_buffer:
            self.fail(f"slow_reader: {queued} bytes queued for a peer that does not read "
                      f"(limit {self.max_write_buffer})")

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        await self._write_ok.wait()
        if self.transport is None:
            raise ConnectionError(f"{self.name}: connection to {self.peer} is closed")

    def pause_writing(self) -> None:
        # The peer does not read: stop reading what it sends until it does (backpressure).
        self._write_ok.clear()
        self.pause_reading("write")

    def resume_writing(self) -> None:
        self._write_ok.set()
        self.resume_reading("write")

    # -- closing ----------------------------------------------------------------------------------
    def fail(self, reason: str) -> None:
        """Drop this connection because of ``reason`` (logged once)."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.transport is not None:
            self.transport.abort()
        self._finish(reason)

    def reset(self, reason: str) -> None:
        """Refuse the peer: drop the connection with a TCP reset (RST), not a FIN.

        The real PyMoDAQ client (every generation, up to 5.x: ``Socket.check_received_length``
        never tests ``recv() == b""``) spins at 100 % CPU for ever on a clean EOF; a reset makes
        its next send or receive raise instead, which ends its connection (ADR 0171)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.fail(reason)

    def close(self, grace: float | None = 5.0) -> None:
        """Close after what is queued for the peer is written; a peer that does not take it
        within ``grace`` seconds is dropped (a closing connection holds no slot or buffer for
        ever)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            if grace is not None:
                self._linger = self._loop.call_later(
                    grace, self.fail, f"timeout: peer did not take our last bytes in {grace:g} s")

    def _finish(self, reason: str | None) -> None:
        if self.transport is None and self._closed.done():
            return
        if reason is not None:
            if self.close_reason is None:
                self.close_reason = reason
            log.warning("%s: closing connection from %s: %s", self.name, self.peer, reason)
        transport, self.transport = self.transport, None
        self._write_ok.set()
        for timer in (self._deadline, self._linger):
            if timer is not None:
                timer.cancel()
        self._deadline = self._linger = None
        if transport is not None and not transport.is_closing():
            transport.close()
        if self.codec is not None:
            self.codec.close()  # release received bytes now, not when the GC finds a cycle
        if not self._closed.done():
            self._closed.set_result(reason)
            if self._on_close is not None:
                try:
                    self._on_close(self, reason)
                except Exception:
                    log.exception("%s: close handler failed", self.name)
        # The owner's callbacks refer back to it (and it to us): drop them.
        self._on_message = _ignore
        self._on_close = None
        self._on_open = None

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def wait_closed(self) -> str | None:
        return await asyncio.shield(self._closed)


def _ignore(stream: PyMoDAQStream, msg: object) -> None:
    """Handler of a closed stream."""
