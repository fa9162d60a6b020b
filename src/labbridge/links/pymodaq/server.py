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

Access (issue 12, docs/adr/0171): a PyMoDAQ connection exists only to register a hardware
module, which needs the ``operator`` role, so the node's gate judges every connection as it
opens (by source address, or by the client certificate's identity over TLS) and again where it
registers (:meth:`ServerSession._register`, the one place where a connection becomes the
node's remote actuator or detector). A refused peer is dropped with a TCP reset and nothing
else: the protocol has no refusal message, and a reset is what stops a real PyMoDAQ client
(a clean close makes it spin). Registrations, replacements and refusals are audited. What the
node itself asks a remote module to do (a move requested on the web page, by a script) was
checked where that request entered the node, not here.

TLS (optional, labbridge at both ends): the handshake runs after the accept, inside the
listener's slots (:class:`labbridge.transport.tls.TlsAccept`, through ``TcpServer(ssl=...)``,
the same path as the Pychron command server's), so a handshake that fails (no client
certificate, another CA's, a plain PyMoDAQ client) is audited and logged like any other
refusal; once it is done, the TLS layer decrypts straight into the stream's buffers.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy as np

from labbridge.access import DONE, AccessDenied, Action, Gate, Principal
from labbridge.access import Role as Access
from labbridge.devices.base import Device
from labbridge.links.pymodaq.stream import PyMoDAQStream
from labbridge.protocol.pymodaq._wire import ReceiveBudget
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
from labbridge.protocol.pymodaq.settings_xml import (
    Param,
    ParsedSettings,
    SettingsXmlError,
    parameter_to_xml,
    parse_settings,
)
from labbridge.transport.tcp import TcpServer
from labbridge.transport.tls import peer_common_name

log = logging.getLogger(__name__)


#: Most distinct ``Info`` names kept per client (a client cannot grow the server's memory).
MAX_INFOS = 256


class RemoteUnavailable(ConnectionError):
    """No client of this type is connected (or it went away during the request)."""


class _RemoteModule(Device):
    """Common part of the remote actuator and detector: session, requests, settings."""

    client_type: ClientType

    def __init__(self, name: str, *, timeout: float | None = 10.0) -> None:
        super().__init__(name)
        self.timeout = timeout
        self.session: ServerSession | None = None
        #: The client's last ``Infos`` document as received, and its parsed tree.
        self.settings_xml: str | None = None
        self.settings_tree: Param | None = None
        #: The client's setting values keyed by path below its settings group (``units``,
        #: ``bounds/is_bounds``), typed as the real reader types them (issue 14 item 1).
        self.settings: dict[str, Any] = {}
        #: ``Info`` name -> value (the real server's "infos" group), at most MAX_INFOS names.
        self.infos: dict[str, Any] = {}
        self._infos_full = False
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
        async with asyncio.timeout(timeout):
            await self._attached.wait()

    def _attach(self, session: ServerSession) -> None:
        old = self.session
        self.session = session
        self._attached.set()
        if old is not None and old is not session:
            log.info("%s: a new %s client at %s replaces %s", self.name,
                     self.client_type.value, session.stream.peer, old.stream.peer)
            self._fail_pending(f"replaced by a new client at {session.stream.peer}")
            self._clear_settings()
            old.stream.close(old.server.close_grace)
        self.emit("connected", session.stream.peer)

    def _detach(self, session: ServerSession, reason: str | None) -> None:
        if self.session is not session:
            return
        self.session = None
        self._attached.clear()
        self._fail_pending(reason or "client disconnected")
        self._clear_settings()
        self.emit("connected", None)

    def _clear_settings(self) -> None:
        """A client's settings go with it (issue 14 item 3): the next client's ``Infos`` may
        never come, and its moves must not carry the previous client's units."""
        had = bool(self.settings or self.settings_xml or self.infos)
        self.settings_xml = None
        self.settings_tree = None
        self.settings = {}
        self.infos = {}
        self._infos_full = False
        if had:
            self.emit("settings", {})

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
            async with asyncio.timeout(timeout):
                return await fut
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

    async def _request(self, msg: object, reply: type, timeout: float | None,
                       lock: asyncio.Lock | None = None) -> Any:
        async with lock or self._lock:
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
    def _parse(self, xml: str, what: str) -> ParsedSettings | None:
        """A client's settings XML, or None (logged) when unreadable: the real server logs XML
        errors and goes on (spec §4.1), so does this one."""
        try:
            parsed = parse_settings(xml)
        except SettingsXmlError as exc:
            log.warning("%s: %s from %s ignored: %s", self.name, what, self._peer(), exc)
            return None
        if parsed.legacy:
            log.warning("%s: %s from %s uses the old value= attribute form (deprecated; "
                        "PyMoDAQ puts the value in the element text)", self.name, what,
                        self._peer())
        return parsed

    def _peer(self) -> str:
        return "?" if self.session is None else self.session.stream.peer

    def _apply_infos(self, xml: str) -> None:
        """``Infos`` replaces the whole client settings view (real ``read_infos``)."""
        parsed = self._parse(xml, "Infos")
        if parsed is None:
            return
        self.settings_xml = xml
        self.settings_tree = parsed.root
        self.settings = parsed.values()
        self.emit("settings", dict(self.settings))

    def _apply_info_xml(self, path: tuple[str, ...], xml: str) -> None:
        """``Info_xml``: one setting changed on the client. The real client sends the full
        child path of the parameter in its module's settings (``['move_settings', 'epsilon']``)
        and the real server resolves ``path[1:]`` under the client settings (``read_info_xml``,
        tcp_server_client.py@5.0.0)."""
        parsed = self._parse(xml, "Info_xml")
        if parsed is None:
            return
        prefix = list(path[1:] if len(path) > 1 else path) or [parsed.root.name]
        if parsed.root.is_group:
            updates = {"/".join([*prefix, k]): v for k, v in parsed.values().items()}
        else:
            updates = {"/".join(prefix): parsed.root.value}
        self.settings.update(updates)
        self.emit("info_xml", {"path": list(path), "xml": xml})
        self.emit("settings", dict(self.settings))

    def handle(self, msg: object) -> None:
        if isinstance(msg, Infos):
            self._apply_infos(msg.xml)
        elif isinstance(msg, InfoXml):
            self._apply_info_xml(msg.path, msg.xml)
        elif isinstance(msg, Info):
            if msg.name not in self.infos and len(self.infos) >= MAX_INFOS:
                if not self._infos_full:
                    self._infos_full = True
                    log.warning("%s: %s sent more than %d Info names; further new names are "
                                "ignored", self.name, self._peer(), MAX_INFOS)
                return
            self.infos[msg.name] = msg.value
            self.emit(f"info.{msg.name}", msg.value)
        else:
            self._handle(msg)

    def _handle(self, msg: object) -> None:
        log.warning("%s: ignoring %s from the client", self.name, type(msg).__name__)

    # -- commands common to both -----------------------------------------------------------------
    def set_info(self, path: list[str] | tuple[str, ...], xml: str) -> None:
        """Send one parameter's XML (``set_info``, no reply expected; §4.2). ``path`` is
        relative to the client's settings group, as the real server sends it
        (``get_param_path(param)[2:]``: ``['epsilon']``, ``['bounds', 'max_bound']``)."""
        self._stream().send(SetInfo(tuple(path), xml))

    def set_setting(self, name: str, value: Any) -> None:
        """Change one of the client's settings: ``name`` is a key of :attr:`settings`
        (``epsilon``, ``bounds/max_bound``). The value is converted to the type the client
        declared and sent as ``set_info`` in the real format, with the client's title."""
        path = name.split("/")
        known = self._find(path)
        ptype = None if known is None else known.type
        if ptype in ("float", "slide"):
            value = float(value)
        elif ptype == "int":
            value = int(value)
        elif ptype is not None and ("bool" in ptype or "led" in ptype):
            value = value if isinstance(value, bool) else str(value).strip() in ("1", "true",
                                                                                  "True")
        elif ptype == "str":
            value = str(value)
        # Byte for byte what the real server's commit_settings sends for that parameter.
        flags = {} if known is None else known.attrs
        xml = parameter_to_xml(path[-1], value, title=None if known is None else known.title,
                               readonly=flags.get("readonly") == "1",
                               visible=flags.get("visible", "1") != "0",
                               extra={"show_pb": "0"})
        self.set_info(path, xml)
        self.settings[name] = value
        self.emit("settings", dict(self.settings))

    def _find(self, path: list[str]) -> Param | None:
        node = self.settings_tree
        for part in path:
            if node is None:
                return None
            node = next((c for c in node.children if c.name == part), None)
        return node

    def disconnect(self) -> None:
        """Close the connection to the current client (it may reconnect)."""
        if self.session is not None:
            self.session.stream.close(self.session.server.close_grace)

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
        #: Position queries have their own lock: they go out during a move (a real remote
        #: DAQ_Move answers them at once while it moves, issue 14 item 2).
        self._query_lock = asyncio.Lock()

    @property
    def units(self) -> str:
        """The client's ``units`` setting ('' when it sent none)."""
        units = self.settings.get("units")
        return units if isinstance(units, str) else ""

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
            # position_is also comes unasked while the client moves (the real DAQ_Move
            # forwards every value its poll timer reads): it updates the live position and
            # answers a pending query, if any (every position_is carries the current one).
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
        """``check_position`` (G1) / ``get_actuator_value`` (G3); also while a move runs."""
        query = "get_actuator_value" if self.generation is Generation.G3 else "check_position"
        reply = await self._request(GetPosition(query), PositionIs, self.timeout,
                                    self._query_lock)
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
        #: Who this connection is, for the node's gate (set when it opens).
        self.principal: Principal | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self.stream = PyMoDAQStream(
            Role.SERVER, on_message=self._on_message, on_close=self._on_close,
            on_open=self._on_open, dialect=server.dialect,
            detect_dialect=server.detect_dialect, max_message=server.max_message,
            name=server.name, message_timeout=server.message_timeout, budget=server.budget,
            max_write_buffer=server.max_write_buffer)

    @property
    def registered(self) -> bool:
        """True while this connection is the current client of its type (never evicted)."""
        return self.module is not None and self.module.session is self

    def _on_open(self, stream: PyMoDAQStream) -> None:
        # Access first: a peer that may not register a module gets no slot and evicts nobody.
        refused = self.server._authorize(self)
        if refused is not None:
            stream.reset(refused)
            return
        refused = self.server._admit(self)
        if refused is not None:
            # No slot it could take: refused as an access refusal is, with a reset (the
            # protocol has no refusal message, and a clean close makes a real client spin);
            # the reason is the log line. Not audited: no access was decided.
            stream.reset(refused)
            return
        self.server._sessions.add(self)
        if self.server.hello_timeout is not None:
            # Absolute from the accept: a connection that never says who it is (or trickles
            # its client type) would hold a slot forever.
            self._hello_timer = asyncio.get_running_loop().call_later(
                self.server.hello_timeout, stream.fail,
                f"timeout: no client type within {self.server.hello_timeout:g} s")

    def _on_message(self, stream: PyMoDAQStream, msg: object) -> None:
        """What a client sends (from ``stream.peer``): its registration as the remote actuator
        or detector, then its messages, which only the registered connection may deliver."""
        if isinstance(msg, Hello):
            self._register(stream, msg)
        elif isinstance(msg, Quit):
            log.info("%s: client %s quit", self.server.name, stream.peer)
            stream.close(self.server.close_grace)
        elif isinstance(msg, Unknown):
            log.warning("%s: ignoring unknown command %r from %s", self.server.name, msg.name,
                        stream.peer)
        elif self.registered:
            assert self.module is not None
            self.module.handle(msg)

    def _register(self, stream: PyMoDAQStream, msg: Hello) -> None:
        """The one place where a connection becomes the node's remote actuator or detector
        (replacing the current one): the gate checks the operator role, and audits it."""
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        server = self.server
        if self.module is not None:
            # The real server reads the client type once; a later one is an unknown command.
            log.warning("%s: %s from %s, already registered as %s, ignored", server.name,
                        msg.client_type.value, stream.peer, self.module.client_type.value)
            return
        module = server.module_for(msg.client_type)
        old = module.session if module.connected and module.session is not self else None
        gen = stream.generation.name if stream.generation else "?"
        detail = f"{msg.client_type.value} ({gen})"
        if old is not None:
            detail += f", replacing {old.stream.peer}"
        assert self.principal is not None
        action = Action(Access.OPERATOR, "replace" if old is not None else "register",
                        module.name, detail)
        try:
            role = server.gate.check(self.principal, action)
        except AccessDenied as exc:
            stream.reset(f"refused: {exc.reason}")
            return
        self.module = module
        log.info("%s: %s registered from %s (%s)", server.name, msg.client_type.value,
                 stream.peer, gen)
        module._attach(self)
        server.gate.record(self.principal, action, DONE, role=role)

    def _on_close(self, stream: PyMoDAQStream, reason: str | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        server = self.server
        if self in server._sessions:
            server._sessions.discard(self)
            server.closed_connections += 1
            server.close_reasons.append(reason)
            server._changed.set()
        else:
            server.refused += 1
        if self.module is not None:
            self.module._detach(self, reason)
        self.module = None


class PyMoDAQServer:
    """The TCPServer plugin's role as a labbridge service (one port, both client types).

    Slots (issue 13): at most ``max_connections`` connections, at most ``max_per_address`` from
    one host. When either is reached, a newcomer takes the slot of the connection that has been
    idle or stalled longest (no whole message for the longest time) among those that are not a
    registered client; it is refused only when every slot it could take holds a registered
    client. Evictions are logged. Memory: ``max_buffered`` bytes of unfinished messages for all
    connections together (:class:`~labbridge.protocol.pymodaq._wire.ReceiveBudget`), each
    message complete within ``message_timeout`` seconds of its first byte.

    Access: ``gate`` is the node's :class:`~labbridge.access.Gate` (default: this machine
    only). ``ssl``: a server context (``labbridge.transport.tls.server_context``, client
    certificates required) makes the port TLS only; the client certificate's common name is
    the peer's identity (``security.identities.<name>.cert``).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 6341, *, name: str = "pymodaq-server",
                 actuator: RemoteActuator | None = None, detector: RemoteDetector | None = None,
                 dialect: Dialect = Dialect.G1A, detect_dialect: bool = True,
                 max_message: int = 256 * 1024 * 1024, max_connections: int = 16,
                 hello_timeout: float | None = 10.0, max_per_address: int = 4,
                 message_timeout: float | None = 60.0,
                 max_buffered: int | None = None,
                 max_write_buffer: int | None = None, close_grace: float = 5.0,
                 gate: Gate | None = None, ssl: ssl.SSLContext | None = None) -> None:
        self.name = name
        #: The node's access gate: who may register a module here.
        self.gate = gate if gate is not None else Gate()
        #: TLS server context (None: plain TCP, as real PyMoDAQ peers need).
        self.tls = ssl
        self.host = host
        self.requested_port = port
        self.actuator = actuator or RemoteActuator("remote_actuator")
        self.detector = detector or RemoteDetector("remote_detector")
        self.dialect = dialect
        self.detect_dialect = detect_dialect
        self.max_message = max_message
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        #: Seconds a new connection has to send its client type (None = forever).
        self.hello_timeout = hello_timeout
        self.message_timeout = message_timeout
        #: Bytes queued for a client that does not read before it is dropped (None: the
        #: stream's default, one maximum-size message and 16 MiB).
        self.max_write_buffer = max_write_buffer
        #: Seconds a closing connection (replaced, disconnected, quit) has to take what we
        #: queued for it before it is dropped.
        self.close_grace = close_grace
        #: Unfinished-message bytes all connections may hold together (default: two
        #: maximum-size messages).
        self.budget = ReceiveBudget(max_buffered if max_buffered is not None
                                    else 2 * max_message)
        # The listener: port 0, a clear error when the port is taken, every connection
        # tracked and closed on stop. Its own limit is only a backstop (a burst of connects
        # in one loop turn, before evicted ones are gone); the fair slots are ours.
        # TLS (``ssl``): the transport's handshake after the accept (TlsAccept): it holds a
        # listener slot, evictable, until done; the first byte within ``hello_timeout`` of
        # the accept, the handshake done within ``hello_timeout`` of that first byte; a
        # failure is a refusal in the audit trail (:meth:`_handshake_failed`).
        handshake = hello_timeout if hello_timeout is not None else 60.0
        self.tcp = TcpServer(self._factory, host, port, name=name,
                             max_connections=2 * max_connections + 16, ssl=ssl,
                             handshake_timeout=handshake, first_byte_timeout=handshake,
                             on_handshake_failed=self._handshake_failed,
                             plain_peer="a plain TCP peer, e.g. a real PyMoDAQ module,")
        self._sessions: set[ServerSession] = set()
        self._changed = asyncio.Event()
        self._stopping = False
        self._running = False
        self.closed_connections = 0
        #: Why recent connections ended (None = clean close), oldest first; bounded.
        self.close_reasons: deque[str | None] = deque(maxlen=256)
        self.accepted = 0
        self.refused = 0
        self.evicted = 0

    @property
    def port(self) -> int | None:
        return self.tcp.port

    def module_for(self, client_type: ClientType) -> _RemoteModule:
        return self.actuator if client_type is ClientType.ACTUATOR else self.detector

    def _factory(self) -> asyncio.Protocol:
        self.accepted += 1
        session = ServerSession(self)
        # A BufferedProtocol: TcpServer only wraps connection_made / connection_lost (and,
        # over TLS, hands it the TLS transport once the handshake is done).
        return cast(asyncio.Protocol, session.stream)

    @property
    def transport_name(self) -> str:
        return "tls" if self.tls is not None else "tcp"

    def _authorize(self, session: ServerSession) -> str | None:
        """Who the new connection is, and None if it may register a module, or why not (the
        gate has audited the refusal). A PyMoDAQ connection exists only to register a module,
        so a peer below ``operator`` is refused as it connects."""
        stream = session.stream
        action = Action(Access.OPERATOR, "connect", self.name,
                        "a PyMoDAQ connection registers a remote module")
        identity = None
        if self.tls is not None:
            cn = peer_common_name(stream.transport)
            ident = None if cn is None else self.gate.policy.identity_for_cert(cn)
            if ident is None:
                session.principal = Principal(stream.host, self.name, "tls")
                why = ("no client certificate" if cn is None else
                       f"certificate {cn!r} is the cert of no identity in security.identities")
                return f"refused: {self.gate.refuse(session.principal, action, why).reason}"
            identity = ident.name
        session.principal = Principal(stream.host, self.name, self.transport_name, identity)
        try:
            self.gate.check(session.principal, action)
        except AccessDenied as exc:
            return f"refused: {exc.reason}"
        return None

    def _handshake_failed(self, host: str, reason: str) -> None:
        """A TLS handshake that failed (``reason`` from the transport): audited and logged
        as a refusal."""
        if self._stopping:
            return
        self.gate.refuse(Principal(host, self.name, "tls"),
                         Action(Access.OPERATOR, "connect", self.name, "TLS handshake"),
                         f"TLS handshake failed: {reason}")

    def _admit(self, newcomer: ServerSession) -> str | None:
        """Make room for ``newcomer`` (evicting the longest idle or stalled unregistered
        connection of its host, then of anyone); None, or why it must be refused."""
        if self._stopping:
            return "server stopping"
        host = newcomer.stream.host
        same = [s for s in self._sessions if s.stream.host == host]
        if len(same) >= self.max_per_address and not self._evict(same, newcomer, "address"):
            return (f"too many connections: {host} already has {len(same)}, all registered "
                    "clients")
        if len(self._sessions) >= self.max_connections and not self._evict(
                list(self._sessions), newcomer, "server"):
            return (f"too many connections: all {self.max_connections} slots hold registered "
                    "clients")
        return None

    def _evict(self, among: list[ServerSession], newcomer: ServerSession, scope: str) -> bool:
        candidates = [s for s in among if not s.registered]
        if not candidates:
            return False
        victim = min(candidates, key=lambda s: s.stream.last_progress)
        idle = asyncio.get_running_loop().time() - victim.stream.last_progress
        limit = (f"{self.max_per_address} per address" if scope == "address"
                 else f"{self.max_connections} in all")
        log.warning("%s: slots full (%s): evicting %s, idle or stalled for %.1f s, for %s",
                    self.name, limit, victim.stream.peer, idle, newcomer.stream.peer)
        self.evicted += 1
        victim.stream.fail(f"evicted: idle or stalled for {idle:.1f} s while {newcomer.stream.peer}"
                           " waited for a slot")
        return True

    async def start(self) -> None:
        if self._running:
            return
        self._stopping = False
        await self.tcp.start()
        self._running = True
        log.info("%s: listening on %s:%d", self.name, self.host, self.port)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stopping = True  # newcomers are refused from now on
        for s in list(self._sessions):
            s.stream.close()  # flush what is queued, then close (clean, not an error)
        for s in list(self._sessions):
            try:
                async with asyncio.timeout(2.0):
                    await s.stream.wait_closed()
            except TimeoutError:
                s.stream.fail("server stopping: peer does not read")
        await self.tcp.stop()

    async def wait_closed_connections(self, n: int) -> None:
        """Wait until ``n`` connections have ended since the server started (tests, tools)."""
        while self.closed_connections < n:
            self._changed.clear()
            await self._changed.wait()

    @property
    def sessions(self) -> int:
        return len(self._sessions)
