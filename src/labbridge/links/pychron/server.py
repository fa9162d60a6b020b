"""The RemoteCommandServer: Pychron-family commands over TCP (and UDP) on one event loop.

Each TCP connection picks its framing from its first bytes (spec 3.5): braced frames keep the
connection open for any number of pipelined requests, answered in order; plain text and JSON
requests get one reply and the connection is closed, as the real Pychron server does. UDP
datagrams are plain requests answered with one datagram. Requests run concurrently: a slow
actuation holds only its own valve (per-valve locks in the device), never another client.

Limits (every buffer has one, issue 13):

* a request -- a braced frame, a plain or a JSON request -- must be whole within
  ``frame_timeout`` of its **first** byte; a peer that trickles bytes cannot extend that
  (braced: ``ERROR 902 : frame timeout``; plain/JSON: ``ERROR 003``; then close);
* braced frames are at most 65535 bytes; a plain request at most ``max_raw_request``;
* per connection, at most ``max_pipeline`` requests and ``max_connection_buffer`` bytes
  (partial frame, queued requests, replies the peer has not read) are held: beyond that
  reading pauses until the peer reads (backpressure, never an unbounded buffer);
* per server, ``max_connections`` connections, at most ``max_per_address`` from one address,
  and ``max_server_buffer`` bytes held by all connections together; the transport's fair slots
  (:mod:`labbridge.transport.slots`) evict the connection idle or stalled longest when full;
* a connection that sends nothing for ``first_request_timeout`` is closed; a closing
  connection that does not read our last reply is aborted after ``linger``.

TLS (optional, ``ssl=`` a server context: labbridge clients at both ends): the TCP port then
speaks only TLS and requires a client certificate signed by the site CA; every framing works
inside. The handshake must be complete within ``frame_timeout`` of its first byte; a failed
one is refused in the audit trail (one line) and closed. The certificate's common name names
the identity (``security.identities.<name>.cert``) whose role the node's gate applies; a
certificate that names no identity gets ``ERROR 013``. UDP stays plain (and read-only unless
``security.udp_writers``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
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
from labbridge.transport.slots import Slot, per_address
from labbridge.transport.tcp import TcpUdpServer, peer_host
from labbridge.transport.tls import peer_common_name

log = logging.getLogger(__name__)

#: Bytes detect_framing needs to decide (``{`` + 4 hex digits + ``}``).
_DETECT_BYTES = 6

#: Encoded braced frames of short replies seen before (``OK``, ``False``, a reading...):
#: encoding is a dictionary look-up on the hot path. Bounded: cleared when full.
_FRAMES: dict[str, bytes] = {}
_FRAMES_MAX = 512
_FRAMED_TEXT_MAX = 64


def _frame_reply(text: str) -> bytes:
    frame = _FRAMES.get(text)
    if frame is None:
        frame = _encode_braced(text)
        if len(text) <= _FRAMED_TEXT_MAX:
            if len(_FRAMES) >= _FRAMES_MAX:
                _FRAMES.clear()
            _FRAMES[text] = frame
    return frame

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ServerSettings:
    """Tunables of a command server (all have sensible defaults)."""

    def __init__(self, *, quiet_gap: float = 0.05, frame_timeout: float = 10.0,
                 first_request_timeout: float = 30.0, max_pipeline: int = 256,
                 max_raw_request: int = 64 * 1024, max_connections: int = 1024,
                 allow: Sequence[Network] | None = None, linger: float = 1.0,
                 max_per_address: int | None = None,
                 max_connection_buffer: int = 256 * 1024,
                 max_server_buffer: int = 32 * 1024 * 1024) -> None:
        self.linger = linger
        self.quiet_gap = quiet_gap
        self.frame_timeout = frame_timeout
        self.first_request_timeout = first_request_timeout
        self.max_pipeline = max_pipeline
        self.max_raw_request = max_raw_request
        self.max_connections = max_connections
        #: Connections one address may hold (None: a quarter of ``max_connections``).
        self.max_per_address = max_per_address
        #: Bytes one connection may hold before reading from it pauses.
        self.max_connection_buffer = max_connection_buffer
        #: Bytes all connections together may hold; beyond, the largest holder is evicted.
        self.max_server_buffer = max_server_buffer
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
        self._backlog_bytes = 0
        self._inflight: asyncio.Future[str] | None = None
        # Three clocks: the quiet gap measures silence (every byte restarts it); the request
        # deadline starts at the first byte of a request and nothing the peer sends moves it
        # (a trickle cannot extend it); the third is the idle, linger or abort timer.
        self._gap: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_left: float | None = None  # suspended while we do not read
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._draining = False
        self._close_after_flush = False
        self._denied = False
        self._deny_reason = ""  # a refusal decided here (not by the policy): why
        self._paused_by_us = False
        self._paused_by_writer = False
        self._caller: Caller | None = None
        #: TLS: the connection's identity (from its client certificate), if it has one.
        self.tls = False
        self.identity: str | None = None
        # Replies produced in one pass are written with one transport.write (one syscall).
        self._out: list[bytes] = []
        #: Fair-slot reports to the server's slot table (TcpServer sets the real one).
        self.slot: Slot = Slot.detached()

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck-type them.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = peer_host(transport)
        self.slot.measure = self._held
        gate = self.dispatcher.gate
        if transport.get_extra_info("ssl_object") is not None:
            self.tls = True
            cn = peer_common_name(transport)
            ident = None if cn is None else gate.policy.identity_for_cert(cn)
            if ident is None:
                self._denied = True
                self._deny_reason = (f"TLS certificate {cn!r} is the cert of no identity in "
                                     "security.identities")
            else:
                self.identity = ident.name
        if self._denied:
            pass  # a certificate that names nobody: refused at its first request
        elif not self.settings.allowed(self.peer):
            self._denied = True
            log.warning("%s: connection from %s is not on the allow-list", self.name, self.peer)
        elif not gate.may(Principal(self.peer, self.name, "tls" if self.tls else "tcp",
                                    self.identity), Role.OBSERVER):
            # No role at all on this node: every request gets ERROR 013 (the gate audits
            # the first one), whatever its framing.
            self._denied = True
        self._timer = self._later(self.settings.first_request_timeout,
                                  self._on_first_request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._draining:
            return  # lingering close: discard what the peer still sends
        if self._timer is not None:  # the first-request timer: something arrived
            self._timer.cancel()
            self._timer = None
        if self.mode is Framing.BRACED:  # every request after the first on a persistent link
            self._braced_data(data)
            if not self._closing:
                self.slot.hold()  # may evict us (the largest holder of an over-budget server)
            return
        if self._deadline is None and not (
                self._reader is not None and self._reader.done):
            self._start_deadline()  # the first byte of the (one) request
        if self.mode is None:
            self._head += data
            mode = detect_framing(bytes(self._head[:_DETECT_BYTES]))
            if mode is None and len(self._head) >= _DETECT_BYTES:
                # Only blanks so far: not braced (that starts with '{'). Decide now and hand
                # the bytes to the raw reader, whose max_raw_request bounds them; waiting for
                # a non-blank byte would let a peer sending only spaces grow _head forever.
                mode = detect_framing(bytes(self._head)) or Framing.PLAIN
            if mode is None:
                self._gap = self._later(self.settings.quiet_gap, self._on_quiet, self._gap)
                return
            self._start_mode(mode)
            data, self._head = bytes(self._head), bytearray()
        if self._framer is not None:  # the first chunk chose braced framing
            self._braced_data(data)
        else:
            self._raw_data(data)
        if not self._closing:
            self.slot.hold()  # may evict us (the largest holder of an over-budget server)

    def eof_received(self) -> bool:
        if self._closing or self._draining:
            return False
        self._cancel("_timer", "_gap", "_deadline")
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
        self._cancel("_timer", "_gap", "_deadline")
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None
        # Drop every buffer now: nothing may keep them alive once the connection is gone.
        self._backlog.clear()
        self._backlog_bytes = 0
        self._framer = None
        self._reader = None
        self._head = bytearray()
        self._out = []
        self.slot.measure = None

    def pause_writing(self) -> None:
        self._paused_by_writer = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._paused_by_writer = False
        self._update_reading()
        self.slot.hold()

    # -- modes --------------------------------------------------------------------------------
    def _start_mode(self, mode: Framing) -> None:
        self.mode = mode
        self._caller = Caller(self.peer, mode.value, via=self.name, identity=self.identity,
                              tls=self.tls)
        if mode is Framing.BRACED:
            self._framer = BracedFramer()
        else:
            self._reader = RawRequestReader(self.settings.max_raw_request)

    def _braced_data(self, data: bytes) -> None:
        framer = self._framer
        assert framer is not None
        try:
            items = framer.feed(data)
        except BufferOverflow as exc:
            log.warning("%s: %s: %s; closing", self.name, self.peer, exc)
            self._cancel("_deadline", "_gap")
            self._push_text(error_text(ErrorCode.FRAME_HEADER, str(exc)))
            self._close_after_flush = True
            self._pump()
            return
        if items:
            self.slot.active()
        backlog = self._backlog
        done = 0
        if not backlog and self._inflight is None and not self._denied:
            # Nothing queued before these: answer them in turn now, as _pump would, without
            # queueing each one first. The first one to wait (an asynchronous handler) or a
            # framing error sends the rest through the queue.
            dispatch, caller = self.dispatcher.dispatch, self._caller
            assert caller is not None
            for item in items:
                if item.__class__ is not str or self._closing:
                    break
                done += 1
                result = dispatch(item, caller)
                if result.__class__ is str:
                    self._write(result)
                    continue
                fut = asyncio.ensure_future(result)  # type: ignore[arg-type]
                self._inflight = fut
                fut.add_done_callback(self._on_done)
                break
        for item in items[done:] if done else items:
            if item.__class__ is str:
                backlog.append((True, item))
                self._backlog_bytes += len(item)
            else:
                assert isinstance(item, BracedFrameError)
                log.info("%s: bad frame from %s: %s", self.name, self.peer, item)
                text = item.reply_text()
                backlog.append((False, text))
                self._backlog_bytes += len(text)
        self._pump()  # the rest in order; sends what was written, applies backpressure
        if self._closing:
            return
        if not framer.buffered:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._deadline_left = None
        elif items or (self._deadline is None and self._deadline_left is None):
            # The first byte of a frame arrived in this chunk (what is left after whole
            # frames is the start of a new one): its deadline starts now, once.
            self._start_deadline()
        if framer.suspect:
            self._gap = self._later(self.settings.quiet_gap, self._on_quiet, self._gap)
        elif self._gap is not None:
            self._gap.cancel()
            self._gap = None

    def _raw_data(self, data: bytes) -> None:
        reader = self._reader
        assert reader is not None
        if reader.done:
            return
        try:
            reader.receive_data(data)
        except RawRequestTooLarge as exc:
            log.warning("%s: %s: %s; closing", self.name, self.peer, exc)
            self._cancel("_deadline", "_gap")
            self._push_text(error_text(ErrorCode.INVALID_COMMAND, str(exc)))
            self._close_after_flush = True
            self._pump()
            return
        ev = reader.next_event()
        if isinstance(ev, RawRequest):
            self._submit_raw(ev)
        else:
            self._gap = self._later(self.settings.quiet_gap, self._on_quiet, self._gap)

    def _submit_raw(self, req: RawRequest) -> None:
        self._cancel("_gap", "_deadline")
        self.slot.active()
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
        self._backlog_bytes += len(text)
        self._pump()

    def _push_text(self, text: str) -> None:
        self._backlog.append((False, text))
        self._backlog_bytes += len(text)
        self._pump()

    def _pump(self) -> None:
        """Run queued requests in order until one has to wait for an asynchronous handler."""
        backlog = self._backlog
        dispatch = self.dispatcher.dispatch
        while self._inflight is None and backlog and not self._closing:
            is_request, text = backlog.popleft()
            self._backlog_bytes -= len(text)
            if not is_request:
                self._write(text)
                continue
            if self._denied:
                self._refuse(text)
                backlog.clear()
                self._backlog_bytes = 0
                self._close_after_flush = True
                break
            assert self._caller is not None
            result = dispatch(text, self._caller)
            if result.__class__ is str:
                self._write(result)
                continue
            fut = asyncio.ensure_future(result)  # type: ignore[arg-type]
            self._inflight = fut
            fut.add_done_callback(self._on_done)
        self.slot.set_busy(self._inflight is not None)
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
        if self._deny_reason:
            exc = gate.refuse(principal, action, self._deny_reason)
        elif not self.settings.allowed(self.peer):
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
                self._out.append(_frame_reply(text))
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

    def _held(self) -> int:
        """Bytes this connection holds: partial request, queued requests, unread replies."""
        tr = self.transport
        unread = tr.get_write_buffer_size() if tr is not None and not tr.is_closing() else 0
        framer, reader = self._framer, self._reader
        if reader is None and framer is not None:  # a persistent braced connection
            return framer.buffered + self._backlog_bytes + unread
        partial = (framer.buffered if framer is not None else 0) + \
            (reader.buffered if reader is not None else 0) + len(self._head)
        return partial + self._backlog_bytes + unread

    def _update_reading(self) -> None:
        """Backpressure: stop reading while the pipeline, the bytes held or the peer's unread
        replies are over their limits; read again once they are not."""
        tr = self.transport
        if tr is None or self.mode is not Framing.BRACED or tr.is_closing():
            return
        queued = self._backlog_bytes + tr.get_write_buffer_size()
        should_pause = (len(self._backlog) >= self.settings.max_pipeline
                        or queued > self.settings.max_connection_buffer
                        or self._paused_by_writer)
        if should_pause and not self._paused_by_us:
            self._paused_by_us = True
            tr.pause_reading()
            self._suspend_deadline()  # a partial frame waiting on us is not the peer's fault
        elif not should_pause and self._paused_by_us:
            self._paused_by_us = False
            tr.resume_reading()
            self._resume_deadline()

    def _close(self) -> None:
        """Lingering close: send FIN after the reply, discard what the peer still sends for
        up to ``linger`` seconds, then close. Closing at once while unread request bytes sit
        in our receive buffer would make the kernel send RST, and the peer could lose the
        error reply that explains why."""
        if self._closing or self._draining:
            return
        self._cancel("_timer", "_gap", "_deadline")
        self.slot.finished()
        tr = self.transport
        if tr is None or tr.is_closing():
            self._closing = True
            return
        if tr.can_write_eof():
            self._draining = True
            tr.write_eof()
            if self._paused_by_us or self._paused_by_writer or not tr.is_reading():
                tr.resume_reading()
            self._timer = self._later(self.settings.linger, self._final_close)
        else:
            self._final_close()

    def _final_close(self) -> None:
        self._timer = None
        self._closing = True
        tr = self.transport
        if tr is not None:
            tr.close()  # flushes what was written, then closes
            # A peer that never reads our last reply would keep the connection (and its
            # buffer) for ever: give it one more linger, then drop it.
            self._timer = self._later(self.settings.linger, tr.abort)

    # -- timers -------------------------------------------------------------------------------
    def _later(self, delay: float, cb: Callable[[], Any],
               old: asyncio.TimerHandle | None = None) -> asyncio.TimerHandle:
        if old is not None:
            old.cancel()
        return asyncio.get_running_loop().call_later(delay, cb)

    def _cancel(self, *names: str) -> None:
        for name in names:
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _start_deadline(self) -> None:
        self._cancel("_deadline")
        self._deadline_left = None
        if self._paused_by_us:
            self._deadline_left = self.settings.frame_timeout  # runs once we read again
        else:
            self._deadline = self._later(self.settings.frame_timeout, self._on_deadline)

    def _suspend_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline_left = max(0.0, self._deadline.when() -
                                      asyncio.get_running_loop().time())
            self._cancel("_deadline")

    def _resume_deadline(self) -> None:
        if self._deadline_left is not None:
            left, self._deadline_left = self._deadline_left, None
            self._deadline = self._later(left, self._on_deadline, self._deadline)

    def _on_quiet(self) -> None:
        self._gap = None
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
                if not self._framer.buffered:
                    self._cancel("_deadline")
                self._push_text(exc.reply_text())
            return
        if self._reader is not None and not self._reader.done:
            req = self._reader.flush()
            if req is None:
                req = RawRequest("")  # only whitespace arrived: answer, don't hang
            self._submit_raw(req)

    def _on_deadline(self) -> None:
        """A request was not whole within ``frame_timeout`` of its first byte."""
        self._deadline = None
        if self._closing or self._draining:
            return
        self._cancel("_gap")
        limit = self.settings.frame_timeout
        if self.mode is Framing.BRACED:
            log.info("%s: %s left a partial frame for %.1f s; closing", self.name, self.peer,
                     limit)
            self._push_text(error_text(ErrorCode.FRAME_TIMEOUT))
        else:
            log.info("%s: %s did not finish its request within %.1f s of its first byte; "
                     "closing", self.name, self.peer, limit)
            if self.transport is not None:
                self.transport.pause_reading()
            self._push_text(error_text(
                ErrorCode.INVALID_COMMAND,
                f"request not complete within {limit:g} s of its first byte"))
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
                 settings: ServerSettings | None = None, name: str = "command-server",
                 ssl: _ssl.SSLContext | None = None) -> None:
        self.dispatcher = dispatcher
        self.host = host
        self.name = name
        self.settings = settings or ServerSettings()
        #: The TLS server context (None: plain TCP).
        self.tls = ssl
        purpose = ("pychron commands (TLS, client certificates)" if ssl is not None
                   else "pychron commands")
        self._net = TcpUdpServer(self._new_connection, self._datagram, host, port, udp=udp,
                                 udp_port=udp_port, name=name, purpose=purpose,
                                 max_connections=self.settings.max_connections,
                                 max_per_address=per_address(self.settings.max_connections,
                                                             self.settings.max_per_address),
                                 max_buffered=self.settings.max_server_buffer, ssl=ssl,
                                 handshake_timeout=self.settings.frame_timeout,
                                 first_byte_timeout=self.settings.first_request_timeout,
                                 on_handshake_failed=self._handshake_failed,
                                 plain_peer="a plain TCP client, e.g. a real Pychron,")

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

    def _handshake_failed(self, host: str, reason: str) -> None:
        """A TLS handshake failed: a refusal in the audit trail (its one log line)."""
        self.dispatcher.gate.refuse(Principal(host, self.name, "tls"),
                                    Action(Role.OBSERVER, "connect", self.name),
                                    f"TLS handshake failed: {reason}")

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
