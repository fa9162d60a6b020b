"""The socket side of the mock controllers (spec hexrotcomm.md §3.10, §5.7).

The physics and state machine live in :mod:`labbridge.devices.hexrot.mock`; this module makes a
mock speak the real bytes:

* :class:`MockControllerServer` (generation D): the controller listens on one port
  (:class:`OneClientServer`); on connect it sends CONFIG, then TELEMETRY every
  ``telemetry_interval``; CONFIG again whenever the config changes; one COMMAND_STATUS per
  command (ACK with duration, or NO_ACK with the reason). Commands from a commander other than
  GUI/CSC are refused with the real controller's reason (spec §3.9).
* :class:`MockControllerClient` (generation A): the controller connects as a client to the CSC's
  telemetry port P and command port P+1, retrying every 0.1 s, reconnecting whichever socket
  drops; a refused command is only logged (no feedback exists).

Header counters are incremented per frame id (spec §9 quirk 3); gen-A headers carry the
device's sync pattern (quirk 9).

Access (issue 12, docs/adr/0183): every command passes the node's gate in
:func:`execute_command`. Generation D: a peer the gate gives no role is refused at connection
and only an ``operator`` may replace a silent CSC; a command the peer's role does not allow
gets NO_ACK ``access: observer may not move`` and changes nothing. Generation A: the mock
connects to the CSC its node file names and trusts it (the commands are still audited).
Both generations can run over TLS with client certificates (labbridge at both ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

from labbridge.access import DONE, FAILED, AccessDenied, Action, Gate, Principal, Role
from labbridge.devices.hexrot.mock import BaseMockController, CommandError
from labbridge.links.hexrotcomm.common import (
    REPLACE_IDLE_AFTER,
    PeerAccess,
    command_action,
    refusal_reason,
)
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.hexrotcomm.framing import CommandDecoder, FrameKind, WireProfile
from labbridge.protocol.hexrotcomm.structs import (
    COMMANDER_CSC,
    COMMANDER_GUI,
    CommandStatusCode,
    Generation,
)
from labbridge.protocol.hexrotcomm.tai import current_tai
from labbridge.transport.one_client import READ_CHUNK, OneClientServer, configure_socket

log = logging.getLogger(__name__)

#: What a peer that does not speak TLS on a gen-D mock's TLS port probably is (the hint of
#: its audited refusal).
PLAIN_CSC = "a plain TCP client, e.g. a real Rubin CSC,"
#: Gen-A controller reconnect interval (spec §5.7 ``connect_retry_interval``).
CONNECT_RETRY_INTERVAL = 0.1


def execute_command(mock: BaseMockController, code: int, params: tuple[float, ...],
                    tai: float, principal: Principal, gate: Gate, *,
                    trusted: bool = False) -> float:
    """The one place where a command from the network becomes a device action.

    Both generations come through here with who sent it and the TAI time of arrival. The
    node's gate checks the command (``CONFIG_*`` needs ``admin``, every other command
    ``operator``; ``trusted``: the peer is the CSC the node file told us to connect to, only
    audited) and audits its outcome. Returns the expected duration or raises
    :class:`CommandError` (the reason; an access refusal changes nothing), which gen D answers
    with NO_ACK and gen A only logs.
    """
    action = command_action(mock.spec, code, params, mock.name)
    if trusted:
        role = Role.ADMIN
    else:
        try:
            role = gate.check(principal, action)
        except AccessDenied as exc:
            # The gate wrote the log line (logger labbridge.audit, with the whole reason).
            reason = refusal_reason(exc, params)
            log.debug("%s: %s from %s refused: %s", mock.name, action.verb, principal.who,
                      reason)
            raise CommandError(reason) from None
    try:
        duration = mock.handle_command(code, params, tai)
    except CommandError as exc:
        # One log line per command: the audit line (``failed: ...: <reason>``).
        gate.record(principal, action, FAILED, str(exc), role)
        raise
    gate.record(principal, action, DONE, "", role)
    return duration


class _FrameWriter:
    """Encodes controller -> CSC frames with per-frame-id counters, writes them in one call.

    ``config_sent`` is the mock's config version last sent, so a CONFIG goes out once per
    change whichever path (command reply or telemetry loop) notices it first.
    """

    def __init__(self, profile: WireProfile, write: Callable[[bytes], None],
                 drain: Callable[[], Awaitable[Any]]) -> None:
        self.profile = profile
        self.write = write
        self.drain = drain
        self.counters = {FrameKind.CONFIG: 0, FrameKind.TELEMETRY: 0}
        self.config_sent = -1

    def encode(self, kind: FrameKind, payload: Any) -> bytes:
        n = self.counters[kind]
        self.counters[kind] = (n + 1) & 0xFFFFFFFF
        return self.profile.encode_frame(kind, payload, n, current_tai())

    def encode_config(self, mock: BaseMockController) -> bytes:
        self.config_sent = mock.config_version
        return self.encode(FrameKind.CONFIG, mock.config_record())

    async def frame(self, data: bytes) -> None:
        self.write(data)
        await self.drain()


async def _telemetry_loop(mock: BaseMockController, out: _FrameWriter) -> None:
    """CONFIG once, then TELEMETRY every interval; CONFIG again when it changes."""
    await out.frame(out.encode_config(mock))
    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while True:
        if mock.config_version != out.config_sent:
            await out.frame(out.encode_config(mock))
        await out.frame(out.encode(FrameKind.TELEMETRY, mock.telemetry_record()))
        next_t += mock.telemetry_interval
        delay = next_t - loop.time()
        if delay < -1.0:  # fell far behind (a stalled peer): do not burst to catch up
            next_t = loop.time()
        await asyncio.sleep(max(0.0, delay))


class _MockProtocol(asyncio.Protocol):
    """One CSC connection to a gen-D mock: commands in, statuses/config/telemetry out.

    Commands are decoded and answered inside ``data_received`` (no task hop, ADR 0044); the
    telemetry loop is a task that awaits ``drain`` only when the transport asks to pause.
    """

    def __init__(self, owner: MockControllerServer) -> None:
        self.owner = owner
        self.decoder = CommandDecoder(owner.profile)
        self.command_size = owner.profile.command.size
        self.unpack_command = owner.profile.command.struct.unpack
        self.command_record = owner.profile.command.record
        self.transport: asyncio.Transport | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.tel_task: asyncio.Task[None] | None = None
        self.out: _FrameWriter | None = None
        self.paused_once = False  # one log line per connection, not per pause
        self.principal = Principal("?", owner.access.via)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: own classes
        self.principal = self.owner.access.principal(transport)
        self.owner._client = self
        self.out = _FrameWriter(self.owner.profile, transport.write,  # type: ignore[attr-defined]
                                self.can_write.wait)
        if self.owner.send_config:
            self.tel_task = asyncio.get_running_loop().create_task(
                _telemetry_loop(self.owner.mock, self.out),
                name=f"{self.owner.mock.name}-telemetry")
            self.owner._tasks.add(self.tel_task)
            self.tel_task.add_done_callback(self._tel_done)

    def _tel_done(self, task: asyncio.Task[None]) -> None:
        self.owner._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("%s: telemetry stopped: %r", self.owner.mock.name, task.exception())

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.out is not None
        decoder = self.decoder
        if len(data) == self.command_size and not decoder.pending:
            # One whole command and nothing pending: the usual case (one command in flight).
            cmd = tuple.__new__(self.command_record, self.unpack_command(data))
            self.transport.write(self.owner._reply(cmd, self.out, self.principal))
            return
        error: ProtocolError | None = None
        try:
            decoder.receive_data(data)
        except ProtocolError as exc:  # fatal for this connection only; the server goes on
            error = exc
        # Commands decoded before an error are still answered, then the connection closes
        # (close() flushes what was written; an exception here would abort without flushing).
        while (cmd := decoder.next_event()) is not NEED_DATA:
            self.transport.write(self.owner._reply(cmd, self.out, self.principal))
        if error is not None:
            log.warning("%s: closing the connection: %s", self.owner.mock.name, error)
            self.transport.close()

    def eof_received(self) -> bool | None:
        try:
            self.decoder.eof()
        except ProtocolError as exc:
            log.warning("%s: %s", self.owner.mock.name, exc)
        return False

    def pause_writing(self) -> None:
        # The CSC does not read what we write: stop reading its commands too, so that the
        # replies to them cannot pile up (issue 13: backpressure on every write path).
        self.can_write.clear()
        assert self.transport is not None
        self.transport.pause_reading()
        self.owner.reading_paused += 1
        if not self.paused_once:
            self.paused_once = True
            log.info("%s: the CSC at %s does not read its replies; reading paused until it "
                     "does", self.owner.mock.name, self.owner.peer)

    def resume_writing(self) -> None:
        self.can_write.set()
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()
        if self.owner._client is self:
            self.owner._client = None
        if self.tel_task is not None:
            self.tel_task.cancel()


class MockControllerServer:
    """Generation-D mock controller: a one-client TCP server around a mock backend."""

    def __init__(self, mock: BaseMockController, host: str = "127.0.0.1", port: int = 0,
                 *, profile: WireProfile | None = None,
                 replace_idle_after: float | None = REPLACE_IDLE_AFTER,
                 gate: Gate | None = None, via: str = "hexrot_mock_controller",
                 ssl: _ssl.SSLContext | None = None) -> None:
        if mock.generation is not Generation.D:
            raise ValueError("MockControllerServer serves generation D; use "
                             "MockControllerClient for generation A")
        self.mock = mock
        self.profile = profile or WireProfile.make(mock.spec, Generation.D)
        #: Who may connect (observer), replace a silent CSC (operator), command (operator;
        #: CONFIG_* admin). Without a gate: the default policy (this machine only).
        self.access = PeerAccess(gate, via, mock.name, connect_role=Role.OBSERVER,
                                 tls=ssl is not None)
        #: A new CSC replaces one that has sent nothing for this long (None: never).
        self.server = OneClientServer(
            f"MockController-{mock.name}", host, port,
            protocol_factory=lambda: _MockProtocol(self), log=log,
            replace_idle_after=replace_idle_after, ssl=ssl, admit=self._admit,
            on_handshake_failed=self.access.handshake_failed, plain_peer=PLAIN_CSC)
        self._client: _MockProtocol | None = None
        #: Times reading from a CSC was paused because it did not read its replies.
        self.reading_paused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set False to simulate a controller that never sends CONFIG (spec §3.10).
        self.send_config = True

    @property
    def port(self) -> int:
        return self.server.port

    def _admit(self, transport: asyncio.BaseTransport, replacing: bool) -> str | None:
        """The one-client server's ``admit``: the gate's rules (:class:`PeerAccess`), plus:
        a newcomer who may command takes the controller from a client who may only watch,
        silent or not, so an observer cannot hold the one connection against the CSC (a
        chatty one would never be silent long enough to be replaced)."""
        why = self.access.admit(transport, replacing)
        current = self._client
        if why is not None or replacing or current is None or current.transport is None:
            return why
        gate = self.access.gate
        if current.transport.is_closing() or gate.role_of(current.principal) >= Role.OPERATOR:
            return None  # the server refuses the newcomer: a CSC is connected
        newcomer = self.access.principal(transport)
        if gate.role_of(newcomer) < Role.OPERATOR:
            return None
        log.warning("%s: %s may command the controller; closing the connection of %s, "
                    "who may only watch", self.mock.name, newcomer.who, current.principal.who)
        gate.record(newcomer, Action(Role.OPERATOR, "replace client", self.mock.name,
                                     f"{current.principal.who} may only watch"))
        current.transport.abort()  # the server then serves the newcomer in its place
        return None

    @property
    def host(self) -> str | None:
        return self.server.host

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.server.close()
        tasks, self._tasks = self._tasks, set()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _reply(self, cmd: Any, out: _FrameWriter, principal: Principal) -> bytes:
        """COMMAND_STATUS for one command, preceded by CONFIG when the command changed it."""
        now = current_tai()
        if cmd[0] not in (COMMANDER_GUI, COMMANDER_CSC):
            return self.profile.encode_status(
                cmd[1], CommandStatusCode.NO_ACK, 0.0,
                "Unrecognized commander; must be one of GUI or CSC", now)
        version = self.mock.config_version
        try:
            duration = execute_command(self.mock, cmd[2], cmd[3:], now, principal,
                                       self.access.gate)
        except CommandError as exc:
            return self.profile.encode_status(cmd[1], CommandStatusCode.NO_ACK, 0.0, str(exc),
                                              now)
        reply = self.profile.encode_status(cmd[1], CommandStatusCode.ACK, duration, "", now)
        if self.mock.config_version != version:
            # ENABLE_DRIVES, CONFIG_VEL, ...: upstream's handler writes CONFIG, then the ACK
            # goes out (ts_hexrotcomm@v1.3.7 base_mock_controller.do_enable_drives and
            # read_and_dispatch; ts_mtrotator@v1.3.1 mock_controller.do_config_vel).
            reply = out.encode_config(self.mock) + reply
        return reply

    @property
    def peer(self) -> str | None:
        """Address of the connected CSC (host:port), if any."""
        return self.server.peer


class MockControllerClient:
    """Generation-A mock controller: connects to the CSC's ports P (telemetry) and P+1."""

    def __init__(self, mock: BaseMockController, host: str, port: int,
                 command_port: int | None = None, *, profile: WireProfile | None = None,
                 retry_interval: float = CONNECT_RETRY_INTERVAL, gate: Gate | None = None,
                 via: str = "hexrot_mock_controller",
                 ssl: _ssl.SSLContext | None = None) -> None:
        if mock.generation is not Generation.A:
            raise ValueError("MockControllerClient speaks generation A")
        self.mock = mock
        #: The CSC is the one the node file names: its commands are trusted and audited.
        self.gate = gate if gate is not None else Gate()
        self.via = via
        #: TLS client context (the CSC side then requires our certificate), or None.
        self.ssl = ssl
        self.profile = profile or WireProfile.make(mock.spec, Generation.A)
        self.host = host
        self.port = port
        self.command_port = port + 1 if command_port is None else command_port
        self.retry_interval = retry_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.telemetry_connections = 0
        self.command_connections = 0
        self.telemetry_connected = asyncio.Event()
        self.command_connected = asyncio.Event()

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("already started")
        self._tasks = [
            asyncio.create_task(self._keep_connected(self.port, self._telemetry_side),
                                name=f"{self.mock.name}-tel-connector"),
            asyncio.create_task(self._keep_connected(self.command_port, self._command_side),
                                name=f"{self.mock.name}-cmd-connector"),
        ]

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    @property
    def connected(self) -> bool:
        return self.telemetry_connected.is_set() and self.command_connected.is_set()

    async def _keep_connected(self, port: int, side: Any) -> None:
        """Connect; retry every ``retry_interval``; reconnect after a drop (spec §5.7)."""
        last_error: str | None = None
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, port, ssl=self.ssl)
            except OSError as exc:
                # One line per kind of failure, not per try (a refused connection is the
                # normal wait for the CSC; a TLS failure is a certificate problem).
                why = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, _ssl.SSLError) and why != last_error:
                    log.warning("%s: TLS with %s:%d failed: %s", self.mock.name, self.host,
                                port, exc)
                last_error = why
                await asyncio.sleep(self.retry_interval)
                continue
            configure_socket(writer.get_extra_info("socket"))
            try:
                await side(reader, writer)
                last_error = None
            except (ConnectionError, OSError) as exc:
                # A CSC that refuses us (TLS 1.3 reports a refused certificate only here)
                # would otherwise log a line per retry.
                why = repr(exc)
                if why != last_error:
                    log.info("%s: connection to port %d lost: %s", self.mock.name, port, why)
                last_error = why
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            await asyncio.sleep(self.retry_interval)

    async def _telemetry_side(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        self.telemetry_connections += 1
        self.telemetry_connected.set()
        tel = asyncio.create_task(_telemetry_loop(
            self.mock, _FrameWriter(self.profile, writer.write, writer.drain)))
        try:
            # The CSC writes nothing here; EOF means it closed the telemetry connection.
            while await reader.read(READ_CHUNK):
                pass
        finally:
            self.telemetry_connected.clear()
            tel.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await tel

    async def _command_side(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        self.command_connections += 1
        self.command_connected.set()
        decoder = CommandDecoder(self.profile)
        peer = writer.get_extra_info("peername")
        principal = Principal(str(peer[0]) if isinstance(peer, tuple) else str(peer), self.via,
                              "tls" if self.ssl is not None else "tcp")
        try:
            while data := await reader.read(READ_CHUNK):
                decoder.receive_data(data)
                while (cmd := decoder.next_event()) is not NEED_DATA:
                    try:
                        execute_command(self.mock, cmd.code, tuple(cmd)[3:], current_tai(),
                                        principal, self.gate, trusted=True)
                    except CommandError as exc:
                        # Generation A: no feedback exists; the real controller was silent.
                        log.warning("%s: command %#x refused (no feedback in generation A):"
                                    " %s", self.mock.name, cmd.code, exc)
        finally:
            self.command_connected.clear()
