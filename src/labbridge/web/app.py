"""The web dashboard: an aiohttp app fed by the telemetry bus (issues 8, 13, 17; ADRs
0070-0073, 0130-0133).

::

    dash = WebDashboard(WebConfig(subscribe=["tcp://127.0.0.1:5555"], port=0,
                                  command_servers=[CommandTarget("valve-controller",
                                                                 "127.0.0.1", 1061)]))
    await dash.start(); print(dash.url); ...; await dash.stop()

HTTP (JSON unless said otherwise):

=========================================  ================================================
``GET /``                                   the page (static/index.html); assets under /static/
``GET /api/session``                        who you are: identity, role, CSRF token
``POST /api/login``                         ``{"user","password"}`` or ``{"token"}``: a session
``POST /api/logout``                        end the session
``GET /login?once=TOKEN``                   a one-time login link (then the page)
``GET /api/config``                         title, control on/off, thresholds, window,
                                            schematic, alarm limits
``GET /api/nodes``                          node health: status, heartbeat age, real gaps
``GET /api/devices``                        valves, series (units, held), values, frames
``GET /api/history?minutes=M``              every series' last M minutes (thinned)
``GET /api/history?topic=T[&minutes=M]``    ``[[t, v], ...]`` of one series
``GET /api/events``                         the event log (alarms, health, control)
``GET /api/frame?topic=T``                  latest 2-D frame of T as a grayscale PNG
``GET /ws``                                 WebSocket: ``hello`` snapshot, then batches
``POST /api/control/valve``                 ``{"node","valve","action":"open"|"close"}``
``POST /api/control/setpoint``              ``{"node","device","value"}``
=========================================  ================================================

Push path: every subscriber callback folds the message into :class:`LabState`, which returns
push items; they are queued and sent to every page as one ``batch`` message per
``push_interval`` (points of one topic coalesced to the last few), through a bounded buffer
per page (:mod:`labbridge.web.pages`). A page that cannot keep up is disconnected (it
reconnects and gets a fresh snapshot) rather than letting memory grow, and the slots are
fair: a connection that is not a page (never says hello) or has gone idle gives its slot to
a newcomer.

Access (issue 12; ADR 0134; docs/web.md "Log in"): every request's ``Host`` must be an
allowed name (DNS rebinding), a browser's ``Origin`` on a POST or the WebSocket must be the
page's own, and a visitor is a :class:`~labbridge.access.Principal` of the node's gate
(``transport="web"``, the identity of a login or a token). Without a login the page is
read-only whatever the address (at most observer: a browser on this machine can be driven by
any page it has open). Reads need observer; every state-changing request carries the
session's CSRF token.

Control is off unless the config turns it on; every control request -- allowed, refused or
rejected because control is off -- goes through :meth:`WebDashboard._control` (the one place
where a network request becomes a device action: the gate checks and audits it there), and
is logged with the client's address and user. The events panel shows the audit trail: this
node's gate in-process and other nodes' ``<node>.audit`` topics on the bus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from labbridge.access import DONE, FAILED, AccessDenied, Action, AuditEvent, Gate, Principal, Role
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.links.pychron.client import ErrorReply, UnknownCommand
from labbridge.protocol.png import encode_gray, stretch_to_8bit
from labbridge.protocol.telemetry.sequence import Gap
from labbridge.transport.backoff import Backoff
from labbridge.transport.tcp import abort_discarding
from labbridge.web.auth import (
    CSRF_HEADER,
    HostRules,
    LoginLimiter,
    OneTimeLogins,
    Session,
    Sessions,
    clean,
    csrf_ok,
    split_host,
    tls_context,
)
from labbridge.web.control import REFUSED, CommandTarget, ControlResult, Controls
from labbridge.web.history import RecorderHistory
from labbridge.web.pages import EVICT, REFUSE, Page, Slots
from labbridge.web.state import AlarmRule, LabState, split_topic, timestamp

log = logging.getLogger(__name__)

#: What a node kind may take from here (ADR 0070: the web face's one entry point for node).
__all__ = ["AlarmRule", "CameraSource", "WebConfig", "WebDashboard", "png_gray", "split_host",
           "tls_context"]

STATIC = Path(__file__).parent / "static"

#: Largest control request body, and largest message a page may send (bytes).
MAX_BODY = 4096
#: Points of one topic kept per push batch (older ones in the same batch are dropped; the
#: page's history is refreshed from the recorder on reload).
POINTS_PER_BATCH = 10
#: Events in a page's first snapshot (the page shows at most 200).
HELLO_EVENTS = 200
#: Close codes the page's script understands.
CLOSE_SLOW = 1013  # try again later: it reconnects at once to a fresh snapshot
CLOSE_EVICTED = 4001  # its slot went to a newcomer: it waits before reconnecting
CLOSE_NO_HELLO = 4002
CLOSE_FLOOD = 1008
CLOSE_SESSION = 4003  # the page's session ended (logout, expiry): it asks who it is again
#: Identical refusals without credentials (a foreign Host, Origin, no login) from one
#: address are audited once per this many seconds (a flood must not flood the audit trail).
#: Longest password or token looked at (the scrypt cost grows with it).
MAX_SECRET = 1024
#: Password checks waiting at once, all addresses together; more get 503 (scrypt is slow on
#: purpose: a burst must not queue minutes of work).
MAX_LOGINS_WAITING = 16
#: What the page may load and where it may connect: only itself. No framing (clickjacking).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")


@dataclass
class CameraSource:
    """A device of the dashboard's own node with ``grab()`` (a Camera, or the
    ``remote_detector`` of a ``pymodaq_server``): its first 2-D array is shown every
    ``every`` seconds as the latest frame of ``topic``."""

    device: Any
    topic: str
    every: float = 1.0
    timeout: float = 10.0


@dataclass
class WebConfig:
    """Settings of one dashboard (node-file keys of ``web_dashboard``, docs/web.md)."""

    host: str = "127.0.0.1"
    port: int = 8080
    title: str = "labbridge"
    #: The dashboard's own node (its local cameras' frames are this process: always live).
    node: str = ""
    subscribe: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=lambda: [""])
    command_servers: list[CommandTarget] = field(default_factory=list)
    control: bool = False
    recorder: Path | None = None
    stale_after: float = 10.0
    disconnect_after: float | None = None  # default 3 x stale_after
    #: ``{node: {"stale_after": s, "disconnect_after": s}}`` overrides.
    node_limits: dict[str, dict[str, float]] = field(default_factory=dict)
    history_minutes: float = 10.0
    push_interval: float = 0.05
    max_clients: int = 64
    max_per_address: int = 16
    #: Seconds between the page's pings; a page silent for 3 of them is idle.
    ping_interval: float = 10.0
    #: A connection must say hello within this many seconds.
    hello_timeout: float = 5.0
    client_queue: int = 256
    client_bytes: int = 4 * 1024 * 1024
    layout: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: ``{node: {"valves": {name: [x, y]}, "gauges": {...}, "parts": {...},
    #: "pipes": [[name, ...], ...]}}`` (docs/web.md).
    schematic: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``{topic or prefix ending in '.': units}``: units for nodes without metadata.
    units: dict[str, str] = field(default_factory=dict)
    alarms: list[AlarmRule] = field(default_factory=list)
    #: Topics (or prefixes ending in '.') not to plot.
    hide: list[str] = field(default_factory=list)
    cameras: list[CameraSource] = field(default_factory=list)
    #: Names (or addresses) the page may be asked for besides loopback and ``host``.
    allowed_hosts: list[str] = field(default_factory=list)
    #: Whole origins (``https://lab.example.org``) of pages served through another address.
    allowed_origins: list[str] = field(default_factory=list)
    #: Serve the page over HTTPS with this context (:func:`tls_context`).
    ssl_context: ssl.SSLContext | None = None
    #: A session ends this long after its last deliberate use, and this long after login.
    session_idle: float = 3600.0
    session_lifetime: float = 12 * 3600.0
    max_sessions: int = 256
    #: Failed logins per minute from one address before logins from it are refused.
    login_attempts: int = 10
    #: ``{identity: "sha256$..."}``: login links that work once.
    one_time_logins: dict[str, str] = field(default_factory=dict)
    #: Where used one-time links are remembered (a restart does not revive them).
    used_logins_file: Path | None = None

    @property
    def disconnect(self) -> float:
        return self.disconnect_after if self.disconnect_after is not None \
            else 3.0 * self.stale_after

    def limits(self) -> dict[str, tuple[float, float]]:
        out = {}
        for node, lim in self.node_limits.items():
            stale = float(lim.get("stale_after", self.stale_after))
            out[node] = (stale, float(lim.get("disconnect_after", 3.0 * stale)))
        return out


@dataclass(frozen=True)
class Visitor:
    """Who sent a request: the gate's principal, its role on this page, and how it proved
    an identity (its session, or a Bearer token), if it did."""

    principal: Principal
    role: Role
    session: Session | None = None
    how: str = ""

    @property
    def identity(self) -> str | None:
        return self.principal.identity


class WebDashboard:
    """See the module docstring."""

    def __init__(self, config: WebConfig, *, name: str = "web",
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 resolve: Callable[[str], str] | None = None,
                 gate: Gate | None = None) -> None:
        self.config = config
        self.name = name
        #: The node's gate: roles, checks and the audit trail (docs/adr/0100).
        self.gate = gate if gate is not None else Gate(node=config.node)
        self.sessions = Sessions(max_sessions=config.max_sessions, idle=config.session_idle,
                                 lifetime=config.session_lifetime)
        self.limiter = LoginLimiter(attempts=config.login_attempts, window=60.0)
        self.one_time = OneTimeLogins(config.one_time_logins, config.used_logins_file)
        self.hosts = HostRules.build(config.host, config.allowed_hosts, config.allowed_origins)
        self.cookie_name = "labbridge"
        self._password_checks = asyncio.Semaphore(2)
        self._logins_waiting = 0
        self._remove_sink: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._own_audit = f"{self.gate.node}.audit" if self.gate.node else ""
        self.clock = clock
        self.monotonic = monotonic
        #: Turns a ``subscribe`` entry into a ZeroMQ URL at start (service names -> URLs).
        self.resolve = resolve or (lambda s: s)
        self.state = LabState(window=config.history_minutes * 60.0, layout=config.layout,
                              started=clock(), stale_after=config.stale_after,
                              disconnect_after=config.disconnect,
                              node_limits=config.limits(), units=config.units,
                              alarms=config.alarms, hide=config.hide)
        self.controls = Controls(config.command_servers)
        for node in self.controls.targets:
            self.state.expect(node)
        self.slots = Slots(max_pages=config.max_clients,
                           max_per_address=config.max_per_address,
                           idle_after=3.0 * config.ping_interval)
        self.subscribers: list[Subscriber] = []
        self.pages: set[Page] = set()
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: set[asyncio.Task[None]] = set()
        #: Set (and replaced) whenever a page joins, leaves or says hello.
        self._pages_changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._history = RecorderHistory(config.recorder) if config.recorder else None
        self._png: dict[str, tuple[int, bytes]] = {}
        self._resync_wanted: set[str] = set()
        self._resync_event = asyncio.Event()
        self._refusing = False
        self.port: int | None = None
        self.control_log: list[dict[str, Any]] = []
        self.evictions = 0
        self.app = self._make_app()

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.config.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.state.started = self.clock()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.hosts = HostRules.build(self.config.host, self.config.allowed_hosts,
                                     self.config.allowed_origins)
        for ev in list(self.gate.recent):  # what this node's gate saw before the page started
            self._show_audit(ev.to_json())
        self._remove_sink = self.gate.add_sink(self._on_audit)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{self.name}-history")
        try:
            for entry in self.config.subscribe:
                url = self.resolve(entry)
                sub = Subscriber(url, self.config.topics, name=f"{self.name} <- {url}")
                sub.add_listener(self._listener(url))
                sub.add_gap_listener(self._on_gap)
                await sub.start()
                self.subscribers.append(sub)
            runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, self.config.host, self.config.port,
                               ssl_context=self.config.ssl_context)
            await site.start()
            self._runner = runner
            addrs = runner.addresses
            self.port = int(addrs[0][1]) if addrs else self.config.port
            # Cookies are not kept apart by port: one name per dashboard of this machine.
            # With TLS, the __Host- prefix makes the browser insist on Secure and Path=/.
            self.cookie_name = (("__Host-" if self.config.ssl_context is not None else "")
                                + f"labbridge-{self.port}")
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(self._flush_loop(), name=f"{self.name}-push"))
        self._tasks.append(asyncio.create_task(self._health_loop(),
                                               name=f"{self.name}-health"))
        if self._history is not None:
            self._tasks.append(asyncio.create_task(self._seed_from_recorder(),
                                                   name=f"{self.name}-seed"))
        for cam in self.config.cameras:
            self._tasks.append(asyncio.create_task(self._camera_loop(cam),
                                                   name=f"{self.name}-camera-{cam.topic}"))
        if self.config.command_servers:
            self._resync_wanted.update(self.controls.targets)
            self._resync_event.set()
            self._tasks.append(asyncio.create_task(self._resync_loop(),
                                                   name=f"{self.name}-resync"))
        log.info("%s: dashboard at %s (control %s)", self.name, self.url,
                 "ON" if self.config.control else "off")
        if split_host(self.config.host) is not None and self.config.host in ("0.0.0.0", "::") \
                and not self.config.allowed_hosts:
            log.warning("%s: listening on %s, but only loopback names are allowed hosts: a "
                        "browser on another computer is refused (421) until allowed_hosts "
                        "lists the name or address it uses for this machine", self.name,
                        self.config.host)

    async def stop(self) -> None:
        if self._remove_sink is not None:
            self._remove_sink()
            self._remove_sink = None
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for page in list(self.pages):
            self._drop(page, 1001, "server stopping")
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for sub in self.subscribers:
            await sub.stop()
        self.subscribers.clear()
        await self.controls.close()
        if self._executor is not None:
            if self._history is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor,
                                                                 self._history.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _touch_pages(self) -> None:
        self._pages_changed.set()
        self._pages_changed = asyncio.Event()

    async def wait_pages(self, predicate: Callable[[set[Page]], bool],
                         timeout: float = 10.0) -> None:
        """Wait (at most ``timeout`` seconds) until ``predicate(pages)`` holds; for tests
        and supervisors (an event per change, no polling)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.pages):
                await self._pages_changed.wait()

    async def wait_closed_pages(self) -> None:
        """Wait until every dropped page's socket is closed (or aborted)."""
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)

    # -- bus -----------------------------------------------------------------------------
    def _listener(self, source: str) -> Callable[[str, Any, MessageMeta], None]:
        def on_message(topic: str, payload: Any, meta: MessageMeta) -> None:
            if meta.legacy:  # the envelope form carries the same news
                return
            if topic == self._own_audit:  # this node's gate is heard in-process
                return
            # a source clock that says NaN (or 1e300) must not reach the page: receive time
            ts = timestamp(meta.ts, meta.received)
            self.push_all(self.state.on_message(topic, payload, ts, received=meta.received,
                                                source=source, gap=meta.gap))

        return on_message

    def _on_gap(self, gap: Gap) -> None:
        node = split_topic(gap.topic)[0]
        if self.controls.has(node):
            self._resync_wanted.add(node)
            self._resync_event.set()

    def push_all(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.push(item)

    def push(self, item: dict[str, Any]) -> None:
        if not self.pages:
            return
        self._pending.append(item)
        if len(self._pending) > 20_000:  # nobody is draining: keep the newest
            del self._pending[:10_000]
        self._wake.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            items, self._pending = self._pending, []
            if items:
                self._broadcast(_dumps({"type": "batch", "items": _coalesce(items)}))
            # Rate limit: at most one batch per push_interval per page.
            await asyncio.sleep(self.config.push_interval)

    def _broadcast(self, text: str) -> None:
        for page in list(self.pages):
            if page.closing or page.ws is None:
                continue
            if not page.offer(text):
                log.warning("%s: page %s is too slow (%d bytes waiting); disconnecting it",
                            self.name, page.peer, page.queued_bytes)
                self._drop(page, CLOSE_SLOW, "too slow; reconnect")

    def nodes_json(self) -> list[dict[str, Any]]:
        return self.state.health(self.clock())

    async def _health_loop(self) -> None:
        limits = [self.config.stale_after] + [s for s, _ in self.config.limits().values()]
        period = max(0.05, min(1.0, min(limits) / 4.0))
        while True:
            self.push_all(self.state.check_health(self.clock()))
            if self.pages:
                self._broadcast(_dumps({"type": "health", "now": self.clock(),
                                        "nodes": self.nodes_json()}))
            self._close_silent_newcomers()
            for ended in self.sessions.expire(self.monotonic()):
                log.info("%s: the session of %s ended (idle or too old)", self.name,
                         ended.identity)
                self._end_pages(ended.id, "session ended: log in again")
            await asyncio.sleep(period)

    async def _resync_loop(self) -> None:
        """Read valve states from the command servers at start and after a bus gap; retry
        with backoff while a node is unreachable."""
        backoff = Backoff(initial=0.2, maximum=10.0)
        while True:
            await self._resync_event.wait()
            self._resync_event.clear()
            failed: set[str] = set()
            for node in sorted(self._resync_wanted):
                self._resync_wanted.discard(node)
                try:
                    valves = await self.controls.read_valves(node)
                except (ErrorReply, UnknownCommand) as exc:
                    # The node answers but has no valves (a furnace-only node): done.
                    log.info("%s: %s has no valves to show (%s)", self.name, node, exc)
                    continue
                except Exception as exc:
                    log.info("%s: cannot read valves of %s yet: %s", self.name, node, exc)
                    failed.add(node)
                    continue
                for vname, v in valves.items():
                    item = self.state.set_valve(node, vname, state=bool(v["state"]),
                                                locked=bool(v["locked"]),
                                                owner=str(v["owner"]))
                    if item is not None:
                        self.push(item)
            if failed:
                self._resync_wanted |= failed
                await asyncio.sleep(backoff.next())
                self._resync_event.set()
            else:
                backoff.reset()

    async def _camera_loop(self, cam: CameraSource) -> None:
        """Grab a frame every ``cam.every`` seconds; an outage is logged once, not per try."""
        failing = False
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow stop()'s
                # cancellation when the grab completes at the same moment
                async with asyncio.timeout(cam.timeout):
                    result = await cam.device.grab()
                arrays = result if isinstance(result, list | tuple) else [result]
                frame = next((a for a in arrays if getattr(a, "ndim", 0) == 2), None)
                if frame is None:
                    raise ValueError("the device returned no 2-D array")
            except Exception as exc:
                if not failing:
                    log.info("%s: no frame from %s yet: %s", self.name, cam.topic, exc)
                failing = True
            else:
                failing = False
                self.push_all(self.state.set_frame(cam.topic, self.clock(), frame))
            await asyncio.sleep(cam.every)

    # -- history -------------------------------------------------------------------------
    async def _in_history_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _seed_from_recorder(self) -> None:
        """Learn from the recording what happened before the dashboard started: the devices'
        metadata (units at once) and the series of the window (so a page loads their
        history although the dashboard has not heard them live yet)."""
        assert self._history is not None
        now = self.clock()
        since = now - max(self.state.window, 600.0)
        try:
            metas = await self._in_history_thread(self._history.latest_meta, since)
            # the series of the window (a record's fields are series of their own)
            recorded = await self._in_history_thread(
                self._history.series, None, now - self.state.window, now + 60.0, 2)
        except Exception as exc:  # a locked or damaged file: live data still flows
            log.warning("%s: cannot read %s: %s", self.name, self.config.recorder, exc)
            return
        for topic, t, value in metas:
            node, device, _ = split_topic(topic)
            if (node, device) not in self.state.meta:
                self.push_all(self.state.set_meta(node, device, value, t))
        for topic in sorted(recorded):
            self.push_all(self.state.ensure_series(topic))

    async def history_all(self, minutes: float, max_points: int = 1000) -> dict[str, Any]:
        """Every series' points of the last ``minutes`` (recorder when configured, else the
        dashboard's memory), at most ``max_points`` each."""
        now = self.clock()
        since = now - minutes * 60.0
        wanted = sorted(self.state.series)
        out: dict[str, list[list[float]]] | None = None
        if self._history is not None and self._executor is not None:
            try:
                out = await self._in_history_thread(self._history.series, wanted, since,
                                                    now + 60.0, max_points)
            except Exception as exc:  # a locked or damaged file: fall back to memory
                log.warning("%s: history from %s failed: %s", self.name,
                            self.config.recorder, exc)
        source = "recorder"
        if out is None:
            source = "memory"
            out = {t: _decimate(self.state.history(t, since), max_points)
                   for t in self.state.series}
        series: dict[str, list[list[float]]] = {}
        for topic, points in out.items():
            target = self.state.aliases.get(topic, topic)
            if self.state.hidden(target) or not points:
                continue
            if len(series) >= self.state.max_series and target not in series:
                break
            series.setdefault(target, []).extend(points)
        return {"since": since, "source": source, "series": series}

    async def history(self, topic: str, minutes: float, max_points: int = 2000) -> dict[
            str, Any]:
        since = self.clock() - minutes * 60.0
        points: list[list[float]] | None = None
        source = "recorder"
        if self._history is not None and self._executor is not None:
            try:
                got = await self._in_history_thread(self._history.series, [topic], since,
                                                    self.clock() + 60.0, max_points)
                points = got.get(topic, [])
            except Exception as exc:  # a locked or damaged file: fall back to memory
                log.warning("%s: history of %s from %s failed: %s", self.name, topic,
                            self.config.recorder, exc)
        if points is None:
            points = _decimate(self.state.history(topic, since), max_points)
            source = "memory"
        return {"topic": topic, "since": since, "source": source, "points": points}

    # -- HTTP ----------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/login", self._login_page)
        app.router.add_get("/api/session", self._api_session)
        app.router.add_post("/api/login", self._api_login)
        app.router.add_post("/api/logout", self._api_logout)
        app.router.add_get("/api/config", self._api_config)
        app.router.add_get("/api/nodes", self._api_nodes)
        app.router.add_get("/api/devices", self._api_devices)
        app.router.add_get("/api/history", self._api_history)
        app.router.add_get("/api/events", self._api_events)
        app.router.add_get("/api/frame", self._api_frame)
        app.router.add_get("/ws", self._ws)
        app.router.add_post("/api/control/valve", self._control_valve)
        app.router.add_post("/api/control/setpoint", self._control_setpoint)
        app.router.add_static("/static/", STATIC, show_index=False)
        return app

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html",
                                headers={"Cache-Control": "no-cache"})

    # -- access (issue 12; ADR 0134) -----------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """Every request, the WebSocket's included: its Host must be an allowed name."""
        host = request.headers.get("Host")
        if not self.hosts.host_allowed(host):
            self._refuse_quietly(self._anonymous(request),
                                 Action(Role.OBSERVER, "request", clean(request.path)),
                                 f"Host {clean(host)!r} is not an allowed name of this "
                                 "dashboard (allowed_hosts)")
            return _error(421, f"this dashboard does not answer to the name {clean(host)!r}: "
                               "list it in allowed_hosts of its web_dashboard service")
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Content-Security-Policy", CSP)
        if request.path.startswith("/api/") or request.path == "/login":
            h.setdefault("Cache-Control", "no-store")

    def _anonymous(self, request: web.Request) -> Principal:
        return Principal(_peer(request)[1], self.name, "web")

    def _visitor(self, request: web.Request) -> Visitor | web.Response:
        """Who asks: a Bearer token's identity, else the session's, else the address (at
        most observer on a web page). A wrong token is a 401 (audited), never a downgrade."""
        address = _peer(request)[1]
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, token = auth.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return _unauthorized("use Authorization: Bearer <token> (or log in)")
            action = Action(Role.OBSERVER, "login", "token")
            refusal = self._limited(request, action)
            if refusal is not None:
                return refusal
            ident = (self.gate.policy.check_token(token) if len(token) <= MAX_SECRET
                     else None)
            if ident is None:
                self.limiter.failed(address, self.monotonic())
                self.gate.refuse(self._anonymous(request), action, "unknown token")
                return _unauthorized("unknown token")
            p = Principal(address, self.name, "web", ident.name)
            return Visitor(p, self.gate.role_of(p), None, "token")
        s = self.sessions.get(request.cookies.get(self.cookie_name), self.monotonic())
        if s is not None:
            p = Principal(address, self.name, "web", s.identity)
            return Visitor(p, self.gate.role_of(p), s, "session")
        anon = self._anonymous(request)
        return Visitor(anon, min(self.gate.role_of(anon), Role.OBSERVER))

    def _reader(self, request: web.Request) -> Visitor | web.Response:
        """The visitor if it may read the dashboard (observer), else a 401 (audited)."""
        v = self._visitor(request)
        if isinstance(v, web.Response) or v.role >= Role.OBSERVER:
            return v
        self._refuse_quietly(v.principal, Action(Role.OBSERVER, "read", clean(request.path)),
                             f"{v.principal.who} may not see this dashboard without a login")
        return _unauthorized("log in to see this dashboard")

    def _refuse_quietly(self, principal: Principal, action: Action, reason: str) -> None:
        """Audit a refusal made here (no credentials, wrong Host, Origin or CSRF token); the
        gate audits repeats of one refusal once a minute, with their count."""
        self.gate.refuse(principal, action, reason, self.gate.role_of(principal))

    def _limited(self, request: web.Request, action: Action) -> web.Response | None:
        """A 429 when the address has failed to log in too often (audited once)."""
        address = _peer(request)[1]
        wait, first = self.limiter.blocked(address, self.monotonic())
        if not wait:
            return None
        if first:
            self.gate.refuse(self._anonymous(request), action,
                             f"too many failed logins from {address}: refused for "
                             f"{wait:.0f} s")
        return web.json_response({"error": f"too many failed logins; try again in "
                                           f"{math.ceil(wait)} s"}, status=429,
                                 headers={"Retry-After": str(math.ceil(wait))})

    def _foreign(self, request: web.Request, action: Action) -> web.Response | None:
        """A 403 (audited) when a browser says the request comes from another page."""
        origin = request.headers.get("Origin")
        if origin is None or self.hosts.origin_allowed(origin, request.headers.get("Host")):
            return None
        s = self.sessions.get(request.cookies.get(self.cookie_name), self.monotonic())
        p = self._anonymous(request)
        if s is not None:  # name the user whose browser was used
            p = Principal(p.address, self.name, "web", s.identity)
        self._refuse_quietly(p, action, f"sent by a page of another site ({clean(origin)})")
        return _error(403, "requests from other sites' pages are refused")

    def _same_site(self, request: web.Request, action: Action,
                   who: Callable[[web.Request], Visitor | web.Response]
                   ) -> Visitor | web.Response:
        """The checks of a state-changing request from a page, in order: its Origin, who
        asks (``who``: the visitor, or a reader that answers 401 for nobody), its session's
        CSRF token. The visitor, or the refusal to send."""
        refusal = self._foreign(request, action)
        if refusal is not None:
            return refusal
        v = who(request)
        if isinstance(v, web.Response):
            return v
        refusal = self._csrf(request, v, action)
        return v if refusal is None else refusal

    def _csrf(self, request: web.Request, v: Visitor, action: Action) -> web.Response | None:
        """A 403 (audited) when a session's state-changing request lacks its CSRF token."""
        if v.session is None or csrf_ok(v.session, request.headers.get(CSRF_HEADER)):
            return None
        self._refuse_quietly(v.principal, action, "missing or wrong CSRF token")
        return _error(403, f"missing or wrong CSRF token ({CSRF_HEADER}): reload the page")

    def you(self, v: Visitor) -> dict[str, Any]:
        """What a page may know about its visitor."""
        return {"identity": v.identity, "role": v.role.label,
                "can_control": self.config.control and v.role >= Role.OPERATOR}

    async def _api_session(self, request: web.Request) -> web.Response:
        v = self._visitor(request)
        if isinstance(v, web.Response):
            return v
        if v.session is not None:  # a page load is a deliberate use
            self.sessions.touch(v.session, self.monotonic())
        policy = self.gate.policy
        return web.json_response({
            **self.you(v), "title": self.config.title,
            "csrf": v.session.csrf if v.session is not None else None,
            "expired": v.how == "" and bool(request.cookies.get(self.cookie_name)),
            "login": any(i.password or i.token for i in policy.identities.values()),
            "tls": self.config.ssl_context is not None})

    def _cookie(self, resp: web.StreamResponse, session: Session | None) -> None:
        secure = self.config.ssl_context is not None
        if session is None:
            resp.del_cookie(self.cookie_name, path="/", secure=secure, httponly=True,
                            samesite="Strict")
        else:
            resp.set_cookie(self.cookie_name, session.id, path="/", secure=secure,
                            httponly=True, samesite="Strict",
                            max_age=int(self.config.session_lifetime))

    def _start_session(self, request: web.Request, identity: str, how: str) -> Session:
        address = _peer(request)[1]
        old = self.sessions.end(request.cookies.get(self.cookie_name) or "")
        if old is not None:
            self._end_pages(old.id, "logged in again")
        s, evicted = self.sessions.create(identity, address, how, self.monotonic())
        for e in evicted:
            log.info("%s: the session of %s ends: %d sessions at most", self.name, e.identity,
                     self.sessions.max_sessions)
            self._end_pages(e.id, "too many sessions: log in again")
        principal = Principal(address, self.name, "web", identity)
        role = self.gate.role_of(principal)
        self.gate.audit(principal, "login", "session", reason=f"by {how}")
        self.push(self.state.add_event("info", self.gate.node or self.name,
                                       f"{identity} logged in from {address} as {role.label}",
                                       self.clock(), kind="session", who=identity))
        return s

    async def _api_login(self, request: web.Request) -> web.Response:
        """``{"user", "password"}`` or ``{"token"}`` -> a session cookie, or 401 (audited
        with the name, never the password) / 429 after too many failures."""
        refusal = self._foreign(request, Action(Role.OBSERVER, "login", ""))
        if refusal is not None:
            return refusal
        body = await self._read_json(request, ())
        if isinstance(body, web.Response):
            return body
        user, password, token = body.get("user"), body.get("password"), body.get("token")
        if token is not None:
            if not isinstance(token, str):
                return _error(400, 'send {"user": ..., "password": ...} or {"token": ...}')
            action = Action(Role.OBSERVER, "login", "token")
        elif isinstance(user, str) and isinstance(password, str):
            action = Action(Role.OBSERVER, "login", clean(user, 64))
        else:
            return _error(400, 'send {"user": ..., "password": ...} or {"token": ...}')
        refusal = self._limited(request, action)
        if refusal is not None:
            return refusal
        policy = self.gate.policy
        address = _peer(request)[1]
        if token is not None:
            ident = policy.check_token(token) if len(token) <= MAX_SECRET else None
            how, why = "token", "unknown token"
            if ident is None:
                self.limiter.failed(address, self.monotonic())
        else:
            assert isinstance(user, str) and isinstance(password, str)
            if self._logins_waiting >= MAX_LOGINS_WAITING:
                return web.json_response({"error": "too many logins at once; try again"},
                                         status=503, headers={"Retry-After": "1"})
            # Counted before the check, so that a burst from one address cannot queue more
            # checks than it may fail; taken back if the password is right.
            self.limiter.failed(address, self.monotonic())
            ident = None
            if len(password) <= MAX_SECRET and len(user) <= 256:
                self._logins_waiting += 1
                try:
                    async with self._password_checks:  # scrypt: off the loop, two at a time
                        ident = await asyncio.get_running_loop().run_in_executor(
                            None, policy.check_password, user, password)
                finally:
                    self._logins_waiting -= 1
            if ident is not None:
                self.limiter.forgive(address)
            how, why = "password", "wrong user name or password"
        if ident is None:  # every failure audited: the limiter bounds their rate
            self.gate.refuse(self._anonymous(request), action, why, every=True)
            return _unauthorized(why)
        s = self._start_session(request, ident.name, how)
        resp = web.json_response({"ok": True, "identity": ident.name,
                                  "role": ident.role.label})
        self._cookie(resp, s)
        return resp

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        """``/login``: the page (it opens its login form); ``/login?once=TOKEN``: a one-time
        login link, then the page (``/login#used`` when the link is used up or wrong)."""
        token = request.query.get("once")
        if token is None:
            return await self._index(request)
        action = Action(Role.OBSERVER, "login", "one-time link")
        refusal = self._limited(request, action)
        if refusal is not None:
            return refusal
        ident = self.one_time.take(token) if len(token) <= MAX_SECRET else None
        if ident is None:
            self.limiter.failed(_peer(request)[1], self.monotonic())
            self.gate.refuse(self._anonymous(request), action,
                             "one-time login link already used or unknown")
            return _see_other("/login#used")
        s = self._start_session(request, ident, "link")
        resp = _see_other("/")
        self._cookie(resp, s)
        return resp

    async def _api_logout(self, request: web.Request) -> web.Response:
        v = self._same_site(request, Action(Role.OBSERVER, "logout", ""), self._visitor)
        if isinstance(v, web.Response):
            return v
        if v.session is not None:
            self.sessions.end(v.session.id)
            self._end_pages(v.session.id, "logged out")
            self.gate.audit(v.principal, "logout", "session")
            self.push(self.state.add_event("info", self.gate.node or self.name,
                                           f"{v.session.identity} logged out",
                                           self.clock(), kind="session",
                                           who=v.session.identity))
        resp = web.json_response({"ok": True})
        self._cookie(resp, None)
        return resp

    def _end_pages(self, sid: str, reason: str) -> None:
        for page in list(self.pages):
            if page.session == sid:
                self._drop(page, CLOSE_SESSION, reason)

    # -- the audit trail on the page -------------------------------------------------------
    def _on_audit(self, event: AuditEvent) -> None:
        """The gate's sink: may be called from another thread (an EPICS IOC's)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            self._show_audit(event.to_json())
        else:
            loop.call_soon_threadsafe(self._show_audit, event.to_json())

    def _show_audit(self, event: dict[str, Any]) -> None:
        if event.get("verb") in ("login", "logout") and event.get("outcome") == "done":
            return  # shown as the session event _start_session / logout pushes
        node = str(event.get("node") or self.gate.node or self.name)
        self.push_all(self.state.on_audit(node, event, self.clock()))

    def config_json(self) -> dict[str, Any]:
        c = self.config
        return {"title": c.title, "node": c.node, "control": c.control,
                "stale_after": c.stale_after,
                "disconnect_after": c.disconnect, "history_minutes": c.history_minutes,
                "command_nodes": sorted(self.controls.targets), "hide": c.hide,
                "recorder": c.recorder is not None, "ping_interval": c.ping_interval,
                "schematic": c.schematic,
                "alarms": [{"topic": a.topic, "level": a.level, "above": a.above,
                            "below": a.below} for a in c.alarms]}

    async def _api_config(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        return web.json_response(self.config_json(), dumps=_dumps)

    async def _api_nodes(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        return web.json_response({"now": self.clock(), "nodes": self.nodes_json()},
                                 dumps=_dumps)

    def devices_json(self) -> dict[str, Any]:
        return self.state.devices()

    async def _api_devices(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        return web.json_response(self.devices_json(), dumps=_dumps)

    async def _api_history(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        topic = request.query.get("topic", "")
        try:
            minutes = float(request.query.get("minutes", self.config.history_minutes))
            max_points = int(request.query.get("max_points", 2000 if topic else 1000))
        except ValueError:
            return _error(400, "minutes and max_points must be numbers")
        if not (0 < minutes <= 7 * 24 * 60 and math.isfinite(minutes)):
            return _error(400, "minutes must be in (0, 10080]")
        max_points = min(max(max_points, 2), 20_000 if topic else 5_000)
        if not topic:
            return web.json_response(await self.history_all(minutes, max_points),
                                     dumps=_dumps)
        return web.json_response(await self.history(topic, minutes, max_points), dumps=_dumps)

    async def _api_events(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        return web.json_response({"events": list(self.state.events)}, dumps=_dumps)

    async def _api_frame(self, request: web.Request) -> web.Response:
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        topic = request.query.get("topic", "")
        frame = self.state.frames.get(topic)
        if frame is None:
            return _error(404, "no frame on that topic")
        cached = self._png.get(topic)
        if cached is not None and cached[0] == frame.count:
            png = cached[1]
        else:
            png = await self._in_history_thread(png_gray, frame.array)
            self._png[topic] = (frame.count, png)
        return web.Response(body=png, content_type="image/png",
                            headers={"Cache-Control": "no-store",
                                     "X-Frame-Count": str(frame.count)})

    # -- WebSocket -----------------------------------------------------------------------
    def hello(self, you: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"type": "hello", "now": self.clock(), "config": self.config_json(),
                "you": you or {},
                "nodes": self.nodes_json(), "devices": self.devices_json(),
                "events": list(self.state.events)[-HELLO_EVENTS:]}

    def _admit(self, address: str, peer: str) -> web.Response | None:
        """Make room for a newcomer (evicting a page that is not one, or is idle or
        stalled), or refuse it when every page is active (issue 13: fair slots)."""
        verdict, victim, why = self.slots.choose(self.pages, address, self.monotonic())
        if verdict == REFUSE:
            if not self._refusing:  # one line per state change, not per refusal
                log.warning("%s: refusing new pages: %s", self.name, why)
            self._refusing = True
            return _error(503, f"the dashboard is full ({why}); try again later")
        if self._refusing:
            log.info("%s: accepting new pages again", self.name)
        self._refusing = False
        if verdict == EVICT and victim is not None:
            self.evictions += 1
            log.info("%s: page %s gives its slot to %s: %s", self.name, victim.peer, peer, why)
            self._drop(victim, CLOSE_EVICTED, "replaced by a newer page: dashboard full")
        return None

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        peer, address = _peer(request)
        refusal = self._foreign(request, Action(Role.OBSERVER, "watch", "/ws"))
        if refusal is not None:
            return refusal
        who = self._reader(request)
        if isinstance(who, web.Response):
            return who
        refusal = self._admit(address, peer)
        if refusal is not None:
            return refusal
        now = self.monotonic()
        page = Page(peer, address, now, max_bytes=self.config.client_bytes,
                    max_messages=self.config.client_queue, transport=request.transport,
                    session=who.session.id if who.session is not None else None)
        self.pages.add(page)  # the slot is taken before the first await
        self._touch_pages()
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY)
        sender: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            page.ws = ws
            page.offer(_dumps(self.hello(self.you(who))), first=True)
            sender = asyncio.create_task(self._send_loop(page), name=f"{self.name}-ws-send")
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                if not page.count_message(self.monotonic(), 20):
                    log.warning("%s: page %s sends too much; closing it", self.name, peer)
                    self._drop(page, CLOSE_FLOOD, "too many messages")
                    break
                if msg.type == WSMsgType.TEXT:
                    kind = _page_message(msg.data)
                    if kind is not None:
                        page.heard(self.monotonic(), kind)
                        if kind == "hello":
                            self._touch_pages()
        finally:
            self.pages.discard(page)
            self._touch_pages()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
        return ws

    async def _send_loop(self, page: Page) -> None:
        while True:
            while not page.queue:
                page.wake.clear()
                await page.wake.wait()
            text = page.take()
            if text is None:
                return
            page.sending_since = self.monotonic()
            try:
                await page.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return
            finally:
                page.sending_since = None

    def _drop(self, page: Page, code: int, reason: str) -> None:
        """Take a page out now and close its socket in the background: a page that does not
        read cannot hold us (its transport is aborted if the close does not go through)."""
        if page.closing:
            return
        page.closing = True
        self.pages.discard(page)
        self._touch_pages()
        page.queue.clear()
        page.queued_bytes = 0
        page.wake.set()

        async def close() -> None:
            stuck = False
            try:
                if page.ws is not None:
                    async with asyncio.timeout(1.0):
                        await page.ws.close(code=code, message=reason.encode(), drain=False)
            except (TimeoutError, ConnectionError, RuntimeError):
                stuck = True
            finally:
                t = page.transport
                # A peer that does not read keeps our bytes (and the socket) for ever once
                # closed politely: abort instead, discarding what the kernel still holds for
                # it too (stale data it would otherwise go on receiving; ADR 0164).
                if t is not None and (stuck or page.ws is None or
                                      t.get_write_buffer_size() > 0):
                    abort_discarding(t)

        task = asyncio.create_task(close(), name=f"{self.name}-ws-close")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _close_silent_newcomers(self) -> None:
        now = self.monotonic()
        for page in list(self.pages):
            if not page.proven and page.ws is not None and \
                    now - page.joined > self.config.hello_timeout:
                log.info("%s: %s never said hello in %.0f s; closing it", self.name,
                         page.peer, self.config.hello_timeout)
                self._drop(page, CLOSE_NO_HELLO, "say hello first")

    # -- control -------------------------------------------------------------------------
    async def _read_json(self, request: web.Request,
                         fields: tuple[str, ...]) -> dict[str, Any] | web.Response:
        if request.content_type != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"a request is at most {MAX_BODY} bytes")
        except (ValueError, web.HTTPException):
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or any(f not in body for f in fields):
            return _error(400, f"expected a JSON object with {', '.join(fields)}")
        return body

    async def _read_control(self, request: web.Request, fields: tuple[str, ...]
                            ) -> tuple[Visitor, dict[str, Any]] | web.Response:
        """The checks every control request passes before its body is read: the Origin,
        who asks (401 for nobody), the session's CSRF token."""
        v = self._same_site(request, Action(Role.OPERATOR, "control", clean(request.path)),
                            self._reader)
        if isinstance(v, web.Response):
            return v
        if v.session is not None:
            self.sessions.touch(v.session, self.monotonic())
        body = await self._read_json(request, fields)
        if isinstance(body, web.Response):
            return body
        return v, body

    async def _control(self, request: web.Request, v: Visitor, action: str, target: str,
                       act: Callable[[], Awaitable[ControlResult]],
                       detail: str = "") -> web.Response:
        """THE place where a network request becomes a device action: the gate checks the
        visitor's role (operator) and audits the outcome with the user's name; refused when
        control is off or nobody logged in (audited too), and logged either way."""
        what = Action(Role.OPERATOR, action, target, detail)
        reason = ""
        if not self.config.control:
            reason = "control is off on this dashboard (control: true in its node file)"
        elif v.identity is None:
            reason = (f"{action} needs the operator role; without a login the web page is "
                      f"read-only for {v.principal.address}: log in")
        if reason:
            self._refuse_quietly(v.principal, what, reason)
            return self._answer(request, v, ControlResult(REFUSED, action, target, reason),
                                403)
        try:
            role = self.gate.check(v.principal, what)
        except AccessDenied as exc:
            return self._answer(request, v, ControlResult(REFUSED, action, target,
                                                          exc.reason), 403)
        result = await act()
        self.gate.record(v.principal, what, DONE if result.ok else FAILED, result.reason,
                         role)
        return self._answer(request, v, result)

    def _answer(self, request: web.Request, v: Visitor, result: ControlResult,
                status: int = 200) -> web.Response:
        peer, _ = _peer(request)
        entry = {"client": peer, "user": v.identity, **result.to_json(), "ts": self.clock()}
        self.control_log.append(entry)
        if len(self.control_log) > 1000:
            del self.control_log[:500]
        log.info("%s: control from %s (%s): %s %s -> %s%s", self.name, peer,
                 v.identity or "not logged in", result.action, result.target, result.outcome,
                 f" ({result.reason})" if result.reason else "")
        # The event on the page is the gate's audit event (_on_audit). A node's refusal is a
        # well-formed answer, not a failed request: 200 with the outcome in the body
        # (ADR 0072); 4xx are for malformed or disallowed requests.
        return web.json_response(result.to_json(), status=status)

    async def _control_valve(self, request: web.Request) -> web.Response:
        got = await self._read_control(request, ("node", "valve", "action"))
        if isinstance(got, web.Response):
            return got
        v, body = got
        node, valve, action = str(body["node"]), str(body["valve"]), str(body["action"])
        return await self._control(request, v, clean(action, 32), clean(f"{node}/{valve}"),
                                   lambda: self.controls.valve(node, valve, action))

    async def _control_setpoint(self, request: web.Request) -> web.Response:
        got = await self._read_control(request, ("node", "value"))
        if isinstance(got, web.Response):
            return got
        v, body = got
        node, device = str(body["node"]), str(body.get("device") or "")
        try:
            value = float(body["value"])
        except (TypeError, ValueError):
            return _error(400, "value must be a number")
        return await self._control(request, v, "setpoint", clean(f"{node}/{device}"),
                                   lambda: self.controls.setpoint(node, device, value),
                                   detail=f"{value:g}")


