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
the command in flight. So does a telemetry stall [lb]: no frame at all for
``telemetry_timeout`` seconds (the controller streams telemetry continuously, so silence means
a dead link that TCP has not noticed, e.g. a partition); the connection is then aborted with
anything unsent discarded, so a command given up on is never delivered later (ADR 0163). Decision (spec §3.8 [lb], §9 quirk 2): an unknown frame id, a corrupt
header or a truncated frame closes the connection with a :class:`ProtocolError` instead of the
upstream "flush and continue".

Reading is an :class:`asyncio.Protocol`: frames are decoded and dispatched inside
``data_received`` with no task hop, so a status resolves the waiting command directly and
telemetry at hundreds of kHz costs only the decoding (ADR 0044). Callbacks may be plain
functions (called inline) or coroutine functions (run as tasks); their exceptions are logged
and never break the link. Coroutine telemetry callbacks run as tasks, at most
:data:`MAX_CALLBACK_TASKS` at a time: while that many are still running, further telemetry is
not handed to the callback (counted in ``callbacks_dropped``, one log line when dropping starts
and one when it stops), so a slow callback cannot pile up tasks without bound.

The client trusts the address its caller (the node file) gives; with ``ssl`` (a client context
from :func:`labbridge.transport.tls.client_context`) it talks TLS and the controller's
certificate must chain to the site's CA (and name the host, if the context checks host
names): for a labbridge mock at the other end only, a real controller speaks plain TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as _ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from labbridge.links.hexrotcomm.common import (
    Callback,
    CommandRejected,
    LinkFault,
)
from labbridge.protocol.base import ProtocolError
from labbridge.protocol.hexrotcomm.framing import Frame, FrameDecoder, FrameKind, WireProfile
from labbridge.protocol.hexrotcomm.structs import (
    COMMANDER_CSC,
    Command,
    CommandStatusCode,
    ErrorCode,
    Generation,
)
from labbridge.protocol.hexrotcomm.tai import current_tai
from labbridge.transport.one_client import configure_socket
from labbridge.transport.tcp import abort_discarding

