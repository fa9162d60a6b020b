"""The main computer's side: a PyMoDAQ-style TCPServer (spec pymodaq.md §2, §4, §6, §7).

Distant PyMoDAQ modules (or labbridge clients) connect, identify as ``ACTUATOR`` or ``GRABBER``
and send their settings; the server detects each connection's generation from its first frame
(§7.1) and exposes the remote module as an ordinary local labbridge device:

* :class:`RemoteActuator`: ``move_abs``, ``move_rel``, ``move_home``, ``stop_motion``,
  ``get_position`` (``check_position`` in G1, ``get_actuator_value`` in G3), ``position``.
* :class:`RemoteDetector`: ``grab(dim)`` (``Send Data 0D/1D/2D/ND`` -> ``Done``), ``data``,
  and ``axes`` (G1 ``x_axis`` / ``y_axis``).
* both: ``set_info(path, xml)``, ``settings_xml`` / ``settings`` from ``Infos``,
  ``disconnect()``.

One client per type: a second ``ACTUATOR`` replaces the first (§7.3 [lb]). Every request has a
timeout and only one request per device is in flight (the ``BUSY`` state of §7.3);
``stop_motion`` goes out at once even during a move. Replies are matched by exact message type
(§9 #7). A remote device whose client is gone raises :class:`RemoteUnavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from labbridge.devices.base import Device
from labbridge.links.pymodaq.settings_xml import xml_values
from labbridge.links.pymodaq.stream import PyMoDAQStream
from labbridge.protocol.pymodaq.messages import (
    AxisInfo,
    ClientType,
    Dialect,
    Done,
    Generation,
    GetPosition,
    Hello,
    Info,
    Infos,
    InfoXml,
    MoveAbs,
    MoveDone,
    MoveHome,
    MoveRel,
    PositionIs,
    Quit,
    Role,
    SendData,
    SetInfo,
    StopMotion,
    Unknown,
)
from labbridge.protocol.pymodaq.objects import DataToExport

log = logging.getLogger(__name__)


class RemoteUnavailable(ConnectionError):
    """No client of this type is connected (or it went away during the request)."""


class _RemoteModule(Device):
    """Common part of the remote actuator and detector: session, requests, settings."""

    client_type: ClientType

    def __init__(self, name: str, *, timeout: float | None = 10.0) -> None:
        super().__init__(name)
        self.timeout = timeout
        self.session: ServerSession | None = None
        self.settings_xml: str | None = None
        self.settings: dict[str, str] = {}
        self.infos: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        #: Futures waiting for a reply, by reply type, oldest first (replies come in order).
        self._pending: dict[type, deque[asyncio.Future[Any]]] = {}
        self._attached = asyncio.Event()

    # -- connection ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.session is not None and self.session.stream.is_open

    @property
    def generation(self) -> Generation | None:
        return None if self.session is None else self.session.stream.generation

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a client of this type is registered."""
        await asyncio.wait_for(self._attached.wait(), timeout)

    def _attach(self, session: ServerSession) -> None:
        old = self.session
        self.session = session
        self._attached.set()
        if old is not None and old is not session:
            log.info("%s: a new %s client at %s replaces %s", self.name,
                     self.client_type.value, session.stream.peer, old.stream.peer)
            self._fail_pending(f"replaced by a new client at {session.stream.peer}")
            old.stream.close()
        self.emit("connected", session.stream.peer)

    def _detach(self, session: ServerSession, reason: str | None) -> None:
        if self.session is not session:
            return
        self.session = None
        self._attached.clear()
        self._fail_pending(reason or "client disconnected")
        self.emit("connected", None)

    def _fail_pending(self, reason: str) -> None:
        for queue in self._pending.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(RemoteUnavailable(f"{self.name}: {reason}"))
        self._pending.clear()

    def _stream(self) -> PyMoDAQStream:
        if self.session is None or not self.session.stream.is_open:
            raise RemoteUnavailable(f"{self.name}: no {self.client_type.value} client connected")
        return self.session.stream

    def _send_expecting(self, msg: object, reply: type) -> asyncio.Future[Any]:
        """Send ``msg`` and queue a future for its reply (caller holds the lock)."""
        stream = self._stream()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._pending.setdefault(reply, deque())
        queue.append(fut)
        try:
            stream.send(msg)
        except BaseException:
            queue.remove(fut)
            raise
        return fut

    async def _await_reply(self, fut: asyncio.Future[Any], reply: type,
                           timeout: float | None) -> Any:
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            # A late reply would be taken for the next request's: this connection's state is
            # unknown from now on, so drop it (the client reconnects).
            self._fail_pending("no reply in time")
            if self.session is not None:
                self.session.stream.fail(f"timeout: no {reply.__name__} within {timeout} s")
            raise
        finally:
            queue = self._pending.get(reply)
            if queue and fut in queue:
                queue.remove(fut)

    async def _request(self, msg: object, reply: type, timeout: float | None) -> Any:
        async with self._lock:
            fut = self._send_expecting(msg, reply)
            return await self._await_reply(fut, reply, timeout)

    def _resolve(self, msg: object) -> bool:
        queue = self._pending.get(type(msg))
        while queue:
            fut = queue.popleft()
            if not fut.done():
                fut.set_result(msg)
                return True
        return False

    # -- messages from the client -----------------------------------------------------------------
    def handle(self, msg: object) -> None:
        if isinstance(msg, Infos):
            self.settings_xml = msg.xml
            self.settings = xml_values(msg.xml)
            self.emit("settings", dict(self.settings))
        elif isinstance(msg, InfoXml):
            self.settings.update(xml_values(msg.xml))
            self.emit("info_xml", {"path": list(msg.path), "xml": msg.xml})
        elif isinstance(msg, Info):
            self.infos[msg.name] = msg.value
            self.emit(f"info.{msg.name}", msg.value)
        else:
            self._handle(msg)

    def _handle(self, msg: object) -> None:
        log.warning("%s: ignoring %s from the client", self.name, type(msg).__name__)

    # -- commands common to both -----------------------------------------------------------------
    def set_info(self, path: list[str] | tuple[str, ...], xml: str) -> None:
        """Send one parameter's XML (``set_info``, no reply expected; §4.2)."""
        self._stream().send(SetInfo(tuple(path), xml))

    def disconnect(self) -> None:
        """Close the connection to the current client (it may reconnect)."""
        if self.session is not None:
            self.session.stream.close()

    def snapshot(self) -> dict[str, Any]:
        return {"connected": self.connected,
                "generation": None if self.generation is None else self.generation.value,
                "settings": dict(self.settings)}


