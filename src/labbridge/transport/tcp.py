"""TCP and UDP servers on one asyncio event loop (ARCHITECTURE.md principle 7).

:class:`TcpServer` wraps ``loop.create_server`` with what every labbridge server needs: port 0
support and the bound port afterwards, TCP_NODELAY and keepalive, fair slots (a
:class:`~labbridge.transport.slots.SlotTable`: per-address caps, eviction of the connection
idle or stalled longest when full, a budget of buffered bytes), tracking of live connections
so :meth:`TcpServer.stop` closes them all, and a clear error naming the port when it is
already in use (Pychron only logged it, spec 17 #20).

With ``ssl`` (a server context from :mod:`labbridge.transport.tls`) the port speaks TLS: each
accepted connection is admitted into the slots first, then its handshake runs
(:class:`~labbridge.transport.tls.TlsAccept`: deadline from the first byte, one report per
failure), and the protocol sees only the TLS transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl as _ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from labbridge.transport.endpoint import Endpoint
from labbridge.transport.slots import Slot, SlotTable
from labbridge.transport.tls import PLAIN_PEER, HandshakeFailed, tls_accept

log = logging.getLogger(__name__)


class PortInUseError(OSError):
    """The port a server was told to use is taken."""


def configure_socket(sock: socket.socket | None) -> None:
    """TCP_NODELAY (one write per message goes out at once) and keepalive (a peer that
    vanished without a FIN is noticed), on TCP sockets only."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # pragma: no cover - platform dependent
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """:func:`configure_socket` on a transport's socket."""
    configure_socket(transport.get_extra_info("socket"))


def abort_discarding(transport: asyncio.BaseTransport) -> None:
    """Abort a connection and throw away what the kernel has not sent yet.

    ``close()`` and asyncio's ``abort()`` both leave unsent bytes to the kernel, which goes
    on retransmitting them: after a partition heals, a request the caller gave up on long
    ago would still reach the peer (a valve opened after the client reported the open as
    lost; ADR 0161). SO_LINGER with a zero timeout makes the close discard them and reset
    the connection instead.
    """
    info = getattr(transport, "get_extra_info", None)
    sock = info("socket") if info is not None else None
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    abort = getattr(transport, "abort", None)
    (abort or transport.close)()


def peer_host(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "local"


class TcpServer:
    """A listening TCP server whose connections are ``asyncio.Protocol`` instances.

    ``protocol_factory`` builds one protocol per connection. Protocols that want to be closed
    on shutdown may define ``close()``; otherwise their transport is aborted.

    Fair slots: every connection is admitted through :attr:`slots` (see
    :mod:`labbridge.transport.slots`). A protocol that has a ``slot`` attribute gets its
    :class:`~labbridge.transport.slots.Slot` there before ``connection_made`` and reports
    progress through it, which makes it evictable when idle; one that has none is never
    evicted (a full server refuses newcomers instead). ``max_per_address`` defaults to no cap
    below ``max_connections``.

    TLS (``ssl``): a connection in its handshake holds a slot but makes no progress, so it is
    the first to be evicted when the server is full; the handshake must be complete within
    ``handshake_timeout`` of its first byte, and the first byte come within
    ``first_byte_timeout``. A failed handshake is reported once: ``on_handshake_failed(host,
    reason)``, or one warning line. ``plain_peer`` names what a peer that does not speak TLS
    on this port probably is (the failure's hint: "a plain TCP peer, e.g. a real PyMoDAQ
    module").
    """

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol], host: str = "127.0.0.1",
                 port: int = 0, *, name: str = "tcp", max_connections: int = 1024,
                 max_per_address: int | None = None, max_buffered: int | None = None,
                 backlog: int = 128, ssl: _ssl.SSLContext | None = None,
                 handshake_timeout: float = 10.0, first_byte_timeout: float = 30.0,
                 on_handshake_failed: HandshakeFailed | None = None,
                 plain_peer: str = PLAIN_PEER) -> None:
        self._factory = protocol_factory
        self.ssl = ssl
        self.plain_peer = plain_peer
        self.handshake_timeout = handshake_timeout
        self.first_byte_timeout = first_byte_timeout
        self.on_handshake_failed = on_handshake_failed
        self._handshakes: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self.host = host
        self.requested_port = port
        self.name = name
        self.backlog = backlog
        self.slots = SlotTable(name, max_connections=max_connections,
                               max_per_address=max_per_address, max_buffered=max_buffered)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.BaseTransport] = set()
        self.port: int | None = None

    @property
    def max_connections(self) -> int:
        return self.slots.max_connections

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def refused(self) -> int:
        return self.slots.refused

    @property
    def evicted(self) -> int:
        return self.slots.evicted

    def _handshake_failed(self, host: str, reason: str) -> None:
        if self._stopping:
            return
        if self.on_handshake_failed is None:
            log.warning("%s: TLS handshake with %s failed: %s", self.name, host, reason)
            return
        try:
            self.on_handshake_failed(host, reason)
        except Exception:
            log.exception("%s: reporting a failed TLS handshake failed", self.name)

    def _make_protocol(self) -> asyncio.Protocol:
        proto = self._factory()
        if self.ssl is not None:
            proto = tls_accept(proto, self.ssl, handshake_timeout=self.handshake_timeout,
                               first_byte_timeout=self.first_byte_timeout,
                               on_failure=self._handshake_failed, name=self.name,
                               tasks=self._handshakes, plain_peer=self.plain_peer)
        server = self
        orig_made = proto.connection_made
        orig_lost = proto.connection_lost
        mine: list[tuple[asyncio.BaseTransport, Slot]] = []

        def connection_made(transport: asyncio.BaseTransport) -> None:
            slot = server.slots.admit(transport, peer_host(transport))
            if slot is None:
                transport.close()
                return
            mine.append((transport, slot))
            server._conns.add(transport)
            set_nodelay(transport)
            if hasattr(proto, "slot"):
                proto.slot = slot
            else:
                # It reports no progress, so nothing says it is idle: never evict it (when
                # the server is full, newcomers are refused, as before fair slots).
                slot.set_busy(True)
            orig_made(transport)

        def connection_lost(exc: Exception | None) -> None:
            # These closures refer to the protocol and the protocol to them: remove them from
            # it so the connection is freed by reference counting, not left to the garbage
            # collector with its buffers (issue 13).
            vars(proto).pop("connection_made", None)
            vars(proto).pop("connection_lost", None)
            if not mine:
                return  # refused: the protocol never saw the connection
            transport, slot = mine.pop()
            server._conns.discard(transport)
            server.slots.release(slot)
            orig_lost(exc)

        # Instance attributes shadow the methods: the server sees every connection come and go
        # without each protocol class having to know about it.
        proto.connection_made = connection_made  # type: ignore[method-assign]
        proto.connection_lost = connection_lost  # type: ignore[method-assign]
        return proto

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._make_protocol, self.host, self.requested_port, backlog=self.backlog,
                reuse_address=True)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    exc.errno, f"{self.name}: TCP port {self.requested_port} on {self.host} "
                    "is already in use") from exc
            raise
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._stopping = False

    async def stop(self) -> None:
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for t in list(self._conns):
            abort = getattr(t, "abort", None)
            (abort or t.close)()
        self._conns.clear()
        if self._handshakes:  # handshakes cut short by the aborts above end at once
            await asyncio.wait(set(self._handshakes), timeout=2.0)
        try:
            async with asyncio.timeout(2.0):
                await self._server.wait_closed()
        except TimeoutError:  # pragma: no cover
            log.warning("%s: server did not close within 2 s", self.name)
        self._server = None


