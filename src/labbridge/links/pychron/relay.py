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
  On the same TCP port it also takes the HTTP ``GET`` form (issue 20, ADR 0114,
  :mod:`labbridge.protocol.pychron.httpget`): ``GET /Open%20A HTTP/1.0`` is the request
  ``Open A``, relayed exactly as the plain form's (same process type, the client's address as
  sender, judged by the processor's gate), and answered ``HTTP/1.0 200 OK`` with the reply
  text (and ``\n``) as body. A request a web page made (a browser's ``Sec-Fetch-Site`` other
  than ``none``, an ``Origin``, a ``Referer``, or a ``Host`` that is a name this node was not
  given) is refused with ``403``: a page must not use its visitor's address to move valves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.textserver import OneShotTextServer
from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.pychron.httpget import HttpRequest, HttpRequestError
from labbridge.protocol.pychron.messages import ErrorCode, error_text
from labbridge.protocol.pychron.relay import (
    CrcReply,
    CrcReplyDecoder,
    RelayRequest,
    RelayRequestDecoder,
    encode_crc_reply,
    encode_relay_request,
)
from labbridge.transport.backoff import Backoff
from labbridge.transport.endpoint import Endpoint
from labbridge.transport.slots import SlotTable
from labbridge.transport.unix import check_socket_dir

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
    """Service: the CommandProcessor, a Unix-domain stream server at ``path``.

    ``path`` must be in a private directory (ours, mode 0700; created when missing, refused
    when another user could write to it: :mod:`labbridge.transport.unix`). A request must be
    whole within ``request_timeout`` of its first byte; at most ``max_connections``
    repeater connections are held (the one idle longest makes room for a newcomer); replies
    are written with backpressure (a repeater that stops reading stops our reading).
    """

    def __init__(self, path: str, handlers: Mapping[str, Dispatcher], *,
                 name: str = "relay-processor", quiet_gap: float = 0.05,
                 request_timeout: float = 10.0, max_connections: int = 64) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self.name = name
        self.quiet_gap = quiet_gap
        self.request_timeout = request_timeout
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        # Every peer of a Unix socket is "local": one cap for all of them.
        self._slots = SlotTable(name, max_connections=max_connections,
                                max_per_address=max_connections)
        self.requests = 0

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        check_socket_dir(self.path, create=True)
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
            async with asyncio.timeout(2.0):
                await server.wait_closed()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.name, "unix", path=self.path, purpose="relay processor")]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        slot = self._slots.admit(writer.transport, "local")
        if slot is None:
            writer.close()
            return
        self._conns.add(task)
        loop = asyncio.get_running_loop()
        decoder = RelayRequestDecoder()
        fresh = False  # bytes arrived since the last quiet-gap flush
        started: float | None = None  # when the first byte of a partial request arrived

        async def answer(req: RelayRequest) -> None:
            slot.active()
            slot.set_busy(True)
            try:
                writer.write(framed(await self.handle(req)))
            finally:
                slot.set_busy(False)
            await writer.drain()  # a repeater that does not read stops our reading

        try:
            while True:
                wait: float | None = self.quiet_gap if fresh else None
                if started is not None:
                    left = started + self.request_timeout - loop.time()
                    wait = left if wait is None else min(wait, left)
                try:
                    if wait is None:
                        chunk: bytes | None = await reader.read(65536)
                    else:
                        async with asyncio.timeout(max(0.0, wait)):
                            chunk = await reader.read(65536)
                except TimeoutError:
                    chunk = None  # quiet gap (or the request deadline)
                # A malformed request gets the same error reply (and close) whether it ended
                # at CR/LF, at a quiet gap or at EOF.
                try:
                    if chunk is None:
                        if started is not None and \
                                loop.time() >= started + self.request_timeout:
                            log.warning("%s: a request was not complete within %.1f s of its "
                                        "first byte; closing", self.name, self.request_timeout)
                            writer.write(framed(error_text(
                                ErrorCode.INVALID_COMMAND,
                                f"request not complete within {self.request_timeout:g} s of "
                                "its first byte")))
                            await writer.drain()
                            break
                        fresh = False
                        req = decoder.flush()
                        if req is not None:
                            started = None
                            await answer(req)
                        continue
                    if not chunk:
                        req = decoder.flush()
                        if req is not None:
                            await answer(req)
                        break
                    fresh = True
                    if started is None:
                        started = loop.time()
                    decoder.receive_data(chunk)
                    answered = False
                    while (ev := decoder.next_event()) is not NEED_DATA:
                        assert isinstance(ev, RelayRequest)
                        answered = True
                        await answer(ev)
                    if not decoder.buffered:
                        started = None
                    elif answered:
                        started = loop.time()  # what is left starts a new request
                    slot.hold(decoder.buffered)
                except ProtocolError as exc:
                    log.warning("%s: bad relay request: %s; closing", self.name, exc)
                    writer.write(framed(error_text(ErrorCode.INVALID_COMMAND, str(exc))))
                    await writer.drain()
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # stop() cancels connection tasks. End normally: the stream machinery of Python
            # 3.11 calls task.exception() on its callback tasks, which raises on a cancelled
            # one and logs a spurious error.
            pass
        finally:
            self._conns.discard(task)
            self._slots.release(slot)
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
    """Forwards requests to a :class:`RelayProcessor` over its Unix socket.

    While the processor is unreachable, connection attempts back off exponentially
    (``backoff``): a request that arrives before the next attempt is due is answered at once
    with the last reason, without touching the socket. The state is logged once when the
    processor becomes unreachable and once when it answers again, never once per request.
    The socket's directory must be private (:mod:`labbridge.transport.unix`): a relay never
    talks to a socket another user could have put there.
    """

    def __init__(self, path: str, process_type: str = "Extractionline", *,
                 timeout: float = 5.0, connect_timeout: float = 1.0,
                 max_connections: int = 8, backoff: Backoff | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.path = path
        self.process_type = process_type
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.connects = 0
        #: Connection attempts made (successful or not).
        self.connect_attempts = 0
        self.backoff = backoff or Backoff(initial=0.05, maximum=2.0)
        self._clock = clock
        self._down: str | None = None  # why the processor is unreachable (None: it is not)
        self._retry_at = 0.0
        self._failures = 0

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

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
        if self._down is not None:
            wait = self._retry_at - self._now()
            if wait > 0:
                raise RepeaterError(f"{self._down} (next attempt in {wait:.1f} s)")
        self.connect_attempts += 1
        try:
            check_socket_dir(self.path)
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_unix_connection(self.path)
        except TimeoutError:
            raise self._unreachable("connect timed out") from None
        except OSError as exc:
            raise self._unreachable(exc.strerror or str(exc)) from None
        if self._down is not None:
            log.info("relay to %s works again (after %d failed attempt(s))", self.path,
                     self._failures)
        self._down = None
        self._failures = 0
        self.backoff.reset()
        self.connects += 1
        return _Conn(reader, writer)

    def _unreachable(self, reason: str) -> RepeaterError:
        self._failures += 1
        delay = self.backoff.next()
        self._retry_at = self._now() + delay
        if self._down is None:
            log.warning("relay to %s is unreachable: %s; retrying with backoff (up to %.1f s "
                        "apart), requests meanwhile get ERROR 011", self.path, reason,
                        self.backoff.maximum)
        self._down = reason
        return RepeaterError(reason)

    async def ask(self, request: str, sender: str | None,
                  process_type: str | None = None) -> str:
        """The processor's reply text (CRC verified); :class:`RepeaterError` on failure."""
        frame = encode_relay_request(RelayRequest(process_type or self.process_type, request,
                                                  sender))
        async with self._slots:
            conn = await self._connection()
            try:
                conn.writer.write(frame)
                async with asyncio.timeout(self.timeout):
                    data = await self._read_reply(conn)
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
            if self._down is None:  # a per-request failure (timeout, broken stream)
                log.warning("relay to %s failed: %s", self.path, exc)
            return error_text(ErrorCode.PYCHRON_COMM, self.path, exc)


# ============================================================================================
# RemoteHardwareServer (front)
# ============================================================================================


class RelayFrontServer:
    """Service: the RemoteHardwareServer, TCP (and UDP) in front of a repeater."""

    def __init__(self, repeater: CommandRepeater, host: str = "127.0.0.1", port: int = 1061, *,
                 udp: bool = False, udp_port: int | None = None,
                 name: str = "relay-front", quiet_gap: float = 0.05,
                 request_timeout: float = 10.0, http: bool = True,
                 http_hosts: Iterable[str] = ()) -> None:
        self.repeater = repeater
        self.name = name
        #: Host names (besides IP addresses and ``localhost``) an HTTP request's ``Host``
        #: header may give: the names this node is reached by (lower case).
        self.http_hosts = frozenset(h.strip().lower().rstrip(".") for h in http_hosts)
        #: HTTP requests refused as made by a web page (``403``).
        self.http_refused = 0
        self._server = OneShotTextServer(
            self._handle, host, port, udp=udp, udp_port=udp_port, name=name,
            purpose="legacy RemoteHardwareServer" + (" (plain and HTTP GET)" if http else ""),
            quiet_gap=quiet_gap, http=self._handle_http if http else None,
            request_timeout=request_timeout,
            oversize_reply=framed(error_text(ErrorCode.INVALID_COMMAND, "request too long"))
            + b"\n",
            timeout_reply=framed(error_text(ErrorCode.INVALID_COMMAND,
                                            "request not complete in time")) + b"\n",
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

    async def _handle_http(self, req: HttpRequest, peer: str) -> bytes:
        """The GET form: the path is the request, relayed like the plain form's; the reply
        text is the body of a ``200`` (an ``ERROR nnn`` reply too: it is the reply)."""
        refused = self._made_by_a_web_page(req)
        if refused is not None:
            self.http_refused += 1
            log.warning("%s: refused an HTTP request from %s: %s", self.name, peer, refused)
            return self._server.http_error(HttpRequestError(403, refused, version=req.version,
                                                            method=req.method))
        try:
            text = req.command()
        except HttpRequestError as exc:
            return self._server.http_error(exc)
        reply = await self.repeater.get_response(text, peer)
        return self._server.http_reply(req, (reply + "\n").encode("utf-8", "replace"))

    def _made_by_a_web_page(self, req: HttpRequest) -> str | None:
        """Why ``req`` looks made by a web page in a browser (not typed by its user), or None.

        A page on any site can make its visitor's browser send a GET here (an image, a
        link), from the visitor's address, which the node may trust; or be served under a
        name that resolves to this node (DNS rebinding). Browsers mark such requests:
        ``Sec-Fetch-Site`` other than ``none`` (``none`` = typed in the address bar), an
        ``Origin``, a ``Referer``; the name in ``Host``. Programs (curl, scripts, the legacy
        clients) send none of these, or an address as ``Host``."""
        site = req.header("sec-fetch-site")
        if site is not None and site.strip().lower() != "none":
            return (f"made by a web page (Sec-Fetch-Site: {site}); send it from a program, or "
                    "type it in the address bar")
        for name in ("origin", "referer"):
            value = req.header(name)
            if value is not None:
                return (f"made by a web page ({name.capitalize()}: {value}); send it from a "
                        "program, or type it in the address bar")
        host = req.header("host")
        if host is not None and not self._known_host(host):
            return (f"Host {host!r} is not an address of this node nor one of its http_hosts "
                    "names; use its IP address, or add the name to http_hosts in the node "
                    "file")
        return None

    def _known_host(self, host: str) -> bool:
        name = host.strip().lower()
        if name.startswith("["):  # [IPv6]:port
            name = name[1:].partition("]")[0]
        elif name.count(":") == 1:
            name = name.partition(":")[0]
        name = name.rstrip(".")
        if name == "localhost" or name in self.http_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
