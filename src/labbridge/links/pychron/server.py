"""The RemoteCommandServer: Pychron-family commands over TCP (and UDP) on one event loop.

Each TCP connection picks its framing from its first bytes (spec 3.5): braced frames keep the
connection open for any number of pipelined requests, answered in order; plain text and JSON
requests get one reply and the connection is closed, as the real Pychron server does. UDP
datagrams are plain requests answered with one datagram. Requests run concurrently: a slow
actuation holds only its own valve (per-valve locks in the device), never another client.

Limits (every buffer has one): braced frames are at most 65535 bytes and at most
``max_pipeline`` requests may wait per connection (reading pauses beyond that); a plain request
is at most 64 KiB; a partial braced frame older than ``frame_timeout`` is answered
``ERROR 902 : frame timeout`` and the connection closed; a connection that sends nothing for
``first_request_timeout`` is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from labbridge.access import AccessDenied, Action, Principal, Role
from labbridge.links.pychron.dispatch import Caller, Dispatcher, refusal_text
from labbridge.protocol.base import BufferOverflow, ProtocolError
from labbridge.protocol.pychron.braced import BracedFrameError, BracedFramer
from labbridge.protocol.pychron.braced import encode_braced as _encode_braced
from labbridge.protocol.pychron.messages import ErrorCode, error_text
from labbridge.protocol.pychron.raw import (
    Framing,
    RawRequest,
    RawRequestReader,
    RawRequestTooLarge,
    detect_framing,
)
from labbridge.transport.endpoint import Endpoint
from labbridge.transport.tcp import TcpUdpServer, peer_host

log = logging.getLogger(__name__)

#: Bytes detect_framing needs to decide (``{`` + 4 hex digits + ``}``).
_DETECT_BYTES = 6

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServerSettings:
    """Tunables of a command server (all have sensible defaults)."""

    def __init__(self, *, quiet_gap: float = 0.05, frame_timeout: float = 10.0,
                 first_request_timeout: float = 30.0, max_pipeline: int = 256,
                 max_raw_request: int = 64 * 1024, max_connections: int = 1024,
                 allow: Sequence[Network] | None = None, linger: float = 1.0) -> None:
        self.linger = linger
        self.quiet_gap = quiet_gap
        self.frame_timeout = frame_timeout
        self.first_request_timeout = first_request_timeout
        self.max_pipeline = max_pipeline
        self.max_raw_request = max_raw_request
        self.max_connections = max_connections
        # None: no extra filter (the node's access policy still decides); [] lets nobody in.
        self.allow = None if allow is None else list(allow)

    def allowed(self, host: str) -> bool:
        """The service's own connection filter (``allow:``), checked before the node's
        access policy; None lets everyone through to the policy."""
        if self.allow is None:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return host == "local"  # in-memory pipes and Unix sockets
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.allow)


class CommandConnection(asyncio.Protocol):
    """One client connection; framing chosen from the first bytes."""

    def __init__(self, dispatcher: Dispatcher, settings: ServerSettings,
                 name: str = "command-server") -> None:
        self.dispatcher = dispatcher
        self.settings = settings
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.mode: Framing | None = None
        self._head = bytearray()
        self._framer: BracedFramer | None = None
        self._reader: RawRequestReader | None = None
        # Requests run one after another per connection (a pipelining client expects its
        # "Open A" to be done before its "GetValveState A"); other connections run
        # concurrently. Framing-error replies take their place in the same sequence.
        self._backlog: deque[tuple[bool, str]] = deque()  # (is_request, text)
        self._inflight: asyncio.Future[str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._draining = False
        self._close_after_flush = False
        self._denied = False
        self._paused_by_queue = False
        self._paused_by_writer = False
        self._caller: Caller | None = None
        # Replies produced in one pass are written with one transport.write (one syscall).
        self._out: list[bytes] = []

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck-type them.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_host(transport)
        if not self.settings.allowed(self.peer):
            self._denied = True
            log.warning("%s: connection from %s is not on the allow-list", self.name, self.peer)
        elif not self.dispatcher.gate.may(Principal(self.peer, self.name), Role.OBSERVER):
            # No role at all on this node: every request gets ERROR 013 (the gate audits
            # the first one), whatever its framing.
            self._denied = True
        self._arm(self.settings.first_request_timeout, self._on_first_request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._draining:
            return  # lingering close: discard what the peer still sends
        self._cancel_timer()
        if self.mode is None:
            self._head += data
            mode = detect_framing(bytes(self._head[:_DETECT_BYTES]))
            if mode is None and len(self._head) >= _DETECT_BYTES:
                # Only blanks so far: not braced (that starts with '{'). Decide now and hand
                # the bytes to the raw reader, whose max_raw_request bounds them; waiting for
                # a non-blank byte would let a peer sending only spaces grow _head forever.
                mode = detect_framing(bytes(self._head)) or Framing.PLAIN
            if mode is None:
                self._arm(self.settings.quiet_gap, self._on_quiet)
                return
            self._start_mode(mode)
            data, self._head = bytes(self._head), bytearray()
        if self.mode is Framing.BRACED:
            self._braced_data(data)
        else:
            self._raw_data(data)

    def eof_received(self) -> bool:
        if self._closing or self._draining:
            return False
        self._cancel_timer()
        if self.mode is None and self._head:
            self._start_mode(Framing.PLAIN)
            head, self._head = bytes(self._head), bytearray()
            self._raw_data(head)
        if self._reader is not None and not self._reader.done:
            req = self._reader.flush()
            if req is None:
                req = RawRequest("")
            self._submit_raw(req)
            return not self._closing
        if self._framer is not None:
            try:
                self._framer.eof()
            except BracedFrameError as exc:
                log.info("%s: %s closed mid-frame: %s", self.name, self.peer, exc)
            if self._inflight is not None or self._backlog:
                self._close_after_flush = True
                return True
            return False
        # One-shot reply still pending: keep the write side open until it is sent.
        return self._inflight is not None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None
        self._backlog.clear()

    def pause_writing(self) -> None:
        self._paused_by_writer = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_by_writer = False
        self._update_reading()

    # -- modes --------------------------------------------------------------------------------
    def _start_mode(self, mode: Framing) -> None:
        self.mode = mode
        self._caller = Caller(self.peer, mode.value, via=self.name)
        if mode is Framing.BRACED:
            self._framer = BracedFramer()
        else:
            self._reader = RawRequestReader(self.settings.max_raw_request)

    def _braced_data(self, data: bytes) -> None:
        framer = self._framer
        assert framer is not None
        try:
            framer.receive_data(data)
        except BufferOverflow as exc:
            log.warning("%s: %s: %s; closing", self.name, self.peer, exc)
            self._push_text(error_text(ErrorCode.FRAME_HEADER, str(exc)))
            self._close_after_flush = True
            self._pump()
            return
        backlog = self._backlog
        for item in framer.drain():
            if isinstance(item, str):
                backlog.append((True, item))
            else:
                log.info("%s: bad frame from %s: %s", self.name, self.peer, item)
                backlog.append((False, item.reply_text()))
        self._pump()
        if self._closing:
            return
        if framer.suspect:
            self._arm(self.settings.quiet_gap, self._on_quiet)
        elif framer.buffered:
            self._arm(self.settings.frame_timeout, self._on_frame_timeout)

    def _raw_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        if reader.done:
            return
        try:
            reader.receive_data(data)
        except RawRequestTooLarge as exc:
            log.warning("%s: %s: %s; closing", self.name, self.peer, exc)
            self._push_text(error_text(ErrorCode.INVALID_COMMAND, str(exc)))
            self._close_after_flush = True
            self._pump()
            return
        ev = reader.next_event()
        if isinstance(ev, RawRequest):
            self._submit_raw(ev)
        else:
            self._arm(self.settings.quiet_gap, self._on_quiet)

    def _submit_raw(self, req: RawRequest) -> None:
        if req.dropped:
            log.info("%s: %s sent %d bytes after its request; dropped (one request per "
                     "connection)", self.name, self.peer, req.dropped)
        self._close_after_flush = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._submit(req.text)

    # -- requests and ordered replies ---------------------------------------------------------
    def _submit(self, text: str) -> None:
        self._backlog.append((True, text))
        self._pump()

    def _push_text(self, text: str) -> None:
        self._backlog.append((False, text))
        self._pump()

    def _pump(self) -> None:
        """Run queued requests in order until one has to wait for an asynchronous handler."""
        backlog = self._backlog
        while self._inflight is None and backlog and not self._closing:
            is_request, text = backlog.popleft()
            if not is_request:
                self._write(text)
                continue
            if self._denied:
                self._refuse(text)
                backlog.clear()
                self._close_after_flush = True
                break
            assert self._caller is not None
            result = self.dispatcher.dispatch(text, self._caller)
            if isinstance(result, str):
                self._write(result)
                continue
            fut = asyncio.ensure_future(result)
            self._inflight = fut
            fut.add_done_callback(self._on_done)
        self._send_out()
        self._update_reading()
        if self._inflight is None and not backlog and self._close_after_flush:
            self._close()

    def _on_done(self, fut: asyncio.Future[str]) -> None:
        if fut is not self._inflight:
            return
        self._inflight = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("%s: reply task failed: %r", self.name, exc)
            self._write(error_text(ErrorCode.FUNC_CALL, exc, ""))
        else:
            self._write(fut.result())
        self._pump()  # sends what was written

    def _refuse(self, text: str) -> None:
        """Answer a request from a peer with no access here (not on the service's ``allow:``
        list, or no role on the node) with the refusal, audited by the node's gate."""
        assert self._caller is not None
        principal = self._caller.principal
        action = Action(Role.OBSERVER, text.split(" ", 1)[0][:40] or "request", "", text[:200])
        gate = self.dispatcher.gate
        if not self.settings.allowed(self.peer):
            exc = gate.refuse(principal, action, f"{self.peer} is not on {self.name}'s allow list")
        else:
            try:
                gate.check(principal, action)
            except AccessDenied as denied:
                exc = denied
            else:  # pragma: no cover - the policy is fixed for the node's lifetime
                exc = gate.refuse(principal, action, "no access when the connection opened")
        self._write(refusal_text(exc))

    def _write(self, text: str) -> None:
        if self.mode is Framing.BRACED:
            try:
                self._out.append(_encode_braced(text))
            except ProtocolError:
                self._out.append(_encode_braced(error_text(
                    ErrorCode.FUNC_CALL, "reply too large for a braced frame", "")))
        else:
            self._out.append(text.encode("utf-8"))

    def _send_out(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        tr = self.transport
        if tr is None or tr.is_closing() or self._draining:
            return
        tr.write(out[0] if len(out) == 1 else b"".join(out))

    def _update_reading(self) -> None:
        tr = self.transport
        if tr is None or tr.is_closing() or self.mode is not Framing.BRACED:
            return
        full = len(self._backlog) >= self.settings.max_pipeline
        should_pause = full or self._paused_by_writer
        if should_pause and not self._paused_by_queue:
            self._paused_by_queue = True
            tr.pause_reading()
        elif not should_pause and self._paused_by_queue:
            self._paused_by_queue = False
            tr.resume_reading()

    def _close(self) -> None:
        """Lingering close: send FIN after the reply, discard what the peer still sends for
        up to ``linger`` seconds, then close. Closing at once while unread request bytes sit
        in our receive buffer would make the kernel send RST, and the peer could lose the
        error reply that explains why."""
        if self._closing or self._draining:
            return
        self._cancel_timer()
        tr = self.transport
        if tr is None or tr.is_closing():
            self._closing = True
            return
        if tr.can_write_eof():
            self._draining = True
            tr.write_eof()
            if self._paused_by_queue or self._paused_by_writer:
                tr.resume_reading()
            self._arm(self.settings.linger, self._final_close)
        else:
            self._final_close()

    def _final_close(self) -> None:
        self._timer = None
        self._closing = True
        if self.transport is not None:
            self.transport.close()  # flushes what was written, then closes

    # -- timers -------------------------------------------------------------------------------
    def _arm(self, delay: float, cb: Any) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, cb)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_quiet(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self.mode is None:
            # A few bytes and silence: not enough to be braced; treat them as plain text.
            self._start_mode(Framing.PLAIN)
            head, self._head = bytes(self._head), bytearray()
            self._raw_data(head)
            if self._reader is not None and not self._reader.done:
                self._on_quiet()
            return
        if self._framer is not None:
            try:
                self._framer.idle()
            except BracedFrameError as exc:
                log.info("%s: bad frame from %s: %s", self.name, self.peer, exc)
                self._push_text(exc.reply_text())
            return
        if self._reader is not None and not self._reader.done:
            req = self._reader.flush()
            if req is None:
                req = RawRequest("")  # only whitespace arrived: answer, don't hang
            self._submit_raw(req)

    def _on_frame_timeout(self) -> None:
        self._timer = None
        log.info("%s: %s left a partial frame for %.1f s; closing", self.name, self.peer,
                 self.settings.frame_timeout)
        self._push_text(error_text(ErrorCode.FRAME_TIMEOUT))
        self._close_after_flush = True
        self._pump()

    def _on_first_request_timeout(self) -> None:
        self._timer = None
        if self.mode is None and not self._head:
            log.info("%s: %s sent nothing for %.0f s; closing", self.name, self.peer,
                     self.settings.first_request_timeout)
            self._close()


class PychronCommandServer:
    """Service: a command port (TCP, optionally UDP on the same or another port)."""

    def __init__(self, dispatcher: Dispatcher, host: str = "127.0.0.1", port: int = 1061, *,
                 udp: bool = False, udp_port: int | None = None,
                 settings: ServerSettings | None = None, name: str = "command-server") -> None:
        self.dispatcher = dispatcher
        self.host = host
        self.name = name
        self.settings = settings or ServerSettings()
        self._net = TcpUdpServer(self._new_connection, self._datagram, host, port, udp=udp,
                                 udp_port=udp_port, name=name, purpose="pychron commands",
                                 max_connections=self.settings.max_connections)

    def _new_connection(self) -> asyncio.Protocol:
        return CommandConnection(self.dispatcher, self.settings, self.name)

    @property
    def port(self) -> int | None:
        return self._net.port

    @property
    def udp_port(self) -> int | None:
        return self._net.udp_port

    @property
    def connections(self) -> int:
        return self._net.tcp.connections

    async def start(self) -> None:
        await self._net.start()

    async def stop(self) -> None:
        await self._net.stop()

    def endpoints(self) -> list[Endpoint]:
        """Bound ports once started; the configured ones before (``labbridge ports``)."""
        return self._net.endpoints()

    def _datagram(self, data: bytes, host: str) -> bytes | Awaitable[bytes]:
        if not self.settings.allowed(host):
            caller = Caller(host, "udp", via=self.name, udp=True)
            self.dispatcher.gate.refuse(caller.principal, Action(Role.OBSERVER, "datagram"),
                                        f"{host} is not on {self.name}'s allow list")
            return error_text(ErrorCode.SECURITY, host).encode()
        result = self.dispatcher.dispatch(data.decode("utf-8", "replace"),
                                          Caller(host, "udp", via=self.name, udp=True))
        if isinstance(result, str):
            return result.encode("utf-8")
        return _encoded(result)


async def _encoded(reply: Awaitable[str]) -> bytes:
    return (await reply).encode("utf-8")