class UdpServer:
    """A UDP endpoint: ``handler(data, addr, reply)`` for each datagram.

    ``reply(b"")`` really sends an empty datagram: Python 3.11's datagram transport silently
    drops ``sendto(b"")``, but an empty reply is a real answer on some wires (Qtegra's
    ``GetData`` before the first scan), so those go out through the socket itself
    (non-blocking; a zero-length datagram never waits).
    """

    def __init__(self, handler: Callable[[bytes, Any, Callable[[bytes], None]], None],
                 host: str = "127.0.0.1", port: int = 0, *, name: str = "udp") -> None:
        self._handler = handler
        self.host = host
        self.requested_port = port
        self.name = name
        self.port: int | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None

    def _send(self, payload: bytes, addr: Any) -> None:
        tr = self._transport
        if tr is None or tr.is_closing():
            return
        if payload:
            tr.sendto(payload, addr)
            return
        try:
            assert self._sock is not None
            self._sock.sendto(b"", addr)
        except OSError as exc:  # buffer full or peer gone: UDP may drop; say so
            log.debug("%s: empty UDP reply to %s not sent: %s", self.name, addr, exc)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        outer = self

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                try:
                    outer._handler(data, addr, lambda payload: outer._send(payload, addr))
                except Exception:
                    log.exception("%s: datagram handler failed", outer.name)

            def error_received(self, exc: Exception) -> None:
                log.debug("%s: %s", outer.name, exc)

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self.host, self.requested_port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    exc.errno, f"{self.name}: UDP port {self.requested_port} on {self.host} "
                    "is already in use") from exc
            raise
        self._sock = sock
        transport, _ = await loop.create_datagram_endpoint(_Proto, sock=sock)
        self._transport = transport
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._sock = None


#: A datagram handler of :class:`TcpUdpServer`: ``(data, peer host) -> reply``; the reply is
#: bytes, an awaitable of bytes (run as a task, cancelled on stop) or None (no reply).
DatagramHandler = Callable[[bytes, str], "bytes | Awaitable[bytes] | None"]


