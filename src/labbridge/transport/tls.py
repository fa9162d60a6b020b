"""TLS with client certificates for links whose both ends are labbridge (docs/security.md).

The braced Pychron channel, the PyMoDAQ link and the hexrotcomm link can run over TLS when a
site uses labbridge clients at both ends (a real Pychron, PyMoDAQ or Moog peer cannot). The
server requires a client certificate signed by the site's CA; the certificate's common name
is the client's identity, which the node's access policy maps to a role
(``security.identities.<name>.cert``). ``labbridge keys tls-ca`` and ``keys tls-cert`` make
the CA and the certificates.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)


class TlsConfigError(ValueError):
    """A certificate, key or CA file is missing or unusable (the message names it)."""


def _exists(*paths: str | Path) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise TlsConfigError(f"cannot read {p}: no such file")


def _load(ctx: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    _exists(cert, key)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use certificate {cert} with key {key}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str | Path) -> None:
    _exists(ca)
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot use CA file {ca}: {exc}") from None


def server_context(cert: str | Path, key: str | Path, ca: str | Path,
                   *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A server context: TLS 1.2+, our certificate, client certificates verified against
    ``ca`` (required unless ``require_client_cert`` is False)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, cert, key)
    _load_ca(ctx, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    # TLS 1.3 session tickets tell a client that its certificate was accepted
    # (handshake_unconfirmed); OpenSSL sends two by default, say so anyway.
    ctx.num_tickets = 2
    return ctx


def client_context(ca: str | Path, cert: str | Path | None = None,
                   key: str | Path | None = None, *,
                   check_hostname: bool = False) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` and presents ``cert``/``key`` if given.

    Host names are not checked by default: lab nodes are reached by IP address and the
    site's own CA signs only its own nodes; the server's certificate must still chain to it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca)
    if cert is not None:
        if key is None:
            raise TlsConfigError("a client certificate needs its key file too")
        _load(ctx, cert, key)
    return ctx


def peer_common_name(transport: asyncio.BaseTransport | Any) -> str | None:
    """The verified peer certificate's subject common name, or None (no TLS, no cert)."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


# -- server side: the handshake after the accept ---------------------------------------------

#: Bytes a peer may send before the TLS layer takes the connection (a ClientHello is a few
#: hundred bytes to a few KiB); beyond that the connection is dropped.
PRE_TLS_LIMIT = 64 * 1024
#: Decrypted bytes that may arrive with the end of the handshake, before the application
#: protocol has the connection (a client may pipeline at once); beyond that it is dropped.
EARLY_DATA_LIMIT = 1024 * 1024

HandshakeFailed = Callable[[str, str], None]

#: What a peer that does not speak TLS on a TLS port probably is (the refusal's hint).
PLAIN_PEER = "a plain TCP client"