class RemoteActuator(_RemoteModule):
    """A distant ``DAQ_Move`` (``ACTUATOR`` client) as a local stage-like device."""

    kind = "pymodaq_remote_actuator"
    client_type = ClientType.ACTUATOR

    def __init__(self, name: str, *, timeout: float | None = 10.0,
                 move_timeout: float | None = 60.0) -> None:
        super().__init__(name, timeout=timeout)
        self.move_timeout = move_timeout
        self._position: float | None = None

    @property
    def units(self) -> str:
        return self.settings.get("units", "")

    @property
    def position(self) -> float | None:
        return self._position

    def _set(self, value: float) -> float:
        if value != self._position:
            self._position = value
            self.emit("position", value)
        return value

    def _handle(self, msg: object) -> None:
        if isinstance(msg, PositionIs | MoveDone):
            self._set(msg.value)
            self._resolve(msg)
        else:
            super()._handle(msg)

    async def _move(self, msg: object, timeout: float | None) -> float:
        reply = await self._request(msg, MoveDone, self.move_timeout if timeout == -1 else timeout)
        return float(reply.value)

    async def move_abs(self, target: float, *, timeout: float | None = -1) -> float:
        return await self._move(MoveAbs(float(target), self.units), timeout)

    async def move_rel(self, delta: float, *, timeout: float | None = -1) -> float:
        return await self._move(MoveRel(float(delta), self.units), timeout)

    async def move_home(self, *, timeout: float | None = -1) -> float:
        return await self._move(MoveHome(), timeout)

    async def stop_motion(self) -> None:
        """Sent at once, even while a move waits for ``move_done`` (§7.3 BUSY)."""
        self._stream().send(StopMotion())

    async def get_position(self) -> float:
        query = "get_actuator_value" if self.generation is Generation.G3 else "check_position"
        reply = await self._request(GetPosition(query), PositionIs, self.timeout)
        return float(reply.value)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "position": self._position}


