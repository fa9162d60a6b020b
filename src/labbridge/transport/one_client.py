"""A TCP server that serves exactly one client at a time (spec hexrotcomm.md §6.2).

Used by both roles of the hexapod/rotator link: the generation-A CSC side listens with two of
these (telemetry on P, commands on P+1), the generation-D controller/mock listens with one.

Semantics (spec §6.2, numbered as there):

1. ``start()`` binds; a second ``start()`` raises ``RuntimeError("Start already called.")``.
2. ``port=0`` picks a free port; :attr:`port` holds it once started when exactly one socket was
   bound (give a host string, not ``None``, to be sure of that).
3. While a client is connected, a new connection is accepted and closed at once ("Rejecting
   connection; a client is already connected.", logged, :attr:`rejected_count` +1). The
   first client is not disturbed -- unless ``replace_idle_after`` is set and the current
   client has sent nothing for that many seconds: then the newcomer replaces it (logged with
   both peers and the silence, :attr:`replaced_count` +1), so one silent connection cannot
   lock the real controller out (issue 13).
4. If the current client has hung up but its handler has not noticed yet, the new connection
   replaces it.
6. :attr:`connected_task` resolves when a client connects and is replaced after each close;
   :meth:`wait_connected` / :meth:`wait_disconnected` are the same as awaitable calls.
7. ``connect_callback(server)`` (a coroutine function, ``TypeError`` otherwise) runs when
   :attr:`connected` changes; its exceptions are logged and never affect the I/O.
8. No polling monitor: each client runs ``handler(reader, writer)`` as one task; when it returns
   or raises, the client is closed and the callback fires. The default handler reads and
   discards (logging unexpected bytes) until EOF, which is what the command socket of
   generation A needs (spec §5.6).
9. :meth:`close_client` closes the current client; the server keeps listening; idempotent.
10. :meth:`close` closes the client then the listening socket (each step time-limited);
    idempotent; :attr:`done_task` resolves.
13. ``TCP_NODELAY`` and keepalive are set on every accepted socket.
14. ``admit(transport, replacing)`` is asked about every connection before it is served
    (``replacing``: it would replace the silent client, rule 3) and returns None to accept
    it or the reason to refuse it: the newcomer is closed (logged, :attr:`rejected_count`
    +1) and the current client is kept (issue 12: access).
15. ``ssl`` (a server context from :mod:`labbridge.transport.tls`) serves TLS, through the
    transport's one TLS server path (:func:`~labbridge.transport.tls.tls_accept`, ADR 0113),
    not ``create_server(ssl=...)``: the handshake runs after the accept, so

    * a connection takes part in rules 3, 4 and 14 only once its handshake is done: a
      connection in its handshake never holds the one client slot, never replaces the
      client and is never asked about (``admit`` sees the TLS transport, whose certificate
      names the peer);
    * its first byte must come within ``first_byte_timeout`` and the handshake be done
      within ``handshake_timeout`` of that first byte;
    * connections in their handshake are bounded (``max_handshakes``, a quarter of them per
      address; the one stalled longest is evicted for a newcomer);
    * a failed handshake is reported once: ``on_handshake_failed(host, reason)`` (the node's
      gate audits it) or one warning line; ``plain_peer`` names what a peer that does not
      speak TLS on this port probably is;
    * :meth:`close` aborts the connections still in their handshake and waits for them.

Two ways to serve the client: ``handler(reader, writer)`` (asyncio streams, one task per
client) or ``protocol_factory()`` (an :class:`asyncio.Protocol` per client, called straight
from the event loop with no task hop: for request/response paths where latency matters,
ADR 0044). The single-client rules, events and callbacks are the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

from labbridge.transport.slots import Slot, SlotTable, per_address
from labbridge.transport.tcp import configure_socket, peer_host
from labbridge.transport.tls import PLAIN_PEER, HandshakeFailed, TlsAccept, tls_accept

ClientHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ProtocolFactory = Callable[[], asyncio.Protocol]
ConnectCallback = Callable[["OneClientServer"], Awaitable[None]]
#: ``admit(transport, replacing)`` -> None to serve the newcomer, or why it is refused.
Admit = Callable[[asyncio.BaseTransport, bool], "str | None"]

#: Time limit of each closing step (spec §6.1 ``CLOSE_WAIT_TIME``).
CLOSE_WAIT_TIME = 5.0
READ_CHUNK = 65536


__all__ = ["CLOSE_WAIT_TIME", "READ_CHUNK", "OneClientServer", "configure_socket"]


class OneClientServer:
    """Listen on ``host:port`` and serve a single client at a time."""

    def __init__(
        self,
        name: str,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        handler: ClientHandler | None = None,
        protocol_factory: ProtocolFactory | None = None,
        connect_callback: ConnectCallback | None = None,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        log: logging.Logger | None = None,
        replace_idle_after: float | None = None,
        clock: Callable[[], float] | None = None,
        ssl: _ssl.SSLContext | None = None,
        admit: Admit | None = None,
        handshake_timeout: float = 10.0,
        first_byte_timeout: float = 30.0,
        on_handshake_failed: HandshakeFailed | None = None,
        plain_peer: str = PLAIN_PEER,
        max_handshakes: int = 64,
    ) -> None:
        if connect_callback is not None and not inspect.iscoroutinefunction(connect_callback):
            raise TypeError("connect_callback must be a coroutine function")
        self.name = name
        self.host = host
        self.port = port
        self.family = family
        self.log = log or logging.getLogger(f"{__name__}.{name}")
        if handler is not None and protocol_factory is not None:
            raise ValueError("give a handler or a protocol_factory, not both")
        self._handler = handler or self._discard_handler
        self._protocol_factory = protocol_factory
        self._gate: _Gate | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connect_callback = connect_callback
        self._server: asyncio.Server | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._connected_event = asyncio.Event()
        self._disconnected_event = asyncio.Event()
        self._disconnected_event.set()
        self._closing = False
        self._last_connected = False
        self.connected_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done_task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.should_be_connected = False
        self.rejected_count = 0
        self.replaced_count = 0
        self.client_count = 0
        self.peer: str | None = None
        #: Seconds of silence after which a newcomer replaces the current client (None: never).
        self.replace_idle_after = replace_idle_after
        self._clock = clock or asyncio.get_running_loop().time
        self.ssl = ssl
        self._admit = admit
        #: TLS (rule 15): deadlines (read when a connection arrives), the failure report and
        #: its hint, the connections in their handshake (raw TCP transports) and their tasks.
        self.handshake_timeout = handshake_timeout
        self.first_byte_timeout = first_byte_timeout
        self.on_handshake_failed = on_handshake_failed
        self.plain_peer = plain_peer
        self.handshakes = SlotTable(f"{name} (TLS handshakes)", max_connections=max_handshakes,
                                    max_per_address=per_address(max_handshakes, None),
                                    logger=self.log)
        self._raw: set[asyncio.Transport] = set()
        self._handshake_tasks: set[asyncio.Future[Any]] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None or self._closing:
            raise RuntimeError("Start already called.")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol, self.host, self.port, family=self.family,
            reuse_address=True)
        socks = self._server.sockets
        if len(socks) == 1:
            self.port = socks[0].getsockname()[1]
        self.log.info("%s listening on %s:%s", self.name, self.host, self.port)

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def connected(self) -> bool:
        """Reader and writer present, reader not at EOF, writer not closing (spec §6.2 #5)."""
        if self._protocol_factory is not None:
            gate = self._gate
            return gate is not None and not gate.transport.is_closing()
        return (self._reader is not None and self._writer is not None
                and not self._reader.at_eof() and not self._writer.is_closing())

    @property
    def writer(self) -> asyncio.StreamWriter | None:
        return self._writer

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    async def wait_disconnected(self) -> None:
        await self._disconnected_event.wait()

    async def write(self, data: bytes) -> None:
        """Write one message (one call) and drain; ``ConnectionError`` when not connected."""
        if self._protocol_factory is not None:
            gate = self._gate
            if gate is None or not self.connected:
                raise ConnectionError(f"{self.name}: not connected")
            gate.transport.write(data)
            # Backpressure: a client that does not read holds the writer here, not in memory.
            await gate.writable.wait()
            if gate.transport.is_closing():
                raise ConnectionError(f"{self.name}: connection closed while writing")
            return
        writer = self._writer
        if writer is None or not self.connected:
            raise ConnectionError(f"{self.name}: not connected")
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            await self._drop_client(writer, "write failed")
            raise

    async def close_client(self) -> None:
        """Close the current client (if any); keep listening (spec §6.2 #9)."""
        self.should_be_connected = False
        gate = self._gate
        if gate is not None:
            gate.transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_TIME):
                    await self._disconnected_event.wait()
            if self._gate is gate:
                gate.transport.abort()
                gate.connection_lost(None)
        writer = self._writer
        task = self._client_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if writer is not None:
            await self._drop_client(writer, "closed by us")

    async def close(self) -> None:
        """Close the client, then the listening socket; idempotent (spec §6.2 #10)."""
        if self.done_task.done():
            return
        self._closing = True
        await self.close_client()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for raw in list(self._raw):  # connections still in their TLS handshake (rule 15)
            raw.abort()
        if self._handshake_tasks:  # handshakes cut short by the aborts end at once
            await asyncio.wait(set(self._handshake_tasks), timeout=CLOSE_WAIT_TIME)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_TIME):
                    await server.wait_closed()
        if not self.connected_task.done():
            self.connected_task.cancel()
        # (a list: each task's done callback discards it from the set it was added to)
        tasks, self._tasks = list(self._tasks), set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if not self.done_task.done():
            self.done_task.set_result(None)

    # -- internals ----------------------------------------------------------------------------
    def _make_protocol(self) -> asyncio.BaseProtocol:
        gate: _Gate | _StreamGate = (_Gate(self) if self._protocol_factory is not None
                                     else _StreamGate(self))
        if self.ssl is None:
            return gate
        return self._tls_protocol(gate)

    def _tls_protocol(self, gate: _Gate | _StreamGate) -> TlsAccept:
        """Rule 15: the gate behind a TLS handshake, whose raw connection holds a slot of
        :attr:`handshakes` until the gate has decided (served: released; refused: the first
        to go) or the connection ends."""
        assert self.ssl is not None
        proto = tls_accept(gate, self.ssl, handshake_timeout=self.handshake_timeout,
                           first_byte_timeout=self.first_byte_timeout,
                           on_failure=self._handshake_failed, name=self.name,
                           tasks=self._handshake_tasks, plain_peer=self.plain_peer)
        server = self
        made, lost = proto.connection_made, proto.connection_lost
        mine: list[tuple[asyncio.Transport, Slot]] = []

        def connection_made(transport: asyncio.BaseTransport) -> None:
            raw = cast(asyncio.Transport, transport)  # a TCP transport
            slot = server.handshakes.admit(raw, peer_host(raw))
            if slot is None or server._closing:
                if slot is not None:
                    server.handshakes.release(slot)
                raw.abort()
                return
            mine.append((raw, slot))
            server._raw.add(raw)
            configure_socket(raw.get_extra_info("socket"))  # the handshake's bytes too
            proto.slot = slot  # the gate's too: it reports served or refused through it
            made(raw)

        def connection_lost(exc: Exception | None) -> None:
            # The closures and the protocol refer to each other: undo that, so the
            # connection is freed by reference counting (as TcpServer does).
            vars(proto).pop("connection_made", None)
            vars(proto).pop("connection_lost", None)
            if not mine:
                return  # refused before the handshake: TlsAccept never saw the connection
            transport, slot = mine.pop()
            server._raw.discard(transport)
            server.handshakes.release(slot)
            lost(exc)

        # Instance attributes shadow the methods (TlsAccept calls its own connection_lost
        # when it gives up, so both paths come through here).
        proto.connection_made = connection_made  # type: ignore[method-assign]
        proto.connection_lost = connection_lost  # type: ignore[method-assign]
        return proto

    def _handshake_failed(self, host: str, reason: str) -> None:
        if self._closing:
            return  # our own aborts on close
        if self.on_handshake_failed is None:
            self.log.warning("%s: TLS handshake with %s failed: %s", self.name, host, reason)
            return
        try:
            self.on_handshake_failed(host, reason)
        except Exception:
            self.log.exception("%s: reporting a failed TLS handshake failed", self.name)

    def _served(self, gate: _Gate | _StreamGate | None) -> None:
        """The gate's connection is the client now: the one-client rules govern it, its
        handshake slot is free for others."""
        if gate is not None and gate.slot is not None:
            self.handshakes.release(gate.slot)
            gate.slot = None

    @staticmethod
    def _turned_away(gate: _Gate | _StreamGate | None) -> None:
        """The gate's connection is refused: while its TLS close runs it is the first
        connection evicted for a newcomer's handshake."""
        if gate is not None and gate.slot is not None:
            gate.slot.finished()

    def _silence(self, last_rx: float | None) -> float | None:
        """Seconds the current client has been silent if that allows replacing it, else None."""
        if self.replace_idle_after is None or last_rx is None:
            return None
        silent = self._clock() - last_rx
        return silent if silent >= self.replace_idle_after else None

    def _admitted(self, transport: asyncio.BaseTransport, peer: str, replacing: bool) -> bool:
        """Rule 14: ask ``admit``; log and count a refusal."""
        if self._admit is None:
            return True
        reason = self._admit(transport, replacing)
        if reason is None:
            return True
        self.rejected_count += 1
        if replacing:
            self.log.warning("%s: %s may not replace the silent client %s; refusing it: %s",
                             self.name, peer, self.peer, reason)
        else:
            self.log.warning("%s: refusing connection from %s: %s", self.name, peer, reason)
        return False

    def _log_replacement(self, newcomer: str, silent: float) -> None:
        self.replaced_count += 1
        self.log.warning("%s: client %s sent nothing for %.1f s (limit %.1f s); replacing it "
                         "with %s", self.name, self.peer, silent, self.replace_idle_after,
                         newcomer)

    async def _refuse_writer(self, writer: asyncio.StreamWriter) -> None:
        """Close a newcomer that is not served (stream mode)."""
        self._turned_away(_stream_gate(writer))
        await _close_writer(writer)

    async def _on_accept(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        if self._closing:
            await self._refuse_writer(writer)
            return
        silent = None
        if self.connected:
            current = self._writer
            gate = _stream_gate(current) if current is not None else None
            silent = self._silence(gate.last_rx if gate is not None else None)
        if not self._admitted(writer.transport, peer, silent is not None):
            await self._refuse_writer(writer)
            return
        if self.connected:
            if silent is None:
                self.rejected_count += 1
                self.log.warning("%s: rejecting connection from %s; a client is already "
                                 "connected (%s).", self.name, peer, self.peer)
                await self._refuse_writer(writer)
                return
            self._log_replacement(peer, silent)
            await self.close_client()
        elif self._writer is not None:  # #4: the old client hung up unnoticed
            await self.close_client()
        self._served(_stream_gate(writer))
        configure_socket(writer.get_extra_info("socket"))
        self._reader, self._writer = reader, writer
        self.peer = peer
        self.should_be_connected = True
        self.client_count += 1
        self.log.info("%s: client %s connected", self.name, peer)
        self._client_task = asyncio.create_task(self._run_client(reader, writer),
                                                name=f"{self.name}-client")
        self._connected_event.set()
        self._disconnected_event.clear()
        if not self.connected_task.done():
            self.connected_task.set_result(None)
        await self._notify()

    async def _run_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        reason = "handler finished"
        try:
            await self._handler(reader, writer)
            reason = "end of stream" if reader.at_eof() else reason
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            reason = f"connection lost: {exc!r}"
        except Exception as exc:
            reason = f"handler failed: {exc!r}"
            self.log.exception("%s: client handler failed", self.name)
        finally:
            if self._writer is writer:
                self._client_task = None
                await self._drop_client(writer, reason)

    async def _drop_client(self, writer: asyncio.StreamWriter, reason: str) -> None:
        if self._writer is not writer:
            await _close_writer(writer)
            return
        self._reader = self._writer = None
        self.log.info("%s: client %s disconnected (%s)", self.name, self.peer, reason)
        await _close_writer(writer)
        self._connected_event.clear()
        self._disconnected_event.set()
        if self.connected_task.done():
            self.connected_task = asyncio.get_running_loop().create_future()
        await self._notify()

    async def _notify(self) -> None:
        now = self.connected
        if now == self._last_connected:
            return
        self._last_connected = now
        if self._connect_callback is None:
            return
        try:
            await self._connect_callback(self)
        except Exception:
            self.log.exception("%s: connect_callback failed", self.name)

    async def _discard_handler(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(READ_CHUNK):
            self.log.warning("%s: unexpected data read (%d bytes) and discarded", self.name,
                             len(data))


    # -- protocol mode ---------------------------------------------------------------------------
    def _gate_made(self, gate: _Gate) -> bool:
        """A connection arrived (protocol mode); False if it must be refused."""
        peer = _peer_name(gate.transport)
        if self._closing:
            return False
        silent = None
        if self.connected:
            assert self._gate is not None
            silent = self._silence(self._gate.last_rx)
        if not self._admitted(gate.transport, peer, silent is not None):
            return False
        if self.connected:
            assert self._gate is not None
            if silent is None:
                self.rejected_count += 1
                self.log.warning("%s: rejecting connection from %s; a client is already "
                                 "connected (%s).", self.name, peer, self.peer)
                return False
            self._log_replacement(peer, silent)
            self._gate.transport.abort()
            self._gate_lost(self._gate, f"replaced by {peer}")
        elif self._gate is not None:  # #4: the old client hung up unnoticed
            self._gate.transport.abort()
            self._gate_lost(self._gate, "replaced")
        self._served(gate)
        configure_socket(gate.transport.get_extra_info("socket"))
        self._gate = gate
        self.peer = peer
        self.should_be_connected = True
        self.client_count += 1
        self.log.info("%s: client %s connected", self.name, peer)
        self._connected_event.set()
        self._disconnected_event.clear()
        if not self.connected_task.done():
            self.connected_task.set_result(None)
        self._spawn_notify()
        return True

    def _gate_lost(self, gate: _Gate, reason: str) -> None:
        if self._gate is not gate:
            return
        self._gate = None
        self.log.info("%s: client %s disconnected (%s)", self.name, self.peer, reason)
        self._connected_event.clear()
        self._disconnected_event.set()
        if self.connected_task.done():
            self.connected_task = asyncio.get_running_loop().create_future()
        self._spawn_notify()

    def _spawn_notify(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _StreamGate(asyncio.StreamReaderProtocol):
    """Stream mode: ``asyncio.start_server``'s protocol, plus the time of the last bytes."""

    def __init__(self, server: OneClientServer) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(asyncio.StreamReader(limit=READ_CHUNK, loop=loop), server._on_accept,
                         loop=loop)
        self._clock = server._clock
        self.last_rx = self._clock()
        #: TLS: the handshake slot of the raw connection until the server decides (rule 15).
        self.slot: Slot | None = None

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._clock()
        super().data_received(data)


class _Gate(asyncio.Protocol):
    """Protocol-mode wrapper: enforces one client, then forwards to the user's protocol."""

    def __init__(self, server: OneClientServer) -> None:
        self.server = server
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.last_rx = server._clock()
        #: TLS: the handshake slot of the raw connection until the server decides (rule 15).
        self.slot: Slot | None = None
        #: Clear while the transport's write buffer is over its high-water mark.
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.server._gate_made(self):
            self.server._turned_away(self)
            transport.close()
            return
        assert self.server._protocol_factory is not None
        self.inner = self.server._protocol_factory()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.server._clock()
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            self.inner.eof_received()
        return False

    def pause_writing(self) -> None:
        self.writable.clear()
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.writable.set()
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # release a writer waiting on a connection that is gone
        inner, self.inner = self.inner, None
        if inner is None:
            return
        try:
            inner.connection_lost(exc)
        finally:
            self.server._gate_lost(self, "end of stream" if exc is None else repr(exc))


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):  # TimeoutError included
        async with asyncio.timeout(CLOSE_WAIT_TIME):
            await writer.wait_closed()


def _stream_gate(writer: asyncio.StreamWriter) -> _StreamGate | None:
    """The stream-mode gate of ``writer``'s connection (behind the TLS accept with TLS)."""
    proto: Any = writer.transport.get_protocol()
    proto = getattr(proto, "inner", proto)
    return proto if isinstance(proto, _StreamGate) else None


def _peer_name(writer: asyncio.StreamWriter | asyncio.BaseTransport) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
