"""Small helpers around pyzmq asyncio sockets shared by the bus services.

* one :class:`zmq.asyncio.Context` per process (:func:`context`), as ZeroMQ recommends;
* binding that reports the real port when asked for port 0 (tests never use fixed ports);
* startup fails loudly with the address when a port is taken (spec pychron.md §17 #20);
* a synchronous *shadow* of an asyncio socket, for non-blocking sends and for draining a
  readable socket without creating one future per message (ADR 0033);
* reconnect options (exponential backoff inside ZeroMQ) for every connecting socket;
* the few things we need to know about a peer's TCP connection (who it is, how many bytes it
  sent us) and a way to drop it, for the publisher's subscription limit (ADR 0120).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

_CONTEXT: zmq.asyncio.Context | None = None


#: First and longest delay between two connection attempts of a connecting socket (seconds).
#: ZeroMQ doubles its delay from the first to the longest while a peer refuses; our own
#: loops (Subscriber, DashboardClient) use the same figures for peers that accept and close.
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0


class BusError(Exception):
    """A bus socket could not be set up (port in use, bad endpoint, unwritable recording).

    The message is one line that names the endpoint or path and says what to do, so a CLI can
    print it as it is.
    """


def context() -> zmq.asyncio.Context:
    """The process-wide asyncio ZeroMQ context (created on first use).

    Every socket it creates starts with ``LINGER`` 0: closing a socket, or terminating the
    context at exit, never waits for unsent messages (ADR 0126).
    """
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.closed:
        _CONTEXT = zmq.asyncio.Context()
        _CONTEXT.setsockopt(zmq.LINGER, 0)
    return _CONTEXT


def set_reconnect(sock: zmq.Socket[Any] | zmq.asyncio.Socket) -> None:
    """Exponential backoff for ZeroMQ's own reconnects (a peer that refuses): from
    :data:`RECONNECT_FIRST` doubling to :data:`RECONNECT_MAX` instead of ZeroMQ's default of
    every 100 ms for ever."""
    sock.setsockopt(zmq.RECONNECT_IVL, int(RECONNECT_FIRST * 1000))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(RECONNECT_MAX * 1000))


@dataclass(frozen=True, slots=True)
class Address:
    """Where a bus socket listens or connects (turned into node Endpoints by the node)."""

    protocol: str  # "zmq-pub", "zmq-rep", "zmq-sub", "zmq-req"
    host: str
    port: int
    role: str = "listen"
    purpose: str = ""

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "*", "") else self.host
        return f"tcp://{host}:{self.port}"


def tcp_url(host: str, port: int) -> str:
    """``tcp://host:port`` for bind (``0.0.0.0`` becomes ``*``) or connect."""
    h = "*" if host in ("0.0.0.0", "*", "") else host
    if ":" in h and not h.startswith("["):
        h = f"[{h}]"
    return f"tcp://{h}:{port}"


