"""Client side of the Pychron command channel (spec pychron.md sections 3.6, 7, 17).

:class:`PychronClient` speaks every request form a server may want:

* ``braced`` -- one persistent connection, requests pipelined, replies matched in order
  (labbridge nodes);
* ``plain`` / ``json`` -- a new TCP connection per request, reply read until the server
  closes (real Pychron servers; zero bytes then close is an unknown command);
* ``udp=True`` -- one datagram each way, from a fresh socket per request so a late reply to an
  abandoned request can never be taken for the next one.

Retries: only requests marked idempotent (``Get*``, ``Read``, ``Ping``) are re-sent after a
timeout or a lost connection. An actuation whose reply is lost raises :class:`ReplyLost`: the
caller must re-read the state, never re-send (real defect 4: valves actuated twice).

TLS (``ssl=`` a client context from :func:`labbridge.transport.tls.client_context`): TCP
requests, braced or one-shot, go over TLS to a labbridge command server that has a ``tls``
section; the client certificate names who we are. A server that refuses our certificate
raises :class:`TlsRefused` (the request was never read, so it is safe to say so); UDP has no
TLS.

Reconnecting: after a failed connection attempt the next one waits for an exponentially
growing delay (``backoff``), however the caller loops, so a dead server is not hammered; the
client logs once when the server becomes unreachable and once when it is reachable again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
from collections import deque
from typing import Any, Literal, cast

from labbridge.protocol.base import ProtocolError
from labbridge.protocol.pychron.braced import BracedFramer, encode_braced
from labbridge.protocol.pychron.messages import format_json_request, parse_error_reply
from labbridge.transport.backoff import Backoff
from labbridge.transport.tcp import abort_discarding, set_nodelay
from labbridge.transport.tls import (
    REFUSED_AT_HANDSHAKE,
    certificate_refused,
    connect_failure,
    handshake_unconfirmed,
)

log = logging.getLogger(__name__)

FramingName = Literal["braced", "plain", "json"]

IDEMPOTENT_PREFIXES = ("Get", "Read", "Ping", "Is", "In")


def is_idempotent(command: str) -> bool:
    """Requests that may be re-sent safely (spec 3.6): queries, never actuations."""
    word = command.strip().partition(" ")[0]
    if word.startswith("{"):
        return False
    return word.startswith(IDEMPOTENT_PREFIXES)


class PychronClientError(Exception):
    """Base class of client-side failures."""


class Unreachable(PychronClientError):
    """The server could not be connected to."""


class TlsRefused(Unreachable):
    """The server refused our TLS client certificate (or we refused its certificate): no
    request was carried out."""


class NoReply(PychronClientError):
    """No reply within the timeout (the server may have failed while handling it)."""


class ReplyLost(PychronClientError):
    """A non-idempotent request was sent but its reply never came: outcome unknown."""


class UnknownCommand(PychronClientError):
    """The server closed the connection without a byte (real servers do this)."""


class ErrorReply(PychronClientError):
    """The server answered ``ERROR nnn : message`` (or Qtegra's ``Error: ...``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        parsed = parse_error_reply(text)
        self.code: int | None = parsed[0] if parsed else None
        self.message = parsed[1] if parsed else text


class _Expired(Exception):
    """Internal: the oldest request on a persistent connection got no reply in time."""


class _BracedProtocol(asyncio.Protocol):
    """Persistent braced connection: replies resolve waiting futures in order."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.framer = BracedFramer()
        # Replies come back in request order, so only the oldest waiting request can time out
        # first: one watchdog timer per connection instead of one timer per request.
        self.waiting: deque[tuple[asyncio.Future[str], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed = self.loop.create_future()
        # Requests issued in one loop iteration go out in one write (one syscall).
        self._out: list[bytes] = []
        self.replies = 0
        self.ssl_object: Any = None

    def request(self, frame: bytes, timeout: float) -> asyncio.Future[str]:
        loop = self.loop
        fut: asyncio.Future[str] = loop.create_future()
        deadline = loop.time() + timeout
        waiting = self.waiting
        idle = not waiting
        waiting.append((fut, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check)
        if idle and not self._out:
            # Nothing else in flight (one request at a time): write now, no extra loop pass.
            tr = self.transport
            if tr is not None and not tr.is_closing():
                tr.write(frame)
            return fut
        # Pipelined: requests made in the same loop pass go out in one write.
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(frame)
        return fut

    def _check(self) -> None:
        self._watchdog = None
        while self.waiting and self.waiting[0][0].done():
            self.waiting.popleft()
        if not self.waiting:
            return
        _fut, deadline = self.waiting[0]
        if self.loop.time() >= deadline:
            # The stream is out of step now: a late reply would answer the next request.
            # Requests still unsent are discarded, never delivered once the link is back.
            self._fail(_Expired())
            if self.transport is not None:
                abort_discarding(self.transport)
            return
        self._watchdog = self.loop.call_at(deadline, self._check)

    def _flush(self) -> None:
        out, self._out = self._out, []
        tr = self.transport
        if out and tr is not None and not tr.is_closing():
            tr.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck-type them.
        self.transport = cast(asyncio.Transport, transport)
        self.ssl_object = transport.get_extra_info("ssl_object")
        set_nodelay(transport)

    def data_received(self, data: bytes) -> None:
        try:
            for item in self.framer.feed(data):
                if item.__class__ is not str:
                    raise item  # type: ignore[misc]
                self.replies += 1
                if self.waiting:
                    fut, _ = self.waiting.popleft()
                    if not fut.done():
                        fut.set_result(item)
                else:
                    log.warning("unsolicited reply %r", item[:80])
        except ProtocolError as exc:
            log.warning("bad reply frame: %s; dropping the connection", exc)
            self._fail(exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        refused = certificate_refused(exc)
        if refused is None and not self.replies and handshake_unconfirmed(self.ssl_object):
            refused = REFUSED_AT_HANDSHAKE
        self._fail(TlsRefused(refused) if refused is not None
                   else exc or ConnectionResetError("connection closed by the server"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            fut, _ = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, _Expired | TlsRefused)
                                  else ConnectionResetError(str(exc)))


class PychronClient:
    """Async client of one Pychron-family command server."""

    def __init__(self, host: str, port: int, *, framing: FramingName = "braced",
                 udp: bool = False, timeout: float = 2.0, connect_timeout: float | None = None,
                 retries: int = 2, terminator: bytes = b"\r",
                 backoff: Backoff | None = None, ssl: _ssl.SSLContext | None = None) -> None:
        if framing not in ("braced", "plain", "json"):
            raise ValueError(f"unknown framing {framing!r}")
        if ssl is not None and udp:
            raise ValueError("TLS runs over TCP; UDP requests stay plain")
        #: The TLS client context (None: plain TCP).
        self.ssl = ssl
        self.host = host
        self.port = port
        self.framing: FramingName = framing
        self.udp = udp
        self.timeout = timeout
        self.connect_timeout = connect_timeout if connect_timeout is not None else timeout
        self.retries = retries
        self.terminator = terminator
        self.backoff = backoff or Backoff(initial=0.05, maximum=2.0)
        self._proto: _BracedProtocol | None = None
        self._frames: dict[str, bytes] = {}  # request text -> braced frame (bounded)
        self._connect_lock = asyncio.Lock()
        #: Reconnect pacing: no connection attempt before this loop time.
        self._retry_at = 0.0
        self._down: str | None = None  # why the server is unreachable (None: it is not)
        self._connect_backoff = Backoff(initial=self.backoff.initial,
                                        maximum=self.backoff.maximum,
                                        factor=self.backoff.factor, jitter=self.backoff.jitter)
        #: Connection attempts made (for tests and diagnostics).
        self.connect_attempts = 0

    def __repr__(self) -> str:
        kind = "udp" if self.udp else self.framing
        tls = " tls" if self.ssl is not None else ""
        return f"<PychronClient {self.host}:{self.port} {kind}{tls}>"

    @property
    def connected(self) -> bool:
        return self._proto is not None and self._proto.transport is not None and \
            not self._proto.transport.is_closing()

    # -- public API ---------------------------------------------------------------------------
    async def ask(self, request: str, *, idempotent: bool | None = None,
                  timeout: float | None = None) -> str:
        """Send ``request`` (text, ``Command args``) and return the reply text.

        Error replies are returned as text; use :meth:`call` to have them raised.
        """
        if idempotent is None:
            idempotent = is_idempotent(request)
        attempts = 1 + (self.retries if idempotent else 0)
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt and not isinstance(last, Unreachable):
                await asyncio.sleep(self.backoff.next())  # (connecting paces itself)
            try:
                reply = await self._ask_once(request, timeout or self.timeout)
                self.backoff.reset()
                return reply
            except Unreachable as exc:
                last = exc
            except (NoReply, ConnectionError) as exc:
                if not idempotent:
                    raise ReplyLost(f"{self}: no reply to {request!r} ({exc}); it may or may "
                                    "not have been carried out: read the state, do not "
                                    "re-send") from exc
                last = exc
        assert last is not None
        if isinstance(last, PychronClientError):
            raise last
        raise NoReply(f"{self}: {request!r}: {last}") from last

    async def call(self, request: str, **kw: Any) -> str:
        """Like :meth:`ask` but raise :class:`ErrorReply` for an error answer."""
        reply = await self.ask(request, **kw)
        if reply[:5].upper() == "ERROR":
            raise ErrorReply(reply)
        return reply

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(proto.closed)

    async def __aenter__(self) -> PychronClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- one attempt --------------------------------------------------------------------------
    def _payload(self, request: str) -> str:
        if self.framing == "json" and not request.lstrip().startswith("{"):
            cmd, _, args = request.strip().partition(" ")
            return format_json_request(cmd, value=args) if args else format_json_request(cmd)
        return request

    async def _ask_once(self, request: str, timeout: float) -> str:
        if self.udp:
            return await self._ask_udp(self._payload(request), timeout)
        if self.framing == "braced":
            return await self._ask_braced(request, timeout)
        return await self._ask_oneshot(self._payload(request), timeout)

    async def _open(self, factory: Any) -> Any:
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)  # backoff after a failed attempt
        self.connect_attempts += 1
        tls: dict[str, Any] = {}
        if self.ssl is not None:
            tls = {"ssl": self.ssl, "ssl_handshake_timeout": self.connect_timeout}
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation
            # that arrives as the connection completes, and the caller (a StatusMonitor
            # being stopped) would then run on and its stop() never return.
            async with asyncio.timeout(self.connect_timeout):
                result = await loop.create_connection(factory, self.host, self.port, **tls)
        except TimeoutError:
            raise self._unreachable(f"connect timed out after {self.connect_timeout} s") \
                from None
        except _ssl.SSLError as exc:
            raise self._unreachable(connect_failure(exc), TlsRefused) from exc
        except OSError as exc:
            raise self._unreachable(f"cannot connect: {exc.strerror or exc}") from exc
        if self._down is not None:
            log.info("%s: reachable again", self)
            self._down = None
        self._retry_at = 0.0
        self._connect_backoff.reset()
        return result

    def _unreachable(self, reason: str, kind: type[Unreachable] = Unreachable) -> Unreachable:
        self._retry_at = asyncio.get_running_loop().time() + self._connect_backoff.next()
        if self._down is None:
            log.warning("%s: %s; further attempts back off (up to %.1f s apart)", self,
                        reason, self._connect_backoff.maximum)
        self._down = reason
        return kind(f"{self}: {reason}")

    async def _ask_braced(self, request: str, timeout: float) -> str:
        frame = self._frames.get(request)
        if frame is None:
            frame = encode_braced(request)
            if len(request) <= 128:  # a client asks the same few things: keep their frames
                if len(self._frames) >= 256:
                    self._frames.clear()
                self._frames[request] = frame
        if not self.connected:
            async with self._connect_lock:
                if not self.connected:
                    _, self._proto = await self._open(_BracedProtocol)
        proto = self._proto
        assert proto is not None and proto.transport is not None
        try:
            return await proto.request(frame, timeout)
        except TlsRefused as exc:
            if self._proto is proto:
                self._proto = None
            raise self._unreachable(str(exc), TlsRefused) from None
        except _Expired:
            log.warning("%s: no reply to %r within %.1f s; dropping the connection", self,
                        request, timeout)
            if self._proto is proto:
                self._proto = None
            raise NoReply(f"{self}: no reply to {request!r} within {timeout} s") from None

    async def _ask_oneshot(self, payload: str, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**22, loop=loop)
        transport, _ = await self._open(lambda: asyncio.StreamReaderProtocol(reader))
        ssl_object = transport.get_extra_info("ssl_object")
        chunks: list[bytes] = []
        size = 0
        try:
            transport.write(payload.encode("utf-8") + self.terminator)
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > 2**22:
                        raise PychronClientError(f"{self}: reply larger than 4 MiB")
        except TimeoutError:
            # Given up on: the request must not reach the server later (partition healing).
            abort_discarding(transport)
            raise NoReply(f"{self}: no reply to {payload!r} within {timeout} s "
                          "(a server-side exception is likely)") from None
        except OSError as exc:  # a reset, or a TLS alert
            refused = certificate_refused(exc)
            if refused is None and not chunks and handshake_unconfirmed(ssl_object):
                refused = REFUSED_AT_HANDSHAKE
            if refused is not None:
                raise self._unreachable(refused, TlsRefused) from None
            if isinstance(exc, _ssl.SSLError):
                raise ConnectionResetError(f"{self}: {connect_failure(exc)}") from None
            raise
        finally:
            transport.close()
        if not chunks and handshake_unconfirmed(ssl_object):
            raise self._unreachable(REFUSED_AT_HANDSHAKE, TlsRefused)
        if not chunks:
            raise UnknownCommand(f"{self}: server closed without replying to {payload!r}")
        return b"".join(chunks).decode("utf-8", "replace")

    async def _ask_udp(self, payload: str, timeout: float) -> str:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bytes] = loop.create_future()

        class _P(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if not got.done():
                    got.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not got.done():
                    got.set_exception(ConnectionRefusedError(str(exc)))

        try:
            transport, _ = await loop.create_datagram_endpoint(
                _P, remote_addr=(self.host, self.port))
        except OSError as exc:
            raise Unreachable(f"{self}: {exc.strerror or exc}") from exc
        try:
            transport.sendto(payload.encode("utf-8"))
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see _open
                    data = await got
            except TimeoutError:
                raise NoReply(f"{self}: no UDP reply to {payload!r} within {timeout} s") \
                    from None
            except ConnectionRefusedError as exc:
                raise Unreachable(f"{self}: {exc}") from exc
        finally:
            transport.close()
        return data.decode("utf-8", "replace")
