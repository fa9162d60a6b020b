"""The legacy relay: RemoteHardwareServer -> CommandRepeater -> CommandProcessor (seeds 000/001).

Spec pychron.md sections 3.3, 3.4 and 10::

    client --TCP/UDP--> RelayFrontServer --(CommandRepeater, Unix stream socket)--> RelayProcessor
                          (the RHS)            "%04X" + "type|request|sender"        (in the
    client <-- F-CRC frame + "\\n" ---------------- "%04X" + reply + CRC16 <------ hardware process)

* :class:`RelayProcessor` is the CommandProcessor living in the hardware process: a Unix-domain
  stream server that decodes relay requests, hands each to the handler of its process type
  (``Extractionline`` = the valve vocabulary, with the seed's ``System`` as an alias;
  ``Hardware``, ``Diode``, ``CO2``... = whatever command sets the node gives them; ``test`` =
  echo) and answers with an F-CRC frame. Requests on one connection are answered in order.
* :class:`CommandRepeater` forwards a request and returns the verified reply. Unlike the real
  one (one socket, one lock for everything) it keeps a small pool of connections, so a slow
  command holds one connection and other clients go on through the others. When the processor
  is unreachable it fails at once; it reconnects by itself on the next request after the
  processor comes back (nothing to restart).
* :class:`RelayFrontServer` is the RemoteHardwareServer: one request per TCP connection (or per
  UDP datagram), answered with the F-CRC frame plus ``\\n`` (what an external client of the
  legacy server reads, vectors ``legacy_relay.replies[].tcp_reply_to_external_client``).
  Errors raised at the front (``ERROR 011`` when the processor is down) are framed the same
  way, so a client needs one parser (ADR 0062). ``PychronReady`` is answered as the real
  repeater does: a ``test`` echo of a random ``%0.3f`` token, ``OK`` when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.textserver import OneShotTextServer
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.pychron.messages import ErrorCode, error_text
from labbridge.protocol.pychron.relay import (
    CrcReply,
    CrcReplyDecoder,
    RelayRequest,
    RelayRequestDecoder,
    encode_crc_reply,
    encode_relay_request,
)
from labbridge.transport.endpoint import Endpoint

log = logging.getLogger(__name__)

READY_REQUEST = "PychronReady"


#: Prefix of the sender of a request that reached the front as a UDP datagram [lb]: the
#: processor keeps UDP read-only (a real repeater never sends it; its senders are addresses).
UDP_SENDER = "udp:"


def framed(text: str) -> bytes:
    """F-CRC frame of ``text``; a reply too large for 4 hex digits becomes an error frame."""
    try:
        return encode_crc_reply(text)
    except ProtocolError:
        return encode_crc_reply(error_text(ErrorCode.FUNC_CALL, "reply too large", ""))


# ============================================================================================
# CommandProcessor (hardware process side)
# ============================================================================================


class RelayProcessor:
    """Service: the CommandProcessor, a Unix-domain stream server at ``path``."""

    def __init__(self, path: str, handlers: Mapping[str, Dispatcher], *,
                 name: str = "relay-processor", quiet_gap: float = 0.05) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.name = name
        self.quiet_gap = quiet_gap
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.requests = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        # asyncio removes a stale socket file left by a killed processor.
        self._server = await asyncio.start_unix_server(self._serve, self.path)
        log.info("%s: listening on %s (types: %s)", self.name, self.path,
                 ", ".join(sorted(self.handlers)) or "test only")

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.name, "unix", path=self.path, purpose="relay processor")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        decoder = RelayRequestDecoder()
        fresh = False  # bytes arrived since the last quiet-gap flush
        try:
            while True:
                try:
                    if fresh:
                        chunk = await asyncio.wait_for(reader.read(65536), self.quiet_gap)
                    else:
                        chunk = await reader.read(65536)
                except TimeoutError:
                    chunk = None  # quiet gap: what is buffered is one bare request
                # A malformed request gets the same error reply (and close) whether it ended
                # at CR/LF, at a quiet gap or at EOF.
                try:
                    if chunk is None:
                        fresh = False
                        req = decoder.flush()
                        if req is not None:
                            writer.write(framed(await self.handle(req)))
                        continue
                    if not chunk:
                        req = decoder.flush()
                        if req is not None:
                            writer.write(framed(await self.handle(req)))
                            await writer.drain()
                        break
                    fresh = True
                    decoder.receive_data(chunk)
                    while (ev := decoder.next_event()) is not NEED_DATA:
                        assert isinstance(ev, RelayRequest)
                        writer.write(framed(await self.handle(ev)))
                except ProtocolError as exc:
                    log.warning("%s: bad relay request: %s; closing", self.name, exc)
                    writer.write(framed(error_text(ErrorCode.INVALID_COMMAND, str(exc))))
                    await writer.drain()
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connection tasks. End normally: the stream machinery of Python
            # 3.11 calls task.exception() on its callback tasks, which raises on a cancelled
            # one and logs a spurious error.
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def handle(self, req: RelayRequest) -> str:
        """Reply text of one relayed request (spec 10: one handler per request type)."""
        self.requests += 1
        htype = req.handler_type
        if htype == "test":
            return req.request  # echo (used by the repeater's PychronReady)
        if req.request.strip() == READY_REQUEST:
            return "OK"  # ExtractionlineHandler.PychronReady
        disp = self.handlers.get(htype)
        if disp is None:
            return error_text(ErrorCode.MANAGER_UNAVAILABLE, req.process_type)
        sender = req.sender or "local"
        udp = sender.startswith(UDP_SENDER)
        caller = Caller(sender[len(UDP_SENDER):] if udp else sender, "relay", via=self.name,
                        udp=udp)
        result = disp.dispatch(req.request, caller)
        return result if isinstance(result, str) else await result


# ============================================================================================
# CommandRepeater
# ============================================================================================


class RepeaterError(Exception):
    """The processor could not be reached, or its reply was missing or corrupt."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    decoder: CrcReplyDecoder = field(default_factory=CrcReplyDecoder)

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class CommandRepeater:
    """Forwards requests to a :class:`RelayProcessor` over its Unix socket."""

    def __init__(self, path: str, process_type: str = "Extractionline", *,
                 timeout: float = 5.0, connect_timeout: float = 1.0,
                 max_connections: int = 8) -> None:
        self.path = path
        self.process_type = process_type
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.connects = 0

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()
        for c in idle:
            with contextlib.suppress(Exception):
                await c.writer.wait_closed()

    async def _connection(self) -> _Conn:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable:
                return conn
            conn.close()  # the processor went away since this one was used
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), self.connect_timeout)
        except TimeoutError:
            raise RepeaterError("connect timed out") from None
        except OSError as exc:
            raise RepeaterError(exc.strerror or str(exc)) from None
        self.connects += 1
        return _Conn(reader, writer)

    async def ask(self, request: str, sender: str | None,
                  process_type: str | None = None) -> str:
        """The processor's reply text (CRC verified); :class:`RepeaterError` on failure."""
        frame = encode_relay_request(RelayRequest(process_type or self.process_type, request,
                                                  sender))
        async with self._slots:
            conn = await self._connection()
            try:
                conn.writer.write(frame)
                data = await asyncio.wait_for(self._read_reply(conn), self.timeout)
            except TimeoutError:
                conn.close()
                raise RepeaterError(f"timed out after {self.timeout} s") from None
            except (OSError, ProtocolError, asyncio.IncompleteReadError) as exc:
                conn.close()
                raise RepeaterError(str(exc) or type(exc).__name__) from None
            except BaseException:
                conn.close()  # cancelled mid-request: the stream is out of step
                raise
            self._idle.append(conn)
            return data

    @staticmethod
    async def _read_reply(conn: _Conn) -> str:
        while True:
            ev = conn.decoder.next_event()
            if isinstance(ev, CrcReply):
                return ev.data
            chunk = await conn.reader.read(65536)
            if not chunk:
                raise ConnectionResetError("the processor closed the connection")
            conn.decoder.receive_data(chunk)

    async def get_response(self, request: str, sender: str | None) -> str:
        """Reply text as the front server sends it: errors become ``ERROR 011``."""
        try:
            if request.strip() == READY_REQUEST:
                token = f"{random.random():0.3f}"
                echo = await self.ask(token, sender, process_type="test")
                return "OK" if echo == token else error_text(
                    ErrorCode.PYCHRON_COMM, self.path, f"bad echo {echo!r}")
            return await self.ask(request, sender)
        except RepeaterError as exc:
            log.warning("relay to %s failed: %s", self.path, exc)
            return error_text(ErrorCode.PYCHRON_COMM, self.path, exc)