def normalize_endpoint(text: str, default_port: int | None = None) -> str:
    """Accept ``tcp://h:p``, ``ipc://...``, ``inproc://...``, ``h:p`` or ``h`` (with a
    default port); return a ZeroMQ URL."""
    if "://" in text:
        return text
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise BusError(f"expected HOST:PORT or a tcp:// URL, got {text!r}")
        host, port = text, str(default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise BusError(f"bad port in {text!r}")
    return f"tcp://{host.strip('[]') or '127.0.0.1'}:{int(port)}"


def bind_error(what: str, host: str, port: int, exc: zmq.ZMQError, key: str = "port") -> BusError:
    """The one-line error for a failed bind, naming the address and what to do."""
    url = tcp_url(host, port)
    if exc.errno == errno.EADDRINUSE:
        hint = (f"another program (perhaps another labbridge node) is using port {port}: stop "
                f"it, or choose another port ({key}: in the node file; 0 = any free port)")
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = (f"{host} is not an address of this machine: use one of its addresses, "
                "127.0.0.1, or 0.0.0.0 for all (host: in the node file, or --host)")
    elif exc.errno == errno.EACCES:
        hint = f"port {port} needs privileges: use a port above 1023"
    else:
        hint = f"check host and {key} in the node file"
    return BusError(f"{what}: cannot listen on {url}: {exc.strerror}; {hint}")


def bind(sock: zmq.Socket[Any] | zmq.asyncio.Socket, host: str, port: int, what: str,
         key: str = "port") -> int:
    """Bind ``sock`` to ``host:port`` and return the bound port; a one-line
    :class:`BusError` naming the address when that fails (``key`` is the node-file key of the
    port, for the hint)."""
    try:
        sock.bind(tcp_url(host, port))
    except zmq.ZMQError as exc:
        raise bind_error(what, host, port, exc, key) from None
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(last.rsplit(":", 1)[1])


def connect(sock: zmq.Socket[Any] | zmq.asyncio.Socket, url: str, what: str) -> None:
    """``sock.connect(url)`` with a one-line :class:`BusError` when ZeroMQ refuses the
    endpoint (a malformed address; an unreachable peer is not an error, ZeroMQ retries)."""
    try:
        sock.connect(url)
    except zmq.ZMQError as exc:
        raise BusError(f"{what}: cannot connect to {url}: {exc.strerror}; write the endpoint "
                       "as HOST:PORT or tcp://HOST:PORT") from None


def shadow(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A blocking-API view of the same ZeroMQ socket (same thread only)."""
    return zmq.Socket.shadow(sock.underlying)


def close(sock: zmq.Socket[Any] | zmq.asyncio.Socket | None) -> None:
    """Close without lingering: unsent telemetry is not worth blocking shutdown for."""
    if sock is not None and not sock.closed:
        sock.close(linger=0)


# -- peers of a bound socket (the publisher's subscription limit, ADR 0120) --------------------
#: Offset of ``tcpi_bytes_received`` (u64) in Linux's ``struct tcp_info`` (ABI-stable, since
#: Linux 4.1); the struct is at least this long + 8 where the field exists.
_TCPI_BYTES_RECEIVED = 128


def _dup(fd: int) -> socket.socket | None:
    """A socket object on a duplicate of ``fd`` (ZeroMQ owns ``fd``; we never close it)."""
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def peer_name(fd: int) -> Any:
    """The remote address of TCP socket ``fd``, or None (not a connected socket any more)."""
    s = _dup(fd)
    if s is None:
        return None
    with s:
        try:
            return s.getpeername()
        except OSError:
            return None


def bytes_received(fd: int, peer: Any) -> int | None:
    """Bytes received so far on TCP socket ``fd`` if it still belongs to ``peer``; None when
    unknown (no TCP_INFO on this system) and -1 when ``fd`` is no longer that connection."""
    s = _dup(fd)
    if s is None:
        return -1
    with s:
        try:
            if s.getpeername() != peer:
                return -1
        except OSError:
            return -1
        opt = getattr(socket, "TCP_INFO", None)
        if opt is None:
            return None
        try:
            info = s.getsockopt(socket.IPPROTO_TCP, opt, 256)
        except OSError:
            return None
        if len(info) < _TCPI_BYTES_RECEIVED + 8:
            return None
        return int(struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0])


class _SockaddrUnspec(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_char * 14)]


def _abort(fd: int) -> bool:
    """Reset TCP socket ``fd`` at once (Linux: ``connect`` to an ``AF_UNSPEC`` address
    disconnects it, discards what is queued for reading and sends the peer a reset).
    ``shutdown`` alone would let ZeroMQ read everything already received -- megabytes of
    subscriptions from a flood -- before it sees the end."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        addr = _SockaddrUnspec(socket.AF_UNSPEC)
        return int(libc.connect(fd, ctypes.byref(addr), ctypes.sizeof(addr))) == 0
    except (OSError, AttributeError):
        return False


def drop_peer(fd: int, peer: Any) -> bool:
    """End the TCP connection ``fd`` if it still belongs to ``peer`` (reset where the system
    allows, else shut down): ZeroMQ sees the connection end and forgets the peer's
    subscriptions. True if done."""
    s = _dup(fd)
    if s is None:
        return False
    with s:
        try:
            if s.getpeername() != peer:
                return False
        except OSError:
            return False
        if not _abort(s.fileno()):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                return False
    return True


# -- socket events ------------------------------------------------------------------------------
_MONITOR_IDS = itertools.count(1)


class Monitor:
    """The events of one ZeroMQ socket (connections made, dropped, handshakes), safely.

    libzmq sends each event from the thread that raises it -- usually the context's I/O
    thread -- with a *blocking* send, holding the socket's monitor lock. pyzmq's
    ``get_monitor_socket`` leaves two ways for that send to block for ever, freezing every
    socket of the context and then any thread that touches the monitored socket (closing it,
    or disabling its monitor, waits for that lock in C, where no signal can interrupt it):

    * the reading end is closed before the monitor is disabled (nobody will ever read);
    * more events pile up than the reading end's queue holds (1000 + 1000).

    Here the reading end has no queue limit (events are a few dozen bytes and a task reads
    them as they come), the monitor gets a unique address, and :meth:`close` disables the
    monitor *before* closing the reading end (ADR 0126).
    """

    def __init__(self, sock: zmq.asyncio.Socket, events: int) -> None:
        addr = f"inproc://labbridge-monitor-{os.getpid()}-{next(_MONITOR_IDS)}"
        sock.monitor(addr, events)
        pair: zmq.asyncio.Socket = sock.context.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.setsockopt(zmq.RCVHWM, 0)  # unlimited: the sender must never wait
        try:
            pair.connect(addr)
        except zmq.ZMQError:
            pair.close(linger=0)
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
            raise
        self.socket = pair
        self._target: zmq.asyncio.Socket | None = sock

    def close(self) -> None:
        """Disable the monitor, then close the reading end (in this order; idempotent)."""
        target, self._target = self._target, None
        if target is not None and not target.closed:
            with contextlib.suppress(zmq.ZMQError):
                target.disable_monitor()
        close(self.socket)