class TlsAccept(asyncio.Protocol):
    """Runs the server side of a TLS handshake on an accepted TCP connection, then hands the
    connection to ``inner`` (any ``asyncio.Protocol``), which sees only the TLS transport.

    Why not ``create_server(ssl=...)``: there a failed handshake reaches no application code
    (nothing to log or audit) and a connection in its handshake is invisible to the server's
    slots. Here the server admits the TCP connection into its slots first (a stalled
    handshake holds a slot no longer than its deadline, and is the first to be evicted: it
    makes no progress), and a failure is reported once through ``on_failure(host, reason)``.

    Deadlines: ``first_byte_timeout`` for the first byte; from that first byte the whole
    handshake must be done within ``handshake_timeout`` (``loop.start_tls`` starts then).

    Two hand-overs are bounded and ordered:

    * the first bytes (read here, before ``start_tls`` has the transport) are given to the
      TLS layer right after ``start_tls`` has swapped it in and before it starts (bytes fed
      before its ``connection_made`` just wait in its buffer) -- this also covers uvloop,
      which may read once more after ``pause_reading``;
    * decrypted bytes that come with the end of the handshake, before ``inner`` has the
      connection, are held and given to it right after its ``connection_made``.

    ``inner`` may be an ``asyncio.BufferedProtocol``: use :func:`tls_accept`, which then
    returns a :class:`BufferedTlsAccept`, so decrypted bytes go straight into its buffers.
    """

    def __init__(self, inner: asyncio.BaseProtocol, context: ssl.SSLContext, *,
                 handshake_timeout: float = 10.0, first_byte_timeout: float = 30.0,
                 on_failure: HandshakeFailed | None = None, name: str = "tls",
                 tasks: set[asyncio.Future[Any]] | None = None,
                 plain_peer: str = PLAIN_PEER) -> None:
        self.inner = inner
        self.plain_peer = plain_peer
        self._tasks = tasks
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.first_byte_timeout = first_byte_timeout
        self.on_failure = on_failure
        self.name = name
        self.raw: asyncio.Transport | None = None
        self.host = "?"
        #: wait (no byte yet) -> raw (start_tls being set up) -> handshake -> open; or closed.
        self.state = "wait"
        self._pre = bytearray()
        self._early = bytearray()
        self._early_eof = False
        self._task: asyncio.Future[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._slot: Any = None
        self._lost = False
        #: The TLS transport, once the handshake is done (what ``inner`` writes to).
        self._app: asyncio.Transport | None = None

    # The server's fair slots: the handshake phase holds the slot (idle, so evictable); the
    # inner protocol reports progress through the same slot once it has the connection.
    @property
    def slot(self) -> Any:
        return self._slot

    @slot.setter
    def slot(self, slot: Any) -> None:
        self._slot = slot
        if hasattr(self.inner, "slot"):
            self.inner.slot = slot

    # -- the raw TCP connection ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        self._timer = asyncio.get_running_loop().call_later(self.first_byte_timeout,
                                                            self._no_first_byte)

    def data_received(self, data: bytes) -> None:
        if self.state == "open":
            self._to_inner(data)
        elif self.state in ("wait", "raw"):
            self._pre += data
            if len(self._pre) > PRE_TLS_LIMIT:
                self._give_up(f"sent {len(self._pre)} bytes without completing a TLS hello")
            elif self.state == "wait":
                self._start()
        elif self.state == "handshake":
            self._early += data
            if len(self._early) > EARLY_DATA_LIMIT:
                self._give_up("sent more than 1 MiB before its connection was set up")

    def eof_received(self) -> bool | None:
        if self.state == "open":
            return cast(asyncio.Protocol, self.inner).eof_received()
        if self.state == "handshake":  # after the TLS layer's end of handshake
            self._early_eof = True
            return None
        return False  # no TLS yet: let the transport close

    def pause_writing(self) -> None:
        if self.state == "open":
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.state == "open":
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return  # idempotent: both we and the TLS layer may report the end
        self._lost = True
        state, self.state = self.state, "closed"
        self._cancel_timer()
        self._pre = bytearray()
        self._early = bytearray()
        if state in ("wait", "raw") and self._task is not None and not self._task.done():
            self._task.cancel()  # (in the handshake, the task reports how it ended)
        if state == "open":
            self.inner.connection_lost(exc)

    # -- the handshake -----------------------------------------------------------------------
    def _start(self) -> None:
        assert self.raw is not None
        self._cancel_timer()
        self.state = "raw"
        self.raw.pause_reading()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(loop.start_tls(
            self.raw, self, self.context, server_side=True,
            ssl_handshake_timeout=self.handshake_timeout))
        # FIFO: runs right after the task's first step, in which start_tls swapped in its
        # TLS protocol and scheduled that protocol's start (connection_made, resume_reading).
        loop.call_soon(self._hand_over)
        self._task.add_done_callback(self._handshake_done)
        if self._tasks is not None:  # the server waits for them when it stops
            self._tasks.add(self._task)
            self._task.add_done_callback(self._tasks.discard)

    def _hand_over(self) -> None:
        raw = self.raw
        if raw is None or self.state != "raw":
            return
        tls = raw.get_protocol()
        if tls is self:  # start_tls failed before taking the transport
            return
        self.state = "handshake"
        data, self._pre = bytes(self._pre), bytearray()
        feed(tls, data)

    def _handshake_done(self, task: asyncio.Future[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._give_up(handshake_failure(exc, self.handshake_timeout, self.plain_peer))
            return
        app = task.result()
        if self._lost or app is None:  # the connection went as the handshake ended
            self._close_quietly()
            return
        self.state = "open"
        slot = self._slot
        if slot is not None:
            slot.active()  # a completed handshake is progress
            if not hasattr(self.inner, "slot"):
                slot.set_busy(True)  # it reports no progress: never evict it (as TcpServer)
        self._app = app
        self.inner.connection_made(app)
        if self._early and self.state == "open":
            data, self._early = bytes(self._early), bytearray()
            self._to_inner(data)
        if self._early_eof and self.state == "open" and not app.is_closing():
            if not cast(asyncio.Protocol, self.inner).eof_received():
                app.close()

    def _to_inner(self, data: bytes) -> None:
        """Give decrypted ``data`` to the inner protocol, in pieces it can take, until it
        closes its connection (bytes after that go nowhere)."""
        feed(self.inner, data, self._app)

    def _no_first_byte(self) -> None:
        self._timer = None
        if self.state == "wait":
            log.info("%s: %s sent nothing for %.0f s; closing", self.name, self.host,
                     self.first_byte_timeout)
            self._close_quietly()

    def _give_up(self, reason: str) -> None:
        """The handshake failed (or the peer misbehaved before it): one report, then close."""
        evicted = getattr(self._slot, "evicted", False)
        self._close_quietly()
        if evicted:
            return  # the server's slots dropped it, and said so
        if self.on_failure is not None:
            self.on_failure(self.host, reason)
        else:
            log.warning("%s: TLS handshake with %s failed: %s", self.name, self.host, reason)

    def _close_quietly(self) -> None:
        raw = self.raw
        if raw is not None and not raw.is_closing():
            raw.abort()
        # The TLS layer does not tell its application protocol about a connection lost
        # during the handshake; the server learns it from us (its slot is freed).
        self.connection_lost(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BufferedTlsAccept(TlsAccept, asyncio.BufferedProtocol):
    """:class:`TlsAccept` for an inner ``asyncio.BufferedProtocol``: once the connection is
    open, the TLS layer decrypts straight into the inner protocol's buffers (no copy, which
    matters for the PyMoDAQ link's big frames); before, bytes land in a small scratch area
    and take the same path as :meth:`TlsAccept.data_received`."""

    #: Scratch for the bytes of the handshake phase (raw hello, early decrypted bytes).
    SCRATCH = 16 * 1024

    def __init__(self, inner: asyncio.BufferedProtocol, context: ssl.SSLContext,
                 **kwargs: Any) -> None:
        super().__init__(inner, context, **kwargs)
        self._scratch: bytearray | None = bytearray(self.SCRATCH)
        self._into_inner = False

    def get_buffer(self, sizehint: int) -> memoryview:
        self._into_inner = self.state == "open"
        if self._into_inner:
            return memoryview(cast(asyncio.BufferedProtocol, self.inner).get_buffer(sizehint))
        if self._scratch is None:  # pragma: no cover - bytes after the connection ended
            self._scratch = bytearray(self.SCRATCH)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._into_inner:
            cast(asyncio.BufferedProtocol, self.inner).buffer_updated(nbytes)
        elif nbytes:
            assert self._scratch is not None
            self.data_received(bytes(self._scratch[:nbytes]))

    def _handshake_done(self, task: asyncio.Future[Any]) -> None:
        super()._handshake_done(task)
        if self.state in ("open", "closed"):
            self._scratch = None  # the inner protocol's buffers take over


def tls_accept(inner: asyncio.BaseProtocol, context: ssl.SSLContext,
               **kwargs: Any) -> TlsAccept:
    """A :class:`TlsAccept` around ``inner`` (a :class:`BufferedTlsAccept` if ``inner`` is
    an ``asyncio.BufferedProtocol``); ``kwargs`` as :class:`TlsAccept`."""
    if isinstance(inner, asyncio.BufferedProtocol):
        return BufferedTlsAccept(inner, context, **kwargs)
    return TlsAccept(inner, context, **kwargs)


def feed(proto: asyncio.BaseProtocol, data: bytes,
         transport: asyncio.BaseTransport | None = None) -> None:
    """Give ``data`` to ``proto`` as if its transport had received it; a buffered protocol
    gets it in pieces that fit its buffers, and none once ``transport`` (its transport, if
    given) is closing (it dropped the connection on an earlier piece)."""
    if not data:
        return
    if isinstance(proto, asyncio.BufferedProtocol) or hasattr(proto, "get_buffer"):
        bproto = cast(asyncio.BufferedProtocol, proto)
        view = memoryview(data)
        while view:
            if transport is not None and transport.is_closing():
                return
            buf = memoryview(bproto.get_buffer(len(view)))
            n = min(len(buf), len(view))
            if n == 0:  # pragma: no cover - a protocol with no room
                return
            buf[:n] = view[:n]
            bproto.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, proto).data_received(data)


#: OpenSSL reasons that mean "the peer does not speak TLS at all".
_NOT_TLS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "UNKNOWN_PROTOCOL",
            "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE", "UNSUPPORTED_PROTOCOL",
            "VERSION_TOO_LOW", "NO_SHARED_CIPHER", "UNEXPECTED_RECORD")


def handshake_failure(exc: BaseException, timeout: float | None = None,
                      plain_peer: str = PLAIN_PEER) -> str:
    """Why a server-side handshake failed, in words fit for one log line; ``plain_peer``
    names what a peer that does not speak TLS at all probably is."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"its certificate was refused: {exc.verify_message or exc.reason} (is it signed "
                "by the site CA?)")
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "it sent no client certificate"
        if reason.startswith("CERTIFICATE_VERIFY_FAILED"):
            return "its certificate was refused (not signed by the site CA?)"
        if any(r in reason for r in _NOT_TLS):
            return f"it does not speak TLS ({plain_peer} on this TLS-only port?)"
        if "ALERT" in reason:
            return ("it refused this server's certificate or the handshake "
                    f"({reason.lower().replace('_', ' ')})")
        return reason.lower().replace("_", " ") or str(exc)
    if isinstance(exc, ConnectionAbortedError):  # the TLS layer's handshake deadline
        return (f"handshake not complete within {timeout:g} s of the first byte"
                if timeout else "handshake not complete in time")
    if isinstance(exc, ConnectionError | EOFError):
        return "it closed the connection during the handshake"
    return str(exc) or type(exc).__name__


# -- client side ---------------------------------------------------------------------------

#: Alerts a server sends when it refuses a client's certificate (TLS 1.3 clients learn it
#: on their first read, after their own side of the handshake completed).
_CERT_REFUSED = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "ACCESS_DENIED",
                 "CERTIFICATE_UNKNOWN", "UNSUPPORTED_CERTIFICATE", "CERTIFICATE_EXPIRED",
                 "CERTIFICATE_REVOKED", "DECRYPT_ERROR", "HANDSHAKE_FAILURE")


def certificate_refused(exc: BaseException | None) -> str | None:
    """If ``exc`` is a server's TLS alert refusing our certificate: why, else None.

    A certificate is judged during the handshake, before the server reads any request, so a
    request sent on such a connection was never carried out."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    reason = str(exc.reason or "")
    if "ALERT" in reason and any(r in reason for r in _CERT_REFUSED):
        return f"the server refused our TLS client certificate ({reason.lower().replace('_', ' ')})"
    return None


#: What a client says when the server ended the handshake without accepting it.
REFUSED_AT_HANDSHAKE = ("the server refused our TLS client certificate (none given, or not "
                        "signed by the CA the server trusts)")


def handshake_unconfirmed(ssl_object: Any) -> bool:
    """True when a TLS 1.3 server never confirmed our side of the handshake.

    In TLS 1.3 a client's handshake completes before the server has checked the client's
    certificate; a server that refuses it just closes (Python's TLS layer sends no alert).
    A server that accepts it sends its session tickets at once, before it reads any request,
    so a connection that ends before any ticket came was refused at the handshake and
    nothing we sent on it was carried out. (labbridge servers send tickets: OpenSSL's
    default, and :func:`server_context` asks for them.)"""
    if ssl_object is None:
        return False
    try:
        if ssl_object.version() != "TLSv1.3":
            return False  # TLS 1.2: a refusal fails the client's own handshake
        session = ssl_object.session
    except (ssl.SSLError, ValueError, AttributeError):
        return False
    return session is None or not session.has_ticket


def connect_failure(exc: BaseException) -> str:
    """Why a client's TLS connection failed, in words fit for one line."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the server's certificate was refused ({exc.verify_message or exc.reason}"
                "; is it signed by the CA given, and made for this host?)")
    refused = certificate_refused(exc)
    if refused is not None:
        return refused
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if any(r in reason for r in _NOT_TLS):
            return "TLS: the server does not speak TLS on this port"
        return f"TLS: {reason.lower().replace('_', ' ') or exc}"
    return str(exc)