# ============================================================================================
# RemoteHardwareServer (front)
# ============================================================================================


class RelayFrontServer:
    """Service: the RemoteHardwareServer, TCP (and UDP) in front of a repeater."""

    def __init__(self, repeater: CommandRepeater, host: str = "127.0.0.1", port: int = 1061, *,
                 udp: bool = False, udp_port: int | None = None,
                 name: str = "relay-front", quiet_gap: float = 0.05) -> None:
        self.repeater = repeater
        self.name = name
        self._server = OneShotTextServer(
            self._handle, host, port, udp=udp, udp_port=udp_port, name=name,
            purpose="legacy RemoteHardwareServer", quiet_gap=quiet_gap,
            oversize_reply=framed(error_text(ErrorCode.INVALID_COMMAND, "request too long"))
            + b"\n",
            failure_reply=framed(error_text(ErrorCode.FUNC_CALL, "internal error", "")) + b"\n")

    @property
    def port(self) -> int | None:
        return self._server.port

    @property
    def udp_port(self) -> int | None:
        return self._server.udp_port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()
        await self.repeater.close()

    def endpoints(self) -> list[Endpoint]:
        return [*self._server.endpoints(),
                Endpoint(self.name, "unix", path=self.repeater.path, role="connect",
                         purpose="relay processor")]

    async def _handle(self, text: str, peer: str, udp: bool) -> bytes:
        # The processor judges the request by its sender (the node's access policy); a
        # datagram's sender is marked so that UDP stays read-only behind the relay too.
        reply = await self.repeater.get_response(text, f"{UDP_SENDER}{peer}" if udp else peer)
        return framed(reply) + b"\n"