class RemoteDetector(_RemoteModule):
    """A distant ``DAQ_Viewer`` (``GRABBER`` client) as a local detector device."""

    kind = "pymodaq_remote_detector"
    client_type = ClientType.GRABBER

    def __init__(self, name: str, *, timeout: float | None = 10.0,
                 data_dim: str = "2D") -> None:
        super().__init__(name, timeout=timeout)
        self.data_dim = data_dim
        self.last: Done | None = None
        self.axes: dict[str, AxisInfo] = {}
        self.grabs = 0

    @property
    def data(self) -> tuple[np.ndarray, ...] | None:
        """Arrays of the last ``Done`` (None before the first)."""
        return None if self.last is None else self.last.arrays

    @property
    def dte(self) -> DataToExport | None:
        return None if self.last is None else self.last.dte

    def _handle(self, msg: object) -> None:
        if isinstance(msg, Done):
            self.last = msg
            self.grabs += 1
            if not self._resolve(msg):
                self.emit("data", msg.arrays)
        elif isinstance(msg, AxisInfo):
            self.axes[msg.axis] = msg
            self.emit(f"{msg.axis}_axis", {"label": msg.label, "units": msg.units})
        else:
            super()._handle(msg)

    async def grab(self, dim: str | None = None) -> list[np.ndarray]:
        """One snapshot: ``Send Data <dim>`` and wait for ``Done`` (§4.2)."""
        reply = await self._request(SendData(dim or self.data_dim), Done, self.timeout)
        return list(reply.arrays)

    async def grab_stream(self, count: int, dim: str | None = None, *,
                          in_flight: int = 2) -> AsyncIterator[list[np.ndarray]]:
        """``count`` snapshots with up to ``in_flight`` requests outstanding.

        The client executes commands in order, so keeping a second ``Send Data`` queued lets
        it start the next acquisition while the previous frame is still on the wire
        (continuous acquisition; the one-at-a-time :meth:`grab` leaves the link idle for a
        round trip per frame)."""
        if count <= 0:
            return
        async with self._lock:
            futures: deque[asyncio.Future[Any]] = deque()
            sent = 0
            try:
                while sent < min(in_flight, count):
                    futures.append(self._send_expecting(SendData(dim or self.data_dim), Done))
                    sent += 1
                while futures:
                    reply = await self._await_reply(futures.popleft(), Done, self.timeout)
                    if sent < count:
                        futures.append(self._send_expecting(SendData(dim or self.data_dim),
                                                            Done))
                        sent += 1
                    yield list(reply.arrays)
            finally:
                # Left early: the client will still answer the requests already sent. Their
                # futures stay queued so those late replies are consumed here and never
                # taken for the answer to a later grab().
                for fut in futures:
                    fut.add_done_callback(_consume)

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "grabs": self.grabs}


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's outcome so asyncio does not log it as lost."""
    if not fut.cancelled():
        fut.exception()


