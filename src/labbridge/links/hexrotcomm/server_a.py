"""Generation A, CSC side: two one-client servers (seed 003; spec hexrotcomm.md §5).

::

    controller (client) --connects--> Telemetry server, port P     controller writes only
    controller (client) --connects--> Command server,   port P+1   controller reads only

Commands go out with no feedback; CONFIG and TELEMETRY come in. When a telemetry or config
message cannot be understood (unknown frame id, corrupt header, bad value, truncated at EOF),
the server logs the reason and breaks the *telemetry* connection (the command connection stays
up); the controller reconnects (seed 003; spec §5.6 Decision). ``port=0`` picks a free P for
which P+1 is free too, so the controller can still find the command port.

Access (issue 12, docs/adr/0183): whoever connects to P or P+1 acts as the controller (its
telemetry becomes our state; it reads our commands), so both sockets need the ``operator``
role from the node's gate, by source address or, with ``ssl``, by TLS client certificate;
anyone else is refused at connection (logged, audited) and can never replace the controller.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import time
from collections.abc import Sequence
from typing import Any

from labbridge.access import Gate, Role
from labbridge.links.hexrotcomm.common import (
    REPLACE_IDLE_AFTER,
    Callback,
    PairedCommandServer,
    PeerAccess,
    call_callback,
)
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.hexrotcomm.framing import FrameDecoder, FrameKind, WireProfile
from labbridge.protocol.hexrotcomm.structs import Generation
from labbridge.transport.one_client import READ_CHUNK, OneClientServer

_PORT_PAIR_TRIES = 20
#: What a peer that does not speak TLS on our TLS ports probably is (the hint of its audited
#: refusal).
PLAIN_CONTROLLER = "a plain TCP peer, e.g. a real Moog controller,"
#: Longest wait for the controller to take a command off the socket (it reads every 50 ms).
WRITE_TIMEOUT = 5.0


class CommandTelemetryServer:
    """Generation-A CSC side: ``await start()``, wait for the controller, ``send()`` commands."""

    def __init__(
        self,
        profile: WireProfile,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_config: Callback | None = None,
        on_telemetry: Callback | None = None,
        on_connect: Callback | None = None,
        log: logging.Logger | None = None,
        replace_idle_after: float | None = REPLACE_IDLE_AFTER,
        write_timeout: float = WRITE_TIMEOUT,
        gate: Gate | None = None,
        via: str = "hexrot_controller",
        target: str = "",
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        if profile.generation is not Generation.A:
            raise ValueError("CommandTelemetryServer speaks generation A only")
        if host is None:
            raise ValueError("give a host: with host=None and port=0 the port is ambiguous")
        self.profile = profile
        self.host = host
        self.port = port
        self.on_config = on_config
        self.on_telemetry = on_telemetry
        self.on_connect = on_connect
        self.log = log or logging.getLogger(__name__)
        #: A connection on either port replaces a client idle this long (None: never). The
        #: command socket carries nothing from the controller, so its client counts as idle
        #: when no telemetry client from the same host is sending.
        self.replace_idle_after = replace_idle_after
        self.write_timeout = write_timeout
        #: Who may act as the controller: ``operator`` (by address or TLS certificate).
        self.access = PeerAccess(gate, via, target or "controller", connect_role=Role.OPERATOR,
                                 tls=ssl is not None)
        self.ssl = ssl
        self.config: Any = None
        self.telemetry: Any = None
        self.bad_frames = 0
        self.last_error: ProtocolError | None = None
        self.fault_reason: str | None = None
        self._command_counts: dict[int, int] = {}
        self._telemetry_waiters: list[asyncio.Future[Any]] = []
        self._was_connected = False
        self._connected_event = asyncio.Event()
        self.telemetry_server: OneClientServer | None = None
        self.command_server: PairedCommandServer | None = None
        #: When the current telemetry client connected (``time.monotonic()``).
        self._telemetry_connected_at = 0.0

    async def start(self) -> None:
        tries = _PORT_PAIR_TRIES if self.port == 0 else 1
        for attempt in range(tries):
            tel = OneClientServer(
                "Telemetry", self.host, self.port, handler=self._telemetry_handler,
                connect_callback=self._connection_changed, log=self.log,
                replace_idle_after=self.replace_idle_after, ssl=self.ssl,
                admit=self.access.admit, on_handshake_failed=self.access.handshake_failed,
                plain_peer=PLAIN_CONTROLLER)
            await tel.start()
            cmd = PairedCommandServer(
                "Command", self.host, tel.port + 1,
                connect_callback=self._connection_changed, log=self.log,
                stale=self._command_stale, ssl=self.ssl, admit=self.access.admit,
                on_handshake_failed=self.access.handshake_failed, plain_peer=PLAIN_CONTROLLER)
            try:
                await cmd.start()
            except OSError:
                await tel.close()
                if attempt == tries - 1:
                    raise
                continue
            self.telemetry_server, self.command_server = tel, cmd
            self.port = tel.port
            return

    async def close(self) -> None:
        for srv in (self.command_server, self.telemetry_server):
            if srv is not None:
                await srv.close()
        for fut in self._telemetry_waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("server closed"))
        self._telemetry_waiters.clear()

    def _command_stale(self, newcomer: str) -> float | None:
        """Seconds the command client has been stale for ``newcomer``, or None to keep it.

        The controller writes nothing on the command socket, so its silence says nothing. It
        connects both sockets together and reconnects whichever drops (spec §5.7), so:

        * no telemetry client: the command client has been alone since it connected;
        * a newcomer from another host than the telemetry client's never replaces it;
        * a command client from another host than the telemetry client's is not the
          controller's: the controller's own connection replaces it at once;
        * a command client that connected after the telemetry client is that controller's;
        * one that connected before it is stale once the controller has been sending
          telemetry without its command socket for ``replace_idle_after``.
        """
        tel, cmd, limit = self.telemetry_server, self.command_server, self.replace_idle_after
        if tel is None or cmd is None or limit is None or cmd.peer is None:
            return None
        now = time.monotonic()
        if not tel.connected or tel.peer is None:
            idle = now - cmd.connected_at
        elif _host(newcomer) != _host(tel.peer):
            return None
        elif _host(cmd.peer) != _host(tel.peer):
            return now - cmd.connected_at
        elif cmd.connected_at >= self._telemetry_connected_at:
            return None
        else:
            idle = now - self._telemetry_connected_at
        return idle if idle >= limit else None

    @property
    def command_port(self) -> int:
        return self.port + 1

    @property
    def connected(self) -> bool:
        """Both sockets connected (spec §5.6 "Connected")."""
        return (self.telemetry_server is not None and self.command_server is not None
                and self.telemetry_server.connected and self.command_server.connected)

    async def wait_connected(self) -> None:
        """Until both sockets are connected (wrap in ``asyncio.timeout`` to bound it)."""
        await self._connected_event.wait()

    async def _connection_changed(self, server: OneClientServer) -> None:
        now = self.connected
        if now:
            self._connected_event.set()
            self.fault_reason = None
        else:
            self._connected_event.clear()
        if now != self._was_connected:
            self._was_connected = now
            await call_callback(self.on_connect, self, self.log)

    # -- telemetry --------------------------------------------------------------------------
    async def _telemetry_handler(self, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(self.profile)
        self._telemetry_connected_at = time.monotonic()
        # What an earlier connection sent is not this controller's state: wait for fresh
        # CONFIG and TELEMETRY (a controller that reconnects sends both again, spec §5.7).
        self.config = self.telemetry = None
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    decoder.eof()
                    while (frame := decoder.next_event()) is not NEED_DATA:
                        await self._dispatch(frame)
                    return
                decoder.receive_data(data)
                while (frame := decoder.next_event()) is not NEED_DATA:
                    await self._dispatch(frame)
        except ProtocolError as exc:
            # Seed 003: no way to resynchronise, so break the telemetry connection.
            self.bad_frames += 1
            self.last_error = exc
            self.fault_reason = f"invalid telemetry ({exc.kind}): {exc}"
            self.log.error("Invalid telemetry read (%s): %s; closing the telemetry connection",
                           exc.kind, exc)

    async def _dispatch(self, frame: Any) -> None:
        if frame.kind is FrameKind.TELEMETRY:
            # The frame: telemetry fields as attributes, plus header and payload.
            self.telemetry = frame
            for fut in self._telemetry_waiters:
                if not fut.done():
                    fut.set_result(frame)
            self._telemetry_waiters.clear()
            await call_callback(self.on_telemetry, frame, self.log)
        else:
            self.config = frame.payload
            await call_callback(self.on_config, frame.payload, self.log)

    async def next_telemetry(self) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._telemetry_waiters.append(fut)
        try:
            return await fut
        finally:
            if fut in self._telemetry_waiters:
                self._telemetry_waiters.remove(fut)

    # -- commands -------------------------------------------------------------------------------
    async def put_command(self, command: Any) -> None:
        """Write one command; returns after the write: generation A has no feedback."""
        if self.command_server is None:
            raise RuntimeError("not started")
        if not self.connected:
            raise RuntimeError("not connected")
        if not isinstance(command, self.profile.command.record):
            raise ValueError(f"expected a {self.profile.command.name}, got "
                             f"{type(command).__name__}")
        # Per-code counter starting at 1 (spec §5.3).
        count = (self._command_counts.get(command.code, 0) + 1) & 0xFFFFFFFF
        self._command_counts[command.code] = count
        cmd = command._replace(counter=count, sync_pattern=self.profile.sync_pattern)
        server = self.command_server
        try:
            async with asyncio.timeout(self.write_timeout):
                await server.write(self.profile.encode_command(cmd))
        except TimeoutError:
            # A controller that does not take commands off the socket: drop it rather than
            # wait for ever or buffer without bound (issue 13); it reconnects.
            self.log.error("Command: the controller at %s took no command for %.1f s; "
                           "closing the command connection", server.peer, self.write_timeout)
            if server.writer is not None:
                server.writer.transport.abort()  # its buffer will never drain: no graceful close
            await server.close_client()
            raise ConnectionError(f"the controller did not read the command within "
                                  f"{self.write_timeout} s; command connection closed") from None

    async def send(self, code: int, params: Sequence[float] = ()) -> None:
        await self.put_command(self.profile.make_command(code, 0, params))


def _host(peer: str) -> str:
    return peer.rsplit(":", 1)[0]
