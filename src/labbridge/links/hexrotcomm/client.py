"""Generation D, CSC side: one two-way socket to the controller (spec hexrotcomm.md §3.8).

The controller is the TCP server. The client writes bare 60-byte ``Command``s and reads
``Header + CommandStatus | Config | Telemetry`` frames::

    client                                   controller
      | ---- connect -------------------------> |
      | <--- Header(3) Config ------------------ |   required within config_timeout (10 s)
      | <--- Header(2) Telemetry --------------- |   required within config_timeout (10 s)
      | ---- Command(counter=n) ---------------> |   one in flight (lock held until status)
      | <--- Header(1, counter=n) CommandStatus  |   within ack_timeout (5 s)
      |        ACK -> duration; NO_ACK -> CommandRejected(reason)

A client object is single use (spec §3.8: no automatic reconnect); connection loss or a
protocol error puts it in FAULT with the reason (``fault_reason``, ``error_code``) and fails
the command in flight. Decision (spec §3.8 [lb], §9 quirk 2): an unknown frame id, a corrupt
header or a truncated frame closes the connection with a :class:`ProtocolError` instead of the
upstream "flush and continue".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from labbridge.links.hexrotcomm.common import (
    Callback,
    CommandRejected,
    LinkFault,
    call_callback,
)
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.hexrotcomm.framing import Frame, FrameDecoder, FrameKind, WireProfile
from labbridge.protocol.hexrotcomm.structs import (
    COMMANDER_CSC,
    Command,
    CommandStatusCode,
    ErrorCode,
    Generation,
)
from labbridge.transport.one_client import READ_CHUNK, configure_socket

#: Spec §3.8.
COMMAND_STATUS_TIMEOUT = 5.0
CONFIG_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0

class CommandTelemetryClient:
    """Generation-D client; construct, ``await connect()``, use, ``await close()``."""

    def __init__(
        self,
        profile: WireProfile,
        host: str,
        port: int,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        config_timeout: float = CONFIG_TIMEOUT,
        ack_timeout: float = COMMAND_STATUS_TIMEOUT,
        on_config: Callback | None = None,
        on_telemetry: Callback | None = None,
        on_connect: Callback | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if profile.generation is not Generation.D:
            raise ValueError("CommandTelemetryClient speaks generation D only")
        self.profile = profile
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.config_timeout = config_timeout
        self.ack_timeout = ack_timeout
        self.on_config = on_config
        self.on_telemetry = on_telemetry
        self.on_connect = on_connect
        self.log = log or logging.getLogger(__name__)
        self.config: Any = None
        self.telemetry: Any = None
        self.header: Any = None
        self.fault_reason: str | None = None
        self.error_code: ErrorCode | None = None
        #: Header TAI minus local clock of the last telemetry frame (spec §3.7).
        self.clock_offset: float | None = None
        self.late_statuses = 0
        self.ignored_statuses = 0
        self.commands_sent = 0
        self._last_counter = 0xFFFFFFFF
        self._lock = asyncio.Lock()
        self._pending: tuple[int, asyncio.Future[Any]] | None = None
        self._timed_out: dict[int, float] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._used = False
        self._closing = False
        self._configured = asyncio.get_running_loop().create_future()
        self._telemetry_waiters: list[asyncio.Future[Any]] = []
        self.closed = asyncio.Event()

    # -- connection -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return (self._writer is not None and not self._writer.is_closing()
                and self._read_task is not None and not self._read_task.done())

    async def connect(self) -> None:
        """Connect, then wait for CONFIG and one TELEMETRY (spec §3.8 connect sequence).

        Raises :class:`LinkFault` (CONNECTION_LOST or NO_CONFIG) and leaves the client in FAULT.
        """
        if self._used:
            raise RuntimeError("a CommandTelemetryClient is single use; make a new one")
        self._used = True
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout)
        except TimeoutError:
            raise self._set_fault(f"Timed out connecting to {self.host}:{self.port}",
                                  ErrorCode.CONNECTION_LOST) from None
        except OSError as exc:
            raise self._set_fault(f"Could not connect to {self.host}:{self.port}: {exc}",
                                  ErrorCode.CONNECTION_LOST) from None
        self._reader, self._writer = reader, writer
        configure_socket(writer.get_extra_info("socket"))
        self._read_task = asyncio.create_task(self._read_loop(), name="hexrot-client-read")
        await call_callback(self.on_connect, self, self.log)
        try:
            await asyncio.wait_for(asyncio.shield(self._configured), self.config_timeout)
            if self.telemetry is None:
                await asyncio.wait_for(self.next_telemetry(), self.config_timeout)
        except TimeoutError:
            await self._abort(f"Timed out waiting for config and telemetry from "
                              f"{self.host}:{self.port}", ErrorCode.NO_CONFIG)
            raise LinkFault(self.fault_reason or "", ErrorCode.NO_CONFIG) from None
        except (ConnectionError, ProtocolError) as exc:
            await self.close()
            if isinstance(exc, LinkFault):
                raise
            raise LinkFault(self.fault_reason or str(exc),
                            self.error_code or ErrorCode.CONNECTION_LOST) from exc

    async def close(self) -> None:
        """User close: not a fault. Idempotent."""
        self._closing = True
        task, self._read_task = self._read_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_writer()
        self._fail_waiters(ConnectionError("client closed"))
        self.closed.set()

    async def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5.0)

    def _set_fault(self, reason: str, code: ErrorCode) -> LinkFault:
        if self.fault_reason is None:
            self.fault_reason = reason
            self.error_code = code
            self.log.error("hexrot link %s:%s FAULT: %s", self.host, self.port, reason)
        return LinkFault(reason, code)

    async def _abort(self, reason: str, code: ErrorCode) -> None:
        exc = self._set_fault(reason, code)
        self._fail_waiters(exc)
        task = self._read_task
        if task is not None and task is not asyncio.current_task():
            self._read_task = None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_writer()
        self.closed.set()
        await call_callback(self.on_connect, self, self.log)

    def _fail_waiters(self, exc: BaseException) -> None:
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(exc)
        if not self._configured.done():
            self._configured.set_exception(exc)
            self._configured.exception()  # retrieved: nobody may be waiting
        for fut in self._telemetry_waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._telemetry_waiters.clear()

    # -- reading ------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        assert self._reader is not None
        reader = self._reader
        decoder = FrameDecoder(self.profile)
        reason: str
        code = ErrorCode.CONNECTION_LOST
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    decoder.eof()
                    reason = "Lost connection to the low-level controller"
                    break
                decoder.receive_data(data)
                while (frame := decoder.next_event()) is not NEED_DATA:
                    await self._dispatch(frame)
        except ProtocolError as exc:
            reason = f"Protocol error from the low-level controller ({exc.kind}): {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"Lost connection to the low-level controller: {exc!r}"
        if self._closing:
            return
        self._read_task = None
        await self._abort(reason, code)

    async def _dispatch(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is FrameKind.TELEMETRY:
            self.telemetry = frame.payload
            self.header = frame.header
            h = frame.header
            self.clock_offset = h.tai_sec + h.tai_nsec * 1e-9 - time.time()
            if self._telemetry_waiters:
                for fut in self._telemetry_waiters:
                    if not fut.done():
                        fut.set_result(frame.payload)
                self._telemetry_waiters.clear()
            await call_callback(self.on_telemetry, frame.payload, self.log)
        elif kind is FrameKind.CONFIG:
            self.config = frame.payload
            await call_callback(self.on_config, frame.payload, self.log)
            if not self._configured.done():
                self._configured.set_result(None)
        else:
            self._on_status(frame)

    def _on_status(self, frame: Frame) -> None:
        counter = frame.header.counter
        pending = self._pending
        if pending is None or pending[0] != counter:
            if counter in self._timed_out:
                self.late_statuses += 1
                self.log.warning("late command status for counter %d, %.3f s after its "
                                 "command timed out", counter,
                                 time.monotonic() - self._timed_out.pop(counter))
            elif pending is None:
                self.ignored_statuses += 1  # spec §3.8: no command outstanding: drop
            else:
                self.ignored_statuses += 1
                self.log.warning("command status counter %d does not match the command in "
                                 "flight (%d); ignored", counter, pending[0])
            return
        if not pending[1].done():
            pending[1].set_result(frame.payload)

    async def next_telemetry(self) -> Any:
        """The next telemetry struct to arrive (wrap in ``asyncio.timeout`` to bound it)."""
        if not self.connected:
            raise ConnectionError("not connected")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._telemetry_waiters.append(fut)
        try:
            return await fut
        finally:
            if fut in self._telemetry_waiters:
                self._telemetry_waiters.remove(fut)

    # -- commands -------------------------------------------------------------------------------
    async def run_command(self, command: Command) -> float:
        """Send one command and wait for its status; return the ACK's duration (s).

        ``ValueError`` if not a Command; ``ConnectionError`` if not connected;
        ``TimeoutError`` after ``ack_timeout``; :class:`CommandRejected` on NO_ACK.
        """
        if not isinstance(command, Command):
            raise ValueError(f"expected a Command, got {type(command).__name__}")
        async with self._lock:
            writer = self._writer
            if writer is None or not self.connected:
                raise ConnectionError(self.fault_reason or "not connected")
            counter = (self._last_counter + 1) & 0xFFFFFFFF
            self._last_counter = counter
            cmd = command._replace(commander=COMMANDER_CSC, counter=counter)
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._pending = (counter, fut)
            try:
                # One write per command (spec §3.9: the controller does no reassembly).
                writer.write(self.profile.encode_command(cmd))
                self.commands_sent += 1
                await writer.drain()
                try:
                    status = await asyncio.wait_for(fut, self.ack_timeout)
                except TimeoutError:
                    self._timed_out[counter] = time.monotonic()
                    if len(self._timed_out) > 64:
                        self._timed_out.pop(next(iter(self._timed_out)))
                    raise TimeoutError(f"no status for command {cmd.code:#x} (counter "
                                       f"{counter}) within {self.ack_timeout} s") from None
            finally:
                self._pending = None
        if status.status == CommandStatusCode.ACK:
            return float(status.duration)
        if status.status == CommandStatusCode.NO_ACK:
            raise CommandRejected(status.reason, cmd.code)
        raise CommandRejected(f"Unknown command status {status.status}; reason={status.reason}",
                              cmd.code)

    async def send(self, code: int, params: Sequence[float] = ()) -> float:
        """Build and run a command from a code and up to six parameters."""
        return await self.run_command(self.profile.make_command(code, 0, params))
