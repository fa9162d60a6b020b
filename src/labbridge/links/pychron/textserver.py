"""A one-request-per-connection text server (TCP) with a UDP twin, for the legacy faces.

Both the Qtegra RemoteControlServer (spec pychron.md section 12) and the legacy
RemoteHardwareServer (section 10) take one unframed text request per TCP connection, answer
it and close; over UDP one datagram in, one datagram out. They differ only in what they
answer, so both are this server with a different ``handler``.

A request ends (spec 3.2, via :class:`~labbridge.protocol.pychron.raw.RawRequestReader`) at a
CR or LF, at the peer's half-close, or after a quiet gap with no new bytes (clients that send no
terminator). It may hold at most ``max_request`` bytes; beyond that the peer gets
``oversize_reply`` and the connection is closed. It must be whole within ``request_timeout``
of its first byte, however the bytes trickle in (``timeout_reply`` otherwise). Every
connection is served concurrently on the one event loop: a handler that takes long (a slow
device) holds only its own connection. Connections are admitted through the transport's fair
slots (``max_connections``, ``max_per_address``, ``max_buffered`` bytes of partial requests in
all): when full, the connection idle longest makes room for a newcomer. A peer that does not
read its reply is dropped one ``linger`` after the close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from labbridge.protocol.pychron.raw import RawRequest, RawRequestReader, RawRequestTooLarge
from labbridge.transport.endpoint import Endpoint
from labbridge.transport.slots import Slot, per_address
from labbridge.transport.tcp import TcpUdpServer, peer_host

log = logging.getLogger(__name__)

#: ``handler(request_text, peer_host, udp) -> reply bytes`` (or an awaitable of them);
#: ``udp`` is True for a datagram (its source address can be forged: read-only by default).
TextHandler = Callable[[str, str, bool], "bytes | Awaitable[bytes]"]


class _OneShot(asyncio.Protocol):
    def __init__(self, server: OneShotTextServer) -> None:
        self.server = server
        self.reader = RawRequestReader(server.max_request)
        self.transport: asyncio.Transport | None = None
        self.peer = "local"
        self.timer: asyncio.TimerHandle | None = None  # idle, quiet gap, linger, abort
        self.deadline: asyncio.TimerHandle | None = None  # from the request's first byte
        self.task: asyncio.Future[bytes] | None = None
        self.answered = False
        #: Fair-slot reports to the server's slot table (TcpServer sets the real one).
        self.slot = Slot.detached()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_host(transport)
        self._arm(self.server.first_request_timeout, self._idle_close)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.reader.done:
            return  # one request per connection; later bytes are dropped
        self._cancel()
        if self.deadline is None:
            # The first byte: the whole request must follow within request_timeout; a
            # trickle of bytes cannot move this (issue 13).
            self.deadline = asyncio.get_running_loop().call_later(
                self.server.request_timeout, self._on_deadline)
        try:
            self.reader.receive_data(data)
        except RawRequestTooLarge as exc:
            log.warning("%s: %s: %s", self.server.name, self.peer, exc)
            self._reply(self.server.oversize_reply)
            return
        ev = self.reader.next_event()
        if isinstance(ev, RawRequest):
            self._run(ev.text)
        else:
            self._arm(self.server.quiet_gap, self._on_quiet)
            self.slot.hold(self.reader.buffered)

    def eof_received(self) -> bool:
        self._cancel()
        if self.answered:
            # The peer read our reply and closed: done.
            if self.transport is not None:
                self.transport.close()
            return False
        if not self.answered and self.task is None:
            req = self.reader.flush()
            self._run(req.text if req is not None else "")
        return True  # keep our side open until the reply is written

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._cancel_deadline()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None

    def _on_quiet(self) -> None:
        self.timer = None
        if self.answered or self.task is not None:
            return
        req = self.reader.flush()
        self._run(req.text if req is not None else "")

    def _on_deadline(self) -> None:
        self.deadline = None
        if self.answered or self.task is not None:
            return
        log.info("%s: %s did not finish its request within %.1f s of its first byte; "
                 "closing", self.server.name, self.peer, self.server.request_timeout)
        self._reply(self.server.timeout_reply)

    def _idle_close(self) -> None:
        self.timer = None
        if self.task is None and not self.answered and self.transport is not None:
            log.info("%s: %s sent nothing; closing", self.server.name, self.peer)
            self.transport.close()

    def _run(self, text: str) -> None:
        self._cancel_deadline()
        self.slot.active()
        self.slot.hold(0)
        if self.transport is not None:
            self.transport.pause_reading()
        try:
            result = self.server.handler(text, self.peer, False)
        except Exception:
            log.exception("%s: handler failed on %r", self.server.name, text[:80])
            result = self.server.failure_reply
        if isinstance(result, bytes):
            self._reply(result)
            return
        fut = asyncio.ensure_future(result)
        self.task = fut
        self.slot.set_busy(True)
        self.server._tasks.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: asyncio.Future[bytes]) -> None:
        self.server._tasks.discard(fut)
        self.slot.set_busy(False)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("%s: handler failed: %r", self.server.name, exc)
            self._reply(self.server.failure_reply)
        else:
            self._reply(fut.result())

    def _reply(self, data: bytes) -> None:
        self.answered = True
        self._cancel_deadline()
        self.slot.finished()
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if data:
            tr.write(data)
        # Half-close after the reply, then close; unread request bytes could otherwise turn
        # our close into an RST that destroys the reply in flight.
        if tr.can_write_eof():
            tr.write_eof()
            tr.resume_reading()
            self._arm(self.server.linger, self._close)
        else:
            self._close()

    def _close(self) -> None:
        self.timer = None
        tr = self.transport
        if tr is None:
            return
        tr.close()  # flushes the reply, then closes
        # A peer that never reads the reply would hold the connection for ever: give it one
        # more linger, then drop it.
        self._arm(self.server.linger, tr.abort)

    def _arm(self, delay: float, cb: Callable[[], Any]) -> None:
        self._cancel()
        self.timer = asyncio.get_running_loop().call_later(delay, cb)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class OneShotTextServer:
    """Service: TCP (one request per connection) plus optional UDP, one handler."""

    def __init__(self, handler: TextHandler, host: str = "127.0.0.1", port: int = 0, *,
                 udp: bool = False, udp_port: int | None = None, name: str = "text-server",
                 purpose: str = "", quiet_gap: float = 0.05, max_request: int = 64 * 1024,
                 first_request_timeout: float = 30.0, linger: float = 1.0,
                 oversize_reply: bytes = b"", failure_reply: bytes = b"",
                 timeout_reply: bytes | None = None, request_timeout: float = 10.0,
                 max_connections: int = 1024, max_per_address: int | None = None,
                 max_buffered: int = 32 * 1024 * 1024) -> None:
        self.handler = handler
        self.host = host
        self.name = name
        self.purpose = purpose
        self.quiet_gap = quiet_gap
        self.max_request = max_request
        self.first_request_timeout = first_request_timeout
        self.linger = linger
        self.oversize_reply = oversize_reply
        self.failure_reply = failure_reply
        #: Answer to a request not whole within ``request_timeout`` of its first byte.
        self.timeout_reply = oversize_reply if timeout_reply is None else timeout_reply
        self.request_timeout = request_timeout
        self._net = TcpUdpServer(lambda: _OneShot(self), self._datagram, host, port, udp=udp,
                                 udp_port=udp_port, name=name, purpose=purpose,
                                 max_connections=max_connections,
                                 max_per_address=per_address(max_connections, max_per_address),
                                 max_buffered=max_buffered,
                                 failure_reply=failure_reply)
        #: Handler tasks of TCP requests (the UDP side tracks its own).
        self._tasks: set[asyncio.Future[bytes]] = set()

    @property
    def port(self) -> int | None:
        return self._net.port

    @property
    def udp_port(self) -> int | None:
        return self._net.udp_port

    async def start(self) -> None:
        await self._net.start()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._net.stop()

    def endpoints(self) -> list[Endpoint]:
        return self._net.endpoints()

    def _datagram(self, data: bytes, host: str) -> bytes | Awaitable[bytes]:
        if len(data) > self.max_request:
            return self.oversize_reply
        return self.handler(data.decode("utf-8", "replace").strip(), host, True)
