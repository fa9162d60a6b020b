"""Notifier: PUB on port P, REP on port P+1 (spec pychron.md §13; seed 002: 5555/5556).

* PUB: everything a node broadcasts (device changes through :class:`DevicePublisher`,
  notifications, a heartbeat every 2 s), in the envelope form and, when ``legacy`` is on, the
  single-string forms Pychron peers read (``pychron {json}``, ``RunAdded <uuid>``...).
* REP: ``ping`` -> ``echo``; names registered with :meth:`add_request_handler` -> the
  handler's reply; anything else, a handler exception or a handler slower than
  ``request_timeout`` -> ``error ...``. Exactly one reply per request, always, so the socket
  never wedges (the real notifier's defect, §17 #14).

Access (ADR 0127): both sockets admit only peers the node's gate gives a role (observer reads
and asks), over CurveZMQ when the node has a key pair; a request registered with a higher role
(one that changes state) is checked per request, and its outcome audited, by the gate.

Heartbeat: envelope topic ``<node>.notifier.heartbeat`` and ``pychron {"kind":"heartbeat",
"source":..., "state":"running", "ts":...}``; subscribers use it to tell a silent bus from a
dead publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from labbridge.access import DONE, FAILED, AccessDenied, Action, Gate, Principal, Role
from labbridge.bus import sockets
from labbridge.bus.auth import CurveKeyPair, SocketAuth, server_auth
from labbridge.bus.publisher import MAX_SUBSCRIPTIONS, Publisher
from labbridge.protocol.telemetry import legacy, requests
from labbridge.protocol.telemetry.envelope import dumps_compact, make_topic

log = logging.getLogger(__name__)

#: A request handler: receives the argument text, returns str / bytes / JSON-able (maybe async).
Handler = Callable[[str], Any]

DEFAULT_PORT = 5555
HEARTBEAT_PERIOD = 2.0


class Notifier:
    """PUB + REP pair; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 rep_port: int | None = None, *, node: str = "node",
                 ctx: zmq.asyncio.Context | None = None, legacy: bool = True,
                 heartbeat: float | None = HEARTBEAT_PERIOD, source: str = "",
                 request_timeout: float = 5.0, sndhwm: int = 100_000,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS,
                 clock: Callable[[], float] = time.time, name: str = "notifier",
                 gate: Gate | None = None, curve: CurveKeyPair | None = None,
                 via: str = "") -> None:
        self.host = host
        self.requested_port = port
        # REP is PUB + 1 as in Pychron; with port 0 both are picked by the OS.
        self.requested_rep_port = rep_port if rep_port is not None else (port + 1 if port else 0)
        self.node = node
        self._ctx = ctx
        self.legacy = legacy
        self.heartbeat = heartbeat
        self.source = source or node
        self.request_timeout = request_timeout
        self.clock = clock
        self.name = name
        #: The node's gate (None: this machine only) and Curve key pair (None: plain).
        self.gate = gate if gate is not None else Gate()
        self.curve = curve
        self.via = via or name
        self.publisher = Publisher(host, port, ctx=ctx, sndhwm=sndhwm, clock=clock,
                                   max_subscriptions=max_subscriptions, name=f"{name} PUB",
                                   gate=self.gate, curve=curve, via=self.via)
        self._handlers: dict[str, tuple[Handler, Role]] = {}
        self._rep: zmq.asyncio.Socket | None = None
        self.rep_auth: SocketAuth | None = None
        self.rep_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.state = "stopped"
        self.requests_served = 0
        self.request_errors = 0

    # -- configuration -----------------------------------------------------------------------
    def add_request_handler(self, name: str, handler: Handler,
                            role: Role = Role.OBSERVER) -> None:
        """Answer request ``name`` with ``handler(args)``; ``ping`` is built in. ``role``:
        what the request needs; above observer (a request that changes state) each one is
        checked by the gate and its outcome audited."""
        if not name or any(c.isspace() for c in name) or name == requests.PING:
            raise ValueError(f"bad request name {name!r}")
        self._handlers[name] = (handler, role)

    @property
    def port(self) -> int | None:
        return self.publisher.port

    def addresses(self) -> list[sockets.Address]:
        """Where the PUB and REP sockets listen: the bound ports once started, the configured
        ones before (0: any free port), so ``labbridge ports`` can list them."""
        pub = self.publisher.port
        rep = self.rep_port
        return [
            sockets.Address("zmq-pub", self.host,
                            self.publisher.requested_port if pub is None else pub,
                            purpose=f"{self.name} broadcast"),
            sockets.Address("zmq-rep", self.host,
                            self.requested_rep_port if rep is None else rep,
                            purpose=f"{self.name} requests"),
        ]

    @property
    def pub_url(self) -> str:
        return self.publisher.url

    @property
    def rep_url(self) -> str:
        if self.rep_port is None:
            raise RuntimeError("notifier is not started")
        return sockets.Address("zmq-rep", self.host, self.rep_port).url

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._rep is not None:
            return
        self.publisher.open()
        ctx = self._ctx or sockets.context()
        rep = ctx.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        # A peer sending a huge request is disconnected by ZeroMQ itself (bounded memory).
        rep.setsockopt(zmq.MAXMSGSIZE, requests.MAX_REQUEST)
        auth = server_auth(self.gate, self.via, "request", self.curve)
        try:
            auth.apply(rep)
            self.rep_port = sockets.bind(rep, self.host, self.requested_rep_port,
                                         f"{self.name} REP", key="rep_port")
            auth.start()
            auth.watch(rep)
        except BaseException:
            auth.unwatch()
            rep.close(linger=0)
            auth.release()
            self.publisher.close()
            raise
        self._rep = rep
        self.rep_auth = auth
        self.state = "running"
        self._tasks.append(asyncio.create_task(self._serve(rep), name=f"{self.name}-rep"))
        if self.heartbeat:
            self._tasks.append(asyncio.create_task(self._beat(self.heartbeat),
                                                   name=f"{self.name}-heartbeat"))

    async def stop(self) -> None:
        self.state = "stopped"
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.rep_auth is not None:  # its monitor goes before the socket (ADR 0126)
            self.rep_auth.unwatch()
        sockets.close(self._rep)
        self._rep = None
        if self.rep_auth is not None:  # the ZAP domain after the socket (ADR 0127)
            self.rep_auth.release()
            self.rep_auth = None
        self.publisher.close()

    # -- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, value: Any, ts: float | None = None, *,
                copy: bool = True) -> int:
        return self.publisher.publish(topic, value, ts, copy=copy)

    def publish_legacy(self, line: bytes) -> None:
        if self.legacy:
            self.publisher.publish_legacy(line)

    def send_notification(self, tag: str, message: str) -> None:
        """``<tag> <message>`` (``RunAdded <uuid>``), plus the envelope on
        ``<node>.notify.<tag>``."""
        self.publisher.publish(make_topic(self.node, "notify", tag), message)
        self.publish_legacy(legacy.line(tag, message))

    def send_console_message(self, message: str) -> None:
        self.send_notification("ConsoleMessage", message)

    def publish_heartbeat(self) -> None:
        now = self.clock()
        event = {"kind": "heartbeat", "source": self.source, "state": self.state, "ts": now}
        self.publisher.publish(make_topic(self.node, "notifier", "heartbeat"), event, now)
        self.publish_legacy(legacy.pychron_line(event))

    async def _beat(self, period: float) -> None:
        while True:
            self.publish_heartbeat()
            await asyncio.sleep(period)

    # -- requests ----------------------------------------------------------------------------
    async def _serve(self, rep: zmq.asyncio.Socket) -> None:
        while True:
            try:
                parts = await rep.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if rep.closed or exc.errno == zmq.ETERM:
                    return
                log.warning("%s: REP receive failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            reply = await self.answer([p.bytes for p in parts], parts[0])
            try:
                await rep.send(reply)
            except zmq.ZMQError as exc:
                if rep.closed or exc.errno == zmq.ETERM:
                    return
                log.warning("%s: REP send failed: %s", self.name, exc)

    async def answer(self, frames: list[bytes], origin: zmq.Frame | None = None) -> bytes:
        """The reply to one request (never raises). ``origin``: its first frame as received
        (who sent it, for requests that need more than observer); None: a local caller."""
        self.requests_served += 1
        try:
            req = requests.parse_request(frames)
        except requests.BadRequest as exc:
            self.request_errors += 1
            log.warning("%s: bad request: %s", self.name, exc)
            return exc.reply
        if req.name == requests.PING:
            return requests.ECHO
        entry = self._handlers.get(req.name)
        if entry is None:
            self.request_errors += 1
            log.info("%s: unknown request %r", self.name, req.name)
            return requests.unknown_reply(req.name)
        handler, needs = entry
        if needs > Role.OBSERVER:
            return await self._changing(req, handler, needs, origin)
        return await self._call(req, handler)

    async def _changing(self, req: requests.Request, handler: Handler, needs: Role,
                        origin: zmq.Frame | None) -> bytes:
        """A request that changes state: the gate checks it and audits what it did."""
        if origin is not None and self.rep_auth is not None:
            principal = self.rep_auth.principal_of(origin)
        else:
            principal = Principal("local", self.via, "local")
        action = Action(needs, req.name, self.via, req.args[:200])
        try:
            role = self.gate.check(principal, action)
        except AccessDenied as exc:
            self.request_errors += 1
            return requests.error_reply(f"access denied: {exc.reason}")
        reply = await self._call(req, handler)
        failed = reply.startswith(b"error ")
        self.gate.record(principal, action, FAILED if failed else DONE,
                         reply[6:].decode("utf-8", "replace") if failed else "", role)
        return reply

    async def _call(self, req: requests.Request, handler: Handler) -> bytes:
        try:
            result = handler(req.args)
            if inspect.isawaitable(result):
                # asyncio.timeout: wait_for (3.11) may swallow stop()'s cancellation
                async with asyncio.timeout(self.request_timeout):
                    result = await result
        except TimeoutError:
            self.request_errors += 1
            log.warning("%s: handler for %r took longer than %.1f s", self.name, req.name,
                        self.request_timeout)
            return requests.error_reply(f"timeout after {self.request_timeout:g} s")
        except Exception as exc:
            self.request_errors += 1
            log.warning("%s: handler for %r failed: %r", self.name, req.name, exc)
            return requests.exception_reply(exc)
        if isinstance(result, bytes):
            return result
        if isinstance(result, str):
            return result.encode("utf-8")
        try:
            return dumps_compact(result)
        except Exception as exc:
            return requests.exception_reply(exc)

