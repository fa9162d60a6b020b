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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from labbridge.devices.hexrot.mock import BaseMockController, CommandError
from labbridge.links.hexrotcomm.common import REPLACE_IDLE_AFTER
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

#: Gen-A controller reconnect interval (spec §5.7 ``connect_retry_interval``).
CONNECT_RETRY_INTERVAL = 0.1


def execute_command(mock: BaseMockController, code: int, params: tuple[float, ...],
                    tai: float, peer: str | None) -> float:
    """The one place where a command from the network becomes a device action.

    Both generations come through here with the peer's address (``host:port``) and the TAI
    time of arrival; returns the expected duration or raises :class:`CommandError` (the
    reason), which gen D answers with NO_ACK and gen A only logs.
    """
    try:
        return mock.handle_command(code, params, tai)
    except CommandError as exc:
        log.info("%s: command %#x from %s refused: %s", mock.name, code, peer, exc)
        raise


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: own classes
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
            self.transport.write(self.owner._reply(cmd, self.out))
            return
        error: ProtocolError | None = None
        try:
            decoder.receive_data(data)
        except ProtocolError as exc:  # fatal for this connection only; the server goes on
            error = exc
        # Commands decoded before an error are still answered, then the connection closes
        # (close() flushes what was written; an exception here would abort without flushing).
        while (cmd := decoder.next_event()) is not NEED_DATA:
            self.transport.write(self.owner._reply(cmd, self.out))
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
        if self.tel_task is not None:
            self.tel_task.cancel()


class MockControllerServer:
    """Generation-D mock controller: a one-client TCP server around a mock backend."""

    def __init__(self, mock: BaseMockController, host: str = "127.0.0.1", port: int = 0,
                 *, profile: WireProfile | None = None,
                 replace_idle_after: float | None = REPLACE_IDLE_AFTER) -> None:
        if mock.generation is not Generation.D:
            raise ValueError("MockControllerServer serves generation D; use "
                             "MockControllerClient for generation A")
        self.mock = mock
        self.profile = profile or WireProfile.make(mock.spec, Generation.D)
        #: A new CSC replaces one that has sent nothing for this long (None: never).
        self.server = OneClientServer(
            f"MockController-{mock.name}", host, port,
            protocol_factory=lambda: _MockProtocol(self), log=log,
            replace_idle_after=replace_idle_after)
        #: Times reading from a CSC was paused because it did not read its replies.
        self.reading_paused = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set False to simulate a controller that never sends CONFIG (spec §3.10).
        self.send_config = True

    @property
    def port(self) -> int:
        return self.server.port

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

    def _reply(self, cmd: Any, out: _FrameWriter) -> bytes:
        """COMMAND_STATUS for one command, preceded by CONFIG when the command changed it."""
        now = current_tai()
        if cmd[0] not in (COMMANDER_GUI, COMMANDER_CSC):
            return self.profile.encode_status(
                cmd[1], CommandStatusCode.NO_ACK, 0.0,
                "Unrecognized commander; must be one of GUI or CSC", now)
        version = self.mock.config_version
        try:
            duration = execute_command(self.mock, cmd[2], cmd[3:], now, self.peer)
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
                 retry_interval: float = CONNECT_RETRY_INTERVAL) -> None:
        if mock.generation is not Generation.A:
            raise ValueError("MockControllerClient speaks generation A")
        self.mock = mock
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
        while True:
            try:
                reader, writer = await asyncio.open_connection(self.host, port)
            except OSError:
                await asyncio.sleep(self.retry_interval)
                continue
            configure_socket(writer.get_extra_info("socket"))
            try:
                await side(reader, writer)
            except (ConnectionError, OSError) as exc:
                log.info("%s: connection to port %d lost: %r", self.mock.name, port, exc)
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
        peer_name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        try:
            while data := await reader.read(READ_CHUNK):
                decoder.receive_data(data)
                while (cmd := decoder.next_event()) is not NEED_DATA:
                    try:
                        execute_command(self.mock, cmd.code, tuple(cmd)[3:], current_tai(),
                                        peer_name)
                    except CommandError as exc:
                        # Generation A: no feedback exists; the real controller was silent.
                        log.warning("%s: command %#x refused (no feedback in generation A):"
                                    " %s", self.mock.name, cmd.code, exc)
        finally:
            self.command_connected.clear()