class ServerSession:
    """One accepted connection: waits for the client type, then feeds its remote device."""

    def __init__(self, server: PyMoDAQServer) -> None:
        self.server = server
        self.module: _RemoteModule | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self.stream = PyMoDAQStream(
            Role.SERVER, on_message=self._on_message, on_close=self._on_close,
            on_open=self._on_open, dialect=server.dialect,
            detect_dialect=server.detect_dialect, max_message=server.max_message,
            name=server.name)

    def _on_open(self, stream: PyMoDAQStream) -> None:
        if len(self.server._sessions) > self.server.max_connections:
            stream.fail("too many connections")
        elif self.server.hello_timeout is not None:
            # a connection that never says who it is would hold a slot forever
            self._hello_timer = asyncio.get_running_loop().call_later(
                self.server.hello_timeout, stream.fail,
                f"timeout: no client type within {self.server.hello_timeout:g} s")

    def _on_message(self, stream: PyMoDAQStream, msg: object) -> None:
        if isinstance(msg, Hello):
            if self._hello_timer is not None:
                self._hello_timer.cancel()
                self._hello_timer = None
            self.module = self.server.module_for(msg.client_type)
            log.info("%s: %s registered from %s (%s)", self.server.name,
                     msg.client_type.value, stream.peer,
                     stream.generation.name if stream.generation else "?")
            self.module._attach(self)
        elif isinstance(msg, Quit):
            log.info("%s: client %s quit", self.server.name, stream.peer)
            stream.close()
        elif isinstance(msg, Unknown):
            log.warning("%s: ignoring unknown command %r from %s", self.server.name, msg.name,
                        stream.peer)
        elif self.module is not None:
            self.module.handle(msg)

    def _on_close(self, stream: PyMoDAQStream, reason: str | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.server._sessions.discard(self)
        if self.module is not None:
            self.module._detach(self, reason)
        self.server.closed_connections += 1
        self.server.close_reasons.append(reason)
        self.server._changed.set()


class PyMoDAQServer:
    """The TCPServer plugin's role as a labbridge service (one port, both client types)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6341, *, name: str = "pymodaq-server",
                 actuator: RemoteActuator | None = None, detector: RemoteDetector | None = None,
                 dialect: Dialect = Dialect.G1A, detect_dialect: bool = True,
                 max_message: int = 256 * 1024 * 1024, max_connections: int = 16,
                 hello_timeout: float | None = 10.0) -> None:
        self.name = name
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.actuator = actuator or RemoteActuator("remote_actuator")
        self.detector = detector or RemoteDetector("remote_detector")
        self.dialect = dialect
        self.detect_dialect = detect_dialect
        self.max_message = max_message
        self.max_connections = max_connections
        #: Seconds a new connection has to send its client type (None = forever).
        self.hello_timeout = hello_timeout
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[ServerSession] = set()
        self._changed = asyncio.Event()
        self.closed_connections = 0
        #: Why each closed connection ended (None = clean close), oldest first.
        self.close_reasons: list[str | None] = []
        self.accepted = 0

    def module_for(self, client_type: ClientType) -> _RemoteModule:
        return self.actuator if client_type is ClientType.ACTUATOR else self.detector

    def _factory(self) -> PyMoDAQStream:
        session = ServerSession(self)
        self.accepted += 1
        self._sessions.add(session)  # refused in _on_open when over max_connections
        return session.stream

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, self.host, self.requested_port,
                                                reuse_address=True, family=socket.AF_INET)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("%s: listening on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
        for s in list(self._sessions):
            s.stream.close()  # flush what is queued, then close (clean, not an error)
        for s in list(self._sessions):
            try:
                await asyncio.wait_for(s.stream.wait_closed(), 2.0)
            except TimeoutError:
                s.stream.fail("server stopping: peer does not read")
        if srv is not None:
            await srv.wait_closed()

    async def wait_closed_connections(self, n: int) -> None:
        """Wait until ``n`` connections have ended since the server started (tests, tools)."""
        while self.closed_connections < n:
            self._changed.clear()
            await self._changed.wait()

    @property
    def sessions(self) -> int:
        return len(self._sessions)
