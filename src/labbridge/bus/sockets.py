"""Small helpers around pyzmq asyncio sockets shared by the bus services.

* one :class:`zmq.asyncio.Context` per process (:func:`context`), as ZeroMQ recommends;
* binding that reports the real port when asked for port 0 (tests never use fixed ports);
* startup fails loudly with the address when a port is taken (spec pychron.md §17 #20);
* a synchronous *shadow* of an asyncio socket, for non-blocking sends and for draining a
  readable socket without creating one future per message (ADR 0033).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

_CONTEXT: zmq.asyncio.Context | None = None


class BusError(Exception):
    """A bus socket could not be set up (port in use, bad endpoint)."""


def context() -> zmq.asyncio.Context:
    """The process-wide asyncio ZeroMQ context (created on first use)."""
    global _CONTEXT
    if _CONTEXT is None or _CONTEXT.closed:
        _CONTEXT = zmq.asyncio.Context()
    return _CONTEXT


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


def bind(sock: zmq.Socket[Any] | zmq.asyncio.Socket, host: str, port: int, what: str) -> int:
    """Bind ``sock`` to ``host:port`` and return the bound port; clear error when taken."""
    url = tcp_url(host, port)
    try:
        sock.bind(url)
    except zmq.ZMQError as exc:
        raise BusError(f"{what}: cannot bind {url}: {exc.strerror}") from None
    last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    return int(last.rsplit(":", 1)[1])


def shadow(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A blocking-API view of the same ZeroMQ socket (same thread only)."""
    return zmq.Socket.shadow(sock.underlying)


def close(sock: zmq.Socket[Any] | zmq.asyncio.Socket | None) -> None:
    """Close without lingering: unsent telemetry is not worth blocking shutdown for."""
    if sock is not None and not sock.closed:
        sock.close(linger=0)