class TcpUdpServer:
    """A TCP server plus, optionally, a UDP server on the same port (or ``udp_port``),
    started and stopped together; the shape of every Pychron-style text service.

    Each datagram goes to ``datagram(data, host)``. A reply that is an awaitable runs as a
    tracked task: :meth:`stop` cancels those still running, and at most
    ``max_pending_datagrams`` run at once (further datagrams are refused meanwhile). A handler that raises (at once or
    in its task) is logged and answered with ``failure_reply`` when one is given.

    ``ssl`` makes the TCP port speak TLS (see :class:`TcpServer`); UDP stays plain.
    """

    def __init__(self, protocol_factory: Callable[[], asyncio.Protocol],
                 datagram: DatagramHandler, host: str = "127.0.0.1", port: int = 0, *,
                 udp: bool = False, udp_port: int | None = None, name: str = "server",
                 purpose: str = "", max_connections: int = 1024,
                 max_per_address: int | None = None, max_buffered: int | None = None,
                 failure_reply: bytes | None = None, max_pending_datagrams: int = 1024,
                 ssl: _ssl.SSLContext | None = None, handshake_timeout: float = 10.0,
                 first_byte_timeout: float = 30.0,
                 on_handshake_failed: HandshakeFailed | None = None,
                 plain_peer: str = PLAIN_PEER) -> None:
        self.host = host
        self.name = name
        self.purpose = purpose
        self.tcp = TcpServer(protocol_factory, host, port, name=name,
                             max_connections=max_connections, max_per_address=max_per_address,
                             max_buffered=max_buffered, ssl=ssl,
                             handshake_timeout=handshake_timeout,
                             first_byte_timeout=first_byte_timeout,
                             on_handshake_failed=on_handshake_failed,
                             plain_peer=plain_peer)
        self._datagram_handler = datagram
        self._failure_reply = failure_reply
        self.udp_wanted = udp or udp_port is not None
        self._udp_port = udp_port
        self.udp: UdpServer | None = None
        self._tasks: set[asyncio.Future[bytes]] = set()
        #: Async datagram replies in flight at most; beyond, a datagram is refused
        #: (``failure_reply``, logged) so a flood cannot pile up tasks.
        self.max_pending_datagrams = max_pending_datagrams
        self.datagrams_refused = 0

    @property
    def port(self) -> int | None:
        return self.tcp.port

    @property
    def udp_port(self) -> int | None:
        return self.udp.port if self.udp is not None else None

    #: With port 0 the kernel picks a TCP port that is free; the same number for UDP may be
    #: held by another program (any UDP socket on the machine): then both are picked again,
    #: at most this many times.
    FREE_PORT_TRIES = 20

    async def start(self) -> None:
        follows = (self.udp_wanted and self._udp_port is None
                   and self.tcp.requested_port == 0)
        tries = self.FREE_PORT_TRIES if follows else 1
        for attempt in range(1, tries + 1):
            await self.tcp.start()
            if not self.udp_wanted:
                return
            port = self._udp_port if self._udp_port is not None else self.tcp.port
            assert port is not None
            self.udp = UdpServer(self._datagram, self.host, port, name=f"{self.name}/udp")
            try:
                await self.udp.start()
                return
            except PortInUseError:
                self.udp = None
                await self.tcp.stop()
                if attempt == tries:
                    raise
                log.debug("%s: UDP port %d taken by another program; picking another "
                          "free port for TCP and UDP", self.name, port)
            except BaseException:
                self.udp = None
                await self.tcp.stop()
                raise

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.udp is not None:
            await self.udp.stop()
            self.udp = None
        await self.tcp.stop()

    def endpoints(self) -> list[Endpoint]:
        """Bound ports once started; the configured ones before (``labbridge ports``)."""
        tcp_port = self.tcp.port if self.tcp.port is not None else self.tcp.requested_port
        eps = [Endpoint(self.name, "tcp", self.host, tcp_port, purpose=self.purpose)]
        if self.udp is not None:
            eps.append(Endpoint(self.name, "udp", self.host, self.udp.port,
                                purpose=self.purpose))
        elif self.udp_wanted:
            udp_port = self._udp_port if self._udp_port is not None else tcp_port
            eps.append(Endpoint(self.name, "udp", self.host, udp_port, purpose=self.purpose))
        return eps

    def _datagram(self, data: bytes, addr: Any, reply: Callable[[bytes], None]) -> None:
        host = str(addr[0]) if isinstance(addr, tuple) else "local"
        if len(self._tasks) >= self.max_pending_datagrams:
            self.datagrams_refused += 1
            if self.datagrams_refused == 1 or self.datagrams_refused % 1000 == 0:
                log.warning("%s: %d datagram replies already pending; refusing datagrams "
                            "(%d so far)", self.name, len(self._tasks), self.datagrams_refused)
            if self._failure_reply is not None:
                reply(self._failure_reply)
            return
        try:
            result = self._datagram_handler(data, host)
        except Exception:
            log.exception("%s: datagram handler failed", self.name)
            if self._failure_reply is not None:
                reply(self._failure_reply)
            return
        if result is None:
            return
        if isinstance(result, bytes):
            reply(result)
            return
        fut = asyncio.ensure_future(result)
        self._tasks.add(fut)

        def done(f: asyncio.Future[bytes]) -> None:
            self._tasks.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("%s: datagram handler failed: %r", self.name, exc)
                if self._failure_reply is not None:
                    reply(self._failure_reply)
            else:
                reply(f.result())

        fut.add_done_callback(done)