# -- helpers ---------------------------------------------------------------------------------
def _peer(request: web.Request) -> tuple[str, str]:
    """``("ip:port", "ip")`` of the client."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}", str(peer[0])
    remote = str(request.remote or "?")
    return remote, remote


def _page_message(data: str) -> str | None:
    """``hello`` / ``ping`` from a page's message, else None (anything else is ignored)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if kind in ("hello", "ping") else None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unauthorized(message: str) -> web.Response:
    return web.json_response({"error": message, "login": True}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="labbridge"'})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def _dumps(obj: Any) -> str:
    """Strict JSON for the pages: a bare ``NaN`` or ``Infinity`` (from one bad bus message)
    would make the browser's JSON.parse reject the whole WebSocket frame or response."""
    try:
        return json.dumps(obj, default=_json_default, allow_nan=False)
    except ValueError:  # rare: a non-finite number somewhere; null it and try again
        return json.dumps(_finite(obj), default=_json_default, allow_nan=False)


def _coalesce(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep every item except old points: at most POINTS_PER_BATCH per topic."""
    counts: dict[str, int] = {}
    keep = [True] * len(items)
    for i in range(len(items) - 1, -1, -1):
        it = items[i]
        if it.get("type") == "point":
            topic = str(it.get("topic"))
            counts[topic] = counts.get(topic, 0) + 1
            if counts[topic] > POINTS_PER_BATCH:
                keep[i] = False
    return [it for it, k in zip(items, keep, strict=True) if k]


def _decimate(points: list[list[float]], max_points: int) -> list[list[float]]:
    """Every n-th point so at most ``max_points`` remain; the last one is always kept."""
    if len(points) <= max_points:
        return points
    step = math.ceil(len(points) / max_points)
    out = points[::step]
    if out[-1] is not points[-1]:
        out[-1] = points[-1]
    return out


def png_gray(a: Any) -> bytes:
    """An 8-bit grayscale PNG of a 2-D array, scaled min..max (labbridge.protocol.png)."""
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError("a frame must be a non-empty 2-D array")
    return encode_gray(stretch_to_8bit(arr)[0])
