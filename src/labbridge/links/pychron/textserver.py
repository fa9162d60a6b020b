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

With ``http`` (a handler of :class:`~labbridge.protocol.pychron.httpget.HttpRequest`), a
connection whose first bytes begin an HTTP request line (``GET ``) is read as one HTTP/1.0
request instead (up to its empty line; same size bound, same deadline from the first byte, no
quiet gap: the form has its own end) and answered in that form; HTTP-level faults (a bad
request line, a method other than GET, too long, not complete in time, a handler failure)
get an HTTP error reply. Other connections are served exactly as without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

from labbridge import __version__
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.pychron.httpget import (
    HttpRequest,
    HttpRequestError,
    HttpRequestReader,
    error_response,
    looks_like_http,
    response,
)
from labbridge.protocol.pychron.raw import RawRequest, RawRequestReader, RawRequestTooLarge
from labbridge.transport.endpoint import Endpoint
from labbridge.transport.slots import Slot, per_address
from labbridge.transport.tcp import TcpUdpServer, peer_host

log = logging.getLogger(__name__)

#: ``handler(request_text, peer_host, udp) -> reply bytes`` (or an awaitable of them);
#: ``udp`` is True for a datagram (its source address can be forged: read-only by default).
TextHandler = Callable[[str, str, bool], "bytes | Awaitable[bytes]"]
#: ``http(request, peer_host) -> the whole HTTP reply`` (or an awaitable of it); build it
#: with :meth:`OneShotTextServer.http_reply` / :meth:`OneShotTextServer.http_error`.
HttpHandler = Callable[[HttpRequest, str], "bytes | Awaitable[bytes]"]


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
        #: "plain" or "http"; None while the first bytes cannot tell yet (HTTP enabled).
        self.form: str | None = None if server.http is not None else "plain"
        self.head = bytearray()  # the first bytes, while the form is undecided
        self.http: HttpRequestReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_host(transport)
        self._arm(self.server.first_request_timeout, self._idle_close)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.reader.done or self.task is not None or \
                (self.http is not None and self.http.done):
            return  # one request per connection; later bytes are dropped
        self._cancel()
        if self.deadline is None:
            # The first byte: the whole request must follow within request_timeout; a
            # trickle of bytes cannot move this (issue 13).
            self.deadline = asyncio.get_running_loop().call_later(
                self.server.request_timeout, self._on_deadline)
        if self.form is None:
            self.head += data
            verdict = looks_like_http(self.head)
            if verdict is None:  # a few bytes that may begin "GET ": wait (quiet gap: plain)
                self._arm(self.server.quiet_gap, self._on_quiet)
                self.slot.hold(len(self.head))
                return
            data, self.head = bytes(self.head), bytearray()
            self.form = "http" if verdict else "plain"
            if verdict:
                self.http = HttpRequestReader(self.server.max_request)
        if self.http is not None:
            self._http_data(data)
            return
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

    def _http_data(self, data: bytes) -> None:
        assert self.http is not None
        try:
            self.http.receive_data(data)
            ev = self.http.next_event()
        except HttpRequestError as exc:
            self._http_refuse(exc)
            return
        if ev is NEED_DATA:
            self.slot.hold(self.http.buffered)  # no quiet gap: the deadline bounds it
        else:
            assert isinstance(ev, HttpRequest)
            self._run_http(ev)

    def _http_refuse(self, exc: HttpRequestError) -> None:
        log.info("%s: %s: HTTP request refused: %s", self.server.name, self.peer, exc)
        self._reply(self.server.http_error(exc))

    def eof_received(self) -> bool:
        self._cancel()
        if self.answered:
            # The peer read our reply and closed: done.
            if self.transport is not None:
                self.transport.close()
            return False
        if self.task is None:
            if self.http is not None:
                try:
                    hreq = self.http.receive_eof()
                except HttpRequestError as exc:
                    self._http_refuse(exc)
                    return True
                if hreq is not None:
                    self._run_http(hreq)
                    return True
                self._reply(b"")
                return True
            self._decide_plain()
            req = self.reader.flush()
            self._run(req.text if req is not None else "")
        return True  # keep our side open until the reply is written

    def _decide_plain(self) -> None:
        """The first bytes did not turn out to be HTTP: they start a plain request."""
        if self.form is None:
            self.form = "plain"
            head, self.head = bytes(self.head), bytearray()
            if head:
                self.reader.receive_data(head)  # (fewer bytes than any limit)

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
        self._decide_plain()
        req = self.reader.flush()
        self._run(req.text if req is not None else "")

    def _on_deadline(self) -> None:
        self.deadline = None
        if self.answered or self.task is not None:
            return
        log.info("%s: %s did not finish its request within %.1f s of its first byte; "
                 "closing", self.server.name, self.peer, self.server.request_timeout)
        if self.http is not None:
            self._reply(self.server.http_error(HttpRequestError(
                408, f"request not complete within {self.server.request_timeout:g} s of its "
                     "first byte")))
            return
        self._reply(self.server.timeout_reply)

    def _idle_close(self) -> None:
        self.timer = None
        if self.task is None and not self.answered and self.transport is not None:
            log.info("%s: %s sent nothing; closing", self.server.name, self.peer)
            self.transport.close()

    def _run(self, text: str) -> None:
        self._start(lambda: self.server.handler(text, self.peer, False), text)

    def _run_http(self, req: HttpRequest) -> None:
        http = self.server.http
        assert http is not None
        self._start(lambda: http(req, self.peer), req.target)

    def _failure_reply(self) -> bytes:
        if self.http is not None:
            return self.server.http_error(HttpRequestError(500, "internal error"))
        return self.server.failure_reply

    def _start(self, call: Callable[[], bytes | Awaitable[bytes]], what: str) -> None:
        self._cancel_deadline()
        self.slot.active()
        self.slot.hold(0)
        if self.transport is not None:
            self.transport.pause_reading()
        try:
            result = call()
        except Exception:
            log.exception("%s: handler failed on %r", self.server.name, what[:80])
            result = self._failure_reply()
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
            self._reply(self._failure_reply())
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
                 max_buffered: int = 32 * 1024 * 1024, http: HttpHandler | None = None,
                 ) -> None:
        self.handler = handler
        #: The handler of the HTTP GET form (None: plain requests only).
        self.http = http
        #: The ``Server`` header of HTTP replies.
        self.http_server = f"labbridge/{__version__}"
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

    def http_reply(self, req: HttpRequest, body: bytes, status: int = 200) -> bytes:
        """An HTTP reply to ``req`` (``status``, plain-text ``body``), in the form's shape."""
        return response(status, body, version=req.version, date=formatdate(usegmt=True),
                        server=self.http_server)

    def http_error(self, exc: HttpRequestError) -> bytes:
        """The HTTP error reply for ``exc`` (status line with its reason, ``Connection:
        close``, one plain line of explanation)."""
        return error_response(exc, date=formatdate(usegmt=True), server=self.http_server)

    def _datagram(self, data: bytes, host: str) -> bytes | Awaitable[bytes]:
        if len(data) > self.max_request:
            return self.oversize_reply
        return self.handler(data.decode("utf-8", "replace").strip(), host, True)
