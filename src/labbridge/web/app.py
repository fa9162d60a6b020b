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

Control is off unless the config turns it on; every control request -- allowed, refused or
rejected because control is off -- goes through :meth:`WebDashboard._control` (the one place
where a network request becomes a device action), is logged with the client's address and
added to the event log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.links.pychron.client import ErrorReply, UnknownCommand
from labbridge.protocol.png import encode_gray, stretch_to_8bit
from labbridge.protocol.telemetry.sequence import Gap
from labbridge.transport.backoff import Backoff
from labbridge.transport.tcp import abort_discarding
from labbridge.web.control import REFUSED, CommandTarget, ControlResult, Controls
from labbridge.web.history import RecorderHistory
from labbridge.web.pages import EVICT, REFUSE, Page, Slots
from labbridge.web.state import AlarmRule, LabState, split_topic, timestamp

log = logging.getLogger(__name__)

#: What a node kind may take from here (ADR 0070: the web face's one entry point for node).
__all__ = ["AlarmRule", "CameraSource", "WebConfig", "WebDashboard", "png_gray"]

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


class WebDashboard:
    """See the module docstring."""

    def __init__(self, config: WebConfig, *, name: str = "web",
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 resolve: Callable[[str], str] | None = None) -> None:
        self.config = config
        self.name = name
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
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        if self._runner is not None:
            return
        self.state.started = self.clock()
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
            site = web.TCPSite(runner, self.config.host, self.config.port)
            await site.start()
            self._runner = runner
            addrs = runner.addresses
            self.port = int(addrs[0][1]) if addrs else self.config.port
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

    async def stop(self) -> None:
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
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/", self._index)
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
        return web.json_response(self.config_json(), dumps=_dumps)

    async def _api_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"now": self.clock(), "nodes": self.nodes_json()},
                                 dumps=_dumps)

    def devices_json(self) -> dict[str, Any]:
        return self.state.devices()

    async def _api_devices(self, request: web.Request) -> web.Response:
        return web.json_response(self.devices_json(), dumps=_dumps)

    async def _api_history(self, request: web.Request) -> web.Response:
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
        return web.json_response({"events": list(self.state.events)}, dumps=_dumps)

    async def _api_frame(self, request: web.Request) -> web.Response:
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
    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "now": self.clock(), "config": self.config_json(),
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
        refusal = self._admit(address, peer)
        if refusal is not None:
            return refusal
        now = self.monotonic()
        page = Page(peer, address, now, max_bytes=self.config.client_bytes,
                    max_messages=self.config.client_queue, transport=request.transport)
        self.pages.add(page)  # the slot is taken before the first await
        self._touch_pages()
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY)
        sender: asyncio.Task[None] | None = None
        try:
            await ws.prepare(request)
            page.ws = ws
            page.offer(_dumps(self.hello()), first=True)
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
    async def _read_control(self, request: web.Request,
                            fields: tuple[str, ...]) -> dict[str, Any] | web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            return _error(403, "cross-origin control requests are refused")
        if request.content_type != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"a control request is at most {MAX_BODY} bytes")
        except (ValueError, web.HTTPException):
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict) or any(f not in body for f in fields):
            return _error(400, f"expected a JSON object with {', '.join(fields)}")
        return body

    async def _control(self, request: web.Request, action: str, target: str,
                       act: Callable[[], Awaitable[ControlResult]]) -> web.Response:
        """THE place where a network request becomes a device action: every control
        request passes here with the client's address (where an access check belongs),
        is refused when control is off, and is logged and audited either way."""
        if not self.config.control:
            res = ControlResult(REFUSED, action, target, "control is off on this dashboard "
                                "(control: true in its node file)")
            resp = self._audit(request, res)
            resp.set_status(403)
            return resp
        return self._audit(request, await act())

    def _audit(self, request: web.Request, result: ControlResult) -> web.Response:
        peer, _ = _peer(request)
        entry = {"client": peer, **result.to_json(), "ts": self.clock()}
        self.control_log.append(entry)
        if len(self.control_log) > 1000:
            del self.control_log[:500]
        log.info("%s: control from %s: %s %s -> %s%s", self.name, peer, result.action,
                 result.target, result.outcome, f" ({result.reason})" if result.reason else "")
        level = "control" if result.ok else "refused"
        text = f"{result.action} {result.target} from {peer}: {result.outcome}"
        if result.reason:
            text += f" -- {result.reason}"
        node = result.target.split("/", 1)[0]
        self.push(self.state.add_event(level, node, text, entry["ts"], kind="control",
                                       client=peer))
        # A refusal is a well-formed answer, not a failed request: 200 with the outcome in
        # the body (ADR 0072); 4xx/5xx are kept for malformed or disallowed requests.
        return web.json_response(result.to_json())

    async def _control_valve(self, request: web.Request) -> web.Response:
        body = await self._read_control(request, ("node", "valve", "action"))
        if isinstance(body, web.Response):
            return body
        node, valve, action = str(body["node"]), str(body["valve"]), str(body["action"])
        return await self._control(request, action, f"{node}/{valve}",
                                   lambda: self.controls.valve(node, valve, action))

    async def _control_setpoint(self, request: web.Request) -> web.Response:
        body = await self._read_control(request, ("node", "value"))
        if isinstance(body, web.Response):
            return body
        node, device = str(body["node"]), str(body.get("device") or "")
        try:
            value = float(body["value"])
        except (TypeError, ValueError):
            return _error(400, "value must be a number")
        return await self._control(request, "setpoint", f"{node}/{device}",
                                   lambda: self.controls.setpoint(node, device, value))


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