#: Spec §3.8.
COMMAND_STATUS_TIMEOUT = 5.0
CONFIG_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
#: No frame at all for this long after connecting is a dead link ([lb], ADR 0163); above the
#: slowest telemetry rate a mock can be given (0.1 Hz).
TELEMETRY_TIMEOUT = 15.0
#: Most statuses of timed-out commands remembered to recognise late answers (spec §9 #11).
_LATE_MEMORY = 64
#: Most coroutine telemetry callbacks running at once; more telemetry is not handed over.
MAX_CALLBACK_TASKS = 8


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: CommandTelemetryClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        configure_socket(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        self.client._data_received(data)

    def eof_received(self) -> bool:
        self.client._eof_received()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._connection_lost(exc)

    def pause_writing(self) -> None:
        self.client._can_write.clear()

    def resume_writing(self) -> None:
        self.client._can_write.set()


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
        telemetry_timeout: float | None = TELEMETRY_TIMEOUT,
        on_config: Callback | None = None,
        on_telemetry: Callback | None = None,
        on_connect: Callback | None = None,
        log: logging.Logger | None = None,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if profile.generation is not Generation.D:
            raise ValueError("CommandTelemetryClient speaks generation D only")
        self.profile = profile
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.config_timeout = config_timeout
        self.ack_timeout = ack_timeout
        self.telemetry_timeout = telemetry_timeout
        self.on_config = on_config
        self.on_telemetry = on_telemetry
        self.on_connect = on_connect
        self.log = log or logging.getLogger(__name__)
        self.ssl = ssl
        #: Last CONFIG payload record.
        self.config: Any = None
        #: Last TELEMETRY frame: every telemetry field as an attribute, plus ``header`` and
        #: ``payload`` (the pure payload record); ``on_telemetry`` receives the same objects.
        self.telemetry: Any = None
        self.fault_reason: str | None = None
        self.error_code: ErrorCode | None = None
        #: Header TAI minus local TAI, from the last telemetry frame of a read (spec §3.7; the
        #: rotator CSC's ``clockOffset``, ts_mtrotator@v1.3.1 rotator_csc.telemetry_callback).
        self.clock_offset: float | None = None
        self.late_statuses = 0
        self.ignored_statuses = 0
        self.commands_sent = 0
        self.frames_received = 0
        self._loop = asyncio.get_running_loop()
        self._last_counter = 0xFFFFFFFF
        self._busy = False
        self._queue: deque[asyncio.Future[None]] = deque()
        self._pending: tuple[int, asyncio.Future[Any]] | None = None
        self._timed_out: dict[int, float] = {}
        self._transport: asyncio.Transport | None = None
        self._decoder = FrameDecoder(profile)
        self._pack_command = profile.command.struct.pack
        st = profile.frames.get(profile.status_frame_id or 0)
        self._status_size = profile.header.size + st[1].size if st else -1
        #: One acknowledgement watchdog per connection, re-armed only when it fires early
        #: (no timer is created or cancelled per command).
        self._ack_deadline = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        #: Telemetry stall watchdog: a timer a few times per telemetry_timeout that compares
        #: frame counts (nothing is done per frame).
        self._stall_timer: asyncio.TimerHandle | None = None
        self._stall_frames = 0
        self._stall_since = 0.0
        self._broken: str | None = None
        self._lost = False
        self._used = False
        self._closing = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._configured: asyncio.Future[None] = self._loop.create_future()
        self._telemetry_waiters: list[asyncio.Future[Any]] = []
        self._cb_tasks: set[asyncio.Task[Any]] = set()
        #: Telemetry frames not handed to a coroutine callback (too many still running).
        self.callbacks_dropped = 0
        self._tel_tasks = 0
        self._dropping = False
        self.closed = asyncio.Event()

    # -- connection -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        t = self._transport
        return t is not None and not self._lost and not t.is_closing()

    async def connect(self) -> None:
        """Connect, then wait for CONFIG and one TELEMETRY (spec §3.8 connect sequence).

        Raises :class:`LinkFault` (CONNECTION_LOST or NO_CONFIG) and leaves the client in FAULT.
        """
        if self._used:
            raise RuntimeError("a CommandTelemetryClient is single use; make a new one")
        self._used = True
        # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
        # comes as the awaited call ends (a connect cancelled by its caller would go on).
        try:
            async with asyncio.timeout(self.connect_timeout):
                transport, _ = await self._loop.create_connection(
                    lambda: _ClientProtocol(self), self.host, self.port, ssl=self.ssl)
        except TimeoutError:
            self.closed.set()
            raise self._set_fault(f"Timed out connecting to {self.host}:{self.port}",
                                  ErrorCode.CONNECTION_LOST) from None
        except OSError as exc:
            self.closed.set()
            raise self._set_fault(f"Could not connect to {self.host}:{self.port}: {exc}",
                                  ErrorCode.CONNECTION_LOST) from None
        self._transport = transport  # uvloop transports are not asyncio.Transport subclasses
        self._fire(self.on_connect, self)
        try:
            async with asyncio.timeout(self.config_timeout):
                await asyncio.shield(self._configured)  # (a timeout leaves the future be)
            if self.telemetry is None:
                async with asyncio.timeout(self.config_timeout):
                    await self.next_telemetry()
        except TimeoutError:
            reason = (f"Timed out waiting for config and telemetry from "
                      f"{self.host}:{self.port}")
            fault = self._set_fault(reason, ErrorCode.NO_CONFIG)
            await self._shutdown(fault)
            raise fault from None
        except ConnectionError as exc:
            await self._shutdown(exc)
            if isinstance(exc, LinkFault):
                raise
            raise LinkFault(self.fault_reason or str(exc),
                            self.error_code or ErrorCode.CONNECTION_LOST) from exc
        if self.telemetry_timeout is not None and self.connected:
            self._stall_frames = self.frames_received
            self._stall_since = self._loop.time()
            self._stall_timer = self._loop.call_later(self.telemetry_timeout / 4,
                                                      self._check_stall)

    def _check_stall(self) -> None:
        self._stall_timer = None
        if not self.connected or self._broken is not None or self.telemetry_timeout is None:
            return
        now = self._loop.time()
        if self.frames_received != self._stall_frames:
            self._stall_frames = self.frames_received
            self._stall_since = now
        elif now - self._stall_since >= self.telemetry_timeout:
            reason = (f"No telemetry from the low-level controller for "
                      f"{self.telemetry_timeout:g} s")
            self._broken = reason
            self._set_fault(reason, ErrorCode.CONNECTION_LOST)
            if self._transport is not None:
                abort_discarding(self._transport)
            return
        self._stall_timer = self._loop.call_later(self.telemetry_timeout / 4,
                                                  self._check_stall)

    async def close(self) -> None:
        """User close: not a fault. Idempotent."""
        self._closing = True
        await self._shutdown(ConnectionError("client closed"))

    async def _shutdown(self, exc: BaseException) -> None:
        self._fail_waiters(exc)
        t = self._transport
        if t is not None and not self._lost:
            t.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self.closed.wait()
            if not self._lost:
                t.abort()
        self.closed.set()
        tasks, self._cb_tasks = self._cb_tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _set_fault(self, reason: str, code: ErrorCode) -> LinkFault:
        if self.fault_reason is None:
            self.fault_reason = reason
            self.error_code = code
            self.log.error("hexrot link %s:%s FAULT: %s", self.host, self.port, reason)
        return LinkFault(self.fault_reason, self.error_code or code)

    def _fail_waiters(self, exc: BaseException) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._pending is not None and not self._pending[1].done():
            self._pending[1].set_exception(exc)
        if not self._configured.done():
            self._configured.set_exception(exc)
            self._configured.exception()  # retrieved: nobody may be waiting
        for fut in self._telemetry_waiters:
            if not fut.done():
                fut.set_exception(exc)
        self._telemetry_waiters.clear()

    def _fire(self, cb: Callback | None, arg: Any) -> None:
        """Run a callback; exceptions are logged and never break the link (spec §3.8)."""
        if cb is None:
            return
        try:
            res = cb(arg)
        except Exception:
            self.log.exception("callback %r failed", cb)
            return
        if res is not None:
            self._keep(res)

    def _keep(self, res: Any, telemetry: bool = False) -> None:
        """A callback returned a coroutine: run it as a tracked task.

        Telemetry callbacks are bounded (:data:`MAX_CALLBACK_TASKS` running at once); the
        rare config and connect callbacks always run.
        """
        if not asyncio.iscoroutine(res):
            return
        if telemetry:
            if self._tel_tasks >= MAX_CALLBACK_TASKS:
                res.close()  # never started: no "never awaited" warning
                self.callbacks_dropped += 1
                if not self._dropping:
                    self._dropping = True
                    self.log.warning("telemetry callback: %d still running; later telemetry "
                                     "is not handed to it until they finish",
                                     MAX_CALLBACK_TASKS)
                return
            self._tel_tasks += 1
            if self._dropping and self._tel_tasks <= MAX_CALLBACK_TASKS // 2:
                self._dropping = False
                self.log.info("telemetry callback keeps up again (%d frames were not handed "
                              "to it)", self.callbacks_dropped)
        task = self._loop.create_task(res)
        self._cb_tasks.add(task)
        task.add_done_callback(self._tel_done if telemetry else self._cb_done)

    def _tel_done(self, task: asyncio.Task[Any]) -> None:
        self._tel_tasks -= 1
        self._cb_done(task)

    def _cb_done(self, task: asyncio.Task[Any]) -> None:
        self._cb_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("callback failed", exc_info=task.exception())

    # -- protocol callbacks (run by the event loop) -------------------------------------------
    def _data_received(self, data: bytes) -> None:
        if self._broken is not None:
            return
        decoder = self._decoder
        if self._pending is not None and len(data) == self._status_size:
            # The acknowledgement path: exactly one command status and nothing held.
            frame = decoder.decode_single(data)
            if frame is not None:
                self.frames_received = decoder.frames_decoded
                self._dispatch_other(frame)
                return
        tel_kind = FrameKind.TELEMETRY
        last = None
        try:
            decoder.receive_data(data)
            while runs := decoder.next_runs():
                for kind, frames in runs:
                    if kind is tel_kind:
                        last = self._telemetry_run(frames) or last
                        continue
                    for frame in frames:
                        if frame.kind is tel_kind:
                            last = self._telemetry_run((frame,)) or last
                        else:
                            self._dispatch_other(frame)
                            if self._broken is not None:
                                return
        except ProtocolError as exc:
            self._break(f"Protocol error from the low-level controller ({exc.kind}): {exc}")
        finally:
            self.frames_received = decoder.frames_decoded
            if last is not None:
                self._on_telemetry(last)

    def _telemetry_run(self, frames: Iterable[Frame]) -> Frame | None:
        """Hand every telemetry frame of a run to the callback; return the last one."""
        cb = self.on_telemetry
        last = None
        if cb is None:
            for last in frames:  # noqa: B007 - only the last one is kept
                pass
            return last
        it = iter(frames)
        while True:
            try:
                for last in it:
                    res = cb(last)
                    if res is not None:
                        self._keep(res, telemetry=True)
                return last
            except Exception:  # a raising callback must not break the link (spec §3.8)
                self.log.exception("telemetry callback failed")

    def _break(self, reason: str) -> None:
        self._broken = reason
        self._set_fault(reason, ErrorCode.CONNECTION_LOST)
        if self._transport is not None:
            self._transport.abort()

    def _eof_received(self) -> None:
        if self._broken is None:
            try:
                self._decoder.eof()
            except ProtocolError as exc:
                self._broken = (f"Protocol error from the low-level controller ({exc.kind}): "
                                f"{exc}")

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._closing:
            reason = self._broken or "Lost connection to the low-level controller" + (
                f": {exc!r}" if exc is not None else "")
            self._fail_waiters(self._set_fault(reason, ErrorCode.CONNECTION_LOST))
        else:
            self._fail_waiters(ConnectionError("client closed"))
        self.closed.set()
        self._fire(self.on_connect, self)

    def _on_telemetry(self, frame: Frame) -> None:
        """After a read: keep the last telemetry, wake waiters, estimate the clock offset."""
        self.telemetry = frame
        h = frame.header
        self.clock_offset = h.tai_sec + h.tai_nsec * 1e-9 - current_tai()
        if self._telemetry_waiters:
            for fut in self._telemetry_waiters:
                if not fut.done():
                    fut.set_result(frame)
            self._telemetry_waiters.clear()

    def _dispatch_other(self, frame: Frame) -> None:
        if frame.kind is FrameKind.CONFIG:
            self.config = frame.payload
            self._fire(self.on_config, frame.payload)
            if not self._configured.done():
                self._configured.set_result(None)
            return
        counter = frame[1]  # Header.counter (gen D header: frame_id, counter, ...)
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
            # The frame itself: status, duration and reason are attributes of it.
            pending[1].set_result(frame)

    async def next_telemetry(self) -> Any:
        """The next telemetry struct to arrive (wrap in ``asyncio.timeout`` to bound it)."""
        if not self.connected:
            raise ConnectionError(self.fault_reason or "not connected")
        fut: asyncio.Future[Any] = self._loop.create_future()
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
        # One command in flight (spec §3.8): a FIFO mutex that only awaits when contended.
        if self._busy or self._queue:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._queue:
                    self._queue.remove(waiter)
                elif not waiter.cancelled():
                    self._release()  # we were handed the mutex but will not use it
                raise
        self._busy = True
        try:
            transport = self._transport
            if transport is None or self._lost or transport.is_closing():
                raise ConnectionError(self.fault_reason or "not connected")
            if not self._can_write.is_set():
                await self._can_write.wait()
            counter = (self._last_counter + 1) & 0xFFFFFFFF
            self._last_counter = counter
            fut: asyncio.Future[Any] = self._loop.create_future()
            self._pending = (counter, fut)
            self._ack_deadline = self._loop.time() + self.ack_timeout
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(self._ack_deadline, self._check_ack)
            try:
                # One write per command (spec §3.9: the controller does no reassembly).
                transport.write(self._pack_command(COMMANDER_CSC, counter, *command[2:]))
                self.commands_sent += 1
                try:
                    status = await fut
                except _AckTimeout:
                    self._timed_out[counter] = time.monotonic()
                    if len(self._timed_out) > _LATE_MEMORY:
                        self._timed_out.pop(next(iter(self._timed_out)))
                    raise TimeoutError(f"no status for command {command.code:#x} (counter "
                                       f"{counter}) within {self.ack_timeout} s") from None
            finally:
                self._pending = None
        finally:
            self._release()
        if status.status == CommandStatusCode.ACK:
            return float(status.duration)
        if status.status == CommandStatusCode.NO_ACK:
            raise CommandRejected(status.reason, command.code)
        raise CommandRejected(f"Unknown command status {status.status}; reason={status.reason}",
                              command.code)

    def _check_ack(self) -> None:
        """The watchdog fired: expire the command in flight if its deadline has passed,
        else sleep until it does; with no command in flight, stop."""
        self._watchdog = None
        pending = self._pending
        if pending is None or pending[1].done():
            return
        if self._loop.time() >= self._ack_deadline:
            pending[1].set_exception(_AckTimeout())
        else:
            self._watchdog = self._loop.call_at(self._ack_deadline, self._check_ack)

    def _release(self) -> None:
        self._busy = False
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._busy = True  # handed over directly: no barging
                waiter.set_result(None)
                return

    async def send(self, code: int, params: Sequence[float] = ()) -> float:
        """Build and run a command from a code and up to six parameters."""
        return await self.run_command(self.profile.make_command(code, 0, params))


class _AckTimeout(Exception):
    pass
