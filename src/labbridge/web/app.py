"""The web dashboard: an aiohttp app fed by the telemetry bus (issue 8; ADRs 0070-0073).

::

    dash = WebDashboard(WebConfig(subscribe=["tcp://127.0.0.1:5555"], port=0,
                                  command_servers=[CommandTarget("valve-controller",
                                                                 "127.0.0.1", 1061)]))
    await dash.start(); print(dash.url); ...; await dash.stop()

HTTP (JSON unless said otherwise):

=======================================  ==================================================
``GET /``                                 the page (static/index.html); assets under /static/
``GET /api/config``                       title, control on/off, stale threshold, window
``GET /api/nodes``                        node health: status, heartbeat age, gaps
``GET /api/devices``                      valves (state, lock, owner, layout), series, frames
``GET /api/history?topic=T[&minutes=M]``  ``[[t, v], ...]`` of T for the last M minutes,
                                          from the recorder's SQLite file when configured
``GET /api/events``                       the event log (warnings, criticals, control)
``GET /api/frame?topic=T``                latest 2-D frame of T as a grayscale PNG
``GET /ws``                               WebSocket: ``hello`` snapshot, then batches
``POST /api/control/valve``               ``{"node","valve","action":"open"|"close"}``
``POST /api/control/setpoint``            ``{"node","device","value"}``
=======================================  ==================================================

Push path: every subscriber callback folds the message into :class:`LabState`, which returns
push items; they are queued and sent to every page as one ``batch`` message per
``push_interval`` (points of one topic coalesced to the last few), through a bounded queue
per page. A page that cannot keep up is disconnected (it reconnects and gets a fresh
snapshot) rather than letting memory grow (house rule: every buffer has a limit).

Control is off unless the config turns it on; every control request -- allowed, refused or
rejected because control is off -- is logged with the client's address and added to the
event log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from labbridge.bus.recorder import RecordStore
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.links.pychron.client import ErrorReply, UnknownCommand
from labbridge.protocol.png import encode_gray, stretch_to_8bit
from labbridge.protocol.telemetry.sequence import Gap
from labbridge.transport.backoff import Backoff
from labbridge.transport.tcp import abort_discarding
from labbridge.web.control import REFUSED, CommandTarget, ControlResult, Controls
from labbridge.web.state import LabState, split_topic, timestamp

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: Largest control request body accepted (bytes).
MAX_BODY = 4096
#: Points of one topic kept per push batch (older ones in the same batch are dropped; the
#: page's history is refreshed from the recorder on reload).
POINTS_PER_BATCH = 10


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
    subscribe: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=lambda: [""])
    command_servers: list[CommandTarget] = field(default_factory=list)
    control: bool = False
    recorder: Path | None = None
    stale_after: float = 10.0
    disconnect_after: float | None = None  # default 3 x stale_after
    history_minutes: float = 10.0
    push_interval: float = 0.05
    max_clients: int = 64
    client_queue: int = 256
    layout: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Topics (or prefixes ending in '.') not to plot.
    hide: list[str] = field(default_factory=list)
    cameras: list[CameraSource] = field(default_factory=list)

    @property
    def disconnect(self) -> float:
        return self.disconnect_after if self.disconnect_after is not None \
            else 3.0 * self.stale_after


class _Page:
    """One connected WebSocket with its bounded outgoing queue."""

    def __init__(self, ws: web.WebSocketResponse, peer: str, size: int,
                 transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.peer = peer
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(size)
        self.overflowed = False
        self.transport = transport


class WebDashboard:
    """See the module docstring."""

    def __init__(self, config: WebConfig, *, name: str = "web",
                 clock: Callable[[], float] = time.time,
                 resolve: Callable[[str], str] | None = None) -> None:
        self.config = config
        self.name = name
        self.clock = clock
        #: Turns a ``subscribe`` entry into a ZeroMQ URL at start (service names -> URLs).
        self.resolve = resolve or (lambda s: s)
        self.state = LabState(window=config.history_minutes * 60.0, layout=config.layout,
                              started=clock())
        self.controls = Controls(config.command_servers)
        self.subscribers: list[Subscriber] = []
        self.pages: set[_Page] = set()
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._store: RecordStore | None = None
        self._resync_wanted: set[str] = set()
        self._resync_event = asyncio.Event()
        self.port: int | None = None
        self.control_log: list[dict[str, Any]] = []
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
            with contextlib.suppress(Exception):
                await page.ws.close(code=1001, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for sub in self.subscribers:
            await sub.stop()
        self.subscribers.clear()
        await self.controls.close()
        if self._executor is not None:
            store, self._store = self._store, None
            if store is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- bus -----------------------------------------------------------------------------
    def _listener(self, source: str) -> Callable[[str, Any, MessageMeta], None]:
        def on_message(topic: str, payload: Any, meta: MessageMeta) -> None:
            if meta.legacy:  # the envelope form carries the same news
                return
            # a source clock that says NaN (or 1e300) must not reach the page: receive time
            ts = timestamp(meta.ts, meta.received)
            for item in self.state.on_message(topic, payload, ts, received=meta.received,
                                              source=source, gaps=meta.gaps,
                                              missed=meta.missed):
                self.push(item)

        return on_message

    def _on_gap(self, gap: Gap) -> None:
        node = split_topic(gap.topic)[0]
        if self.controls.has(node):
            self._resync_wanted.add(node)
            self._resync_event.set()

    def push(self, item: dict[str, Any]) -> None:
        if item.get("type") == "point" and self._hidden(str(item.get("topic"))):
            return
        if not self.pages:
            return
        self._pending.append(item)
        if len(self._pending) > 20_000:  # nobody is draining: keep the newest
            del self._pending[:10_000]
        self._wake.set()

    def _hidden(self, topic: str) -> bool:
        return any(topic == h or (h.endswith(".") and topic.startswith(h))
                   for h in self.config.hide)

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
            if page.overflowed:
                continue
            try:
                page.queue.put_nowait(text)
            except asyncio.QueueFull:
                page.overflowed = True
                log.warning("%s: page %s is too slow; disconnecting it", self.name, page.peer)
                # Its backlog is stale, and a close frame would wait behind it (and behind
                # the kernel's buffer) on the clogged link for as long as that takes to
                # drain: throw both away and reset the connection (ADR 0164). The page
                # reconnects to a fresh hello.
                while not page.queue.empty():
                    page.queue.get_nowait()
                page.queue.put_nowait(None)
                if page.transport is not None:
                    abort_discarding(page.transport)

    def nodes_json(self) -> list[dict[str, Any]]:
        return self.state.health(self.clock(), self.config.stale_after,
                                 self.config.disconnect)

    async def _health_loop(self) -> None:
        period = max(0.05, min(1.0, self.config.stale_after / 4.0))
        while True:
            if self.pages:
                self._broadcast(_dumps({"type": "health", "now": self.clock(),
                                        "nodes": self.nodes_json()}))
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
                result = await asyncio.wait_for(cam.device.grab(), cam.timeout)
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
                self.push(self.state.set_frame(cam.topic, self.clock(), np.array(frame)))
            await asyncio.sleep(cam.every)

    # -- history -------------------------------------------------------------------------
    def _query(self, topic: str, since: float, max_points: int) -> list[list[float]] | None:
        """Runs in the history thread: points from the recorder file, None without one."""
        path = self.config.recorder
        if path is None:
            return None
        if self._store is None:
            if not path.exists():
                return None
            self._store = RecordStore(path, readonly=True)
        out: list[list[float]] = []
        for rec in self._store.query(topic, since=since):
            v = rec.number()
            if v is not None and math.isfinite(v):
                out.append([rec.time, v])
        return _decimate(out, max_points)

    async def history(self, topic: str, minutes: float, max_points: int = 2000) -> dict[
            str, Any]:
        since = self.clock() - minutes * 60.0
        points: list[list[float]] | None = None
        if self._executor is not None and self.config.recorder is not None:
            loop = asyncio.get_running_loop()
            try:
                points = await loop.run_in_executor(self._executor, self._query, topic,
                                                    since, max_points)
            except Exception as exc:  # a locked or damaged file: fall back to memory
                log.warning("%s: history of %s from %s failed: %s", self.name, topic,
                            self.config.recorder, exc)
        source = "recorder"
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
        return {"title": c.title, "control": c.control, "stale_after": c.stale_after,
                "disconnect_after": c.disconnect, "history_minutes": c.history_minutes,
                "command_nodes": sorted(self.controls.targets), "hide": c.hide,
                "recorder": c.recorder is not None}

    async def _api_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config_json(), dumps=_dumps)

    async def _api_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"now": self.clock(), "nodes": self.nodes_json()},
                                 dumps=_dumps)

    def devices_json(self) -> dict[str, Any]:
        d = self.state.devices()
        d["series"] = [s for s in d["series"] if not self._hidden(s["topic"])]
        return d

    async def _api_devices(self, request: web.Request) -> web.Response:
        return web.json_response(self.devices_json(), dumps=_dumps)

    async def _api_history(self, request: web.Request) -> web.Response:
        topic = request.query.get("topic", "")
        if not topic:
            return _error(400, "give ?topic=<node.device.signal>")
        try:
            minutes = float(request.query.get("minutes", self.config.history_minutes))
            max_points = int(request.query.get("max_points", 2000))
        except ValueError:
            return _error(400, "minutes and max_points must be numbers")
        if not (0 < minutes <= 7 * 24 * 60 and math.isfinite(minutes)):
            return _error(400, "minutes must be in (0, 10080]")
        max_points = min(max(max_points, 2), 20_000)
        return web.json_response(await self.history(topic, minutes, max_points), dumps=_dumps)

    async def _api_events(self, request: web.Request) -> web.Response:
        return web.json_response({"events": list(self.state.events)}, dumps=_dumps)

    async def _api_frame(self, request: web.Request) -> web.Response:
        frame = self.state.frames.get(request.query.get("topic", ""))
        if frame is None:
            return _error(404, "no frame on that topic")
        loop = asyncio.get_running_loop()
        png = await loop.run_in_executor(self._executor, png_gray, frame.array)
        return web.Response(body=png, content_type="image/png",
                            headers={"Cache-Control": "no-store"})

    # -- WebSocket -----------------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return {"type": "hello", "now": self.clock(), "config": self.config_json(),
                "nodes": self.nodes_json(), "devices": self.devices_json(),
                "events": list(self.state.events)}

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if len(self.pages) >= self.config.max_clients:
            return _error(503, "too many dashboard pages open")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY)
        await ws.prepare(request)
        page = _Page(ws, _peer(request), self.config.client_queue, request.transport)
        page.queue.put_nowait(_dumps(self.hello()))
        self.pages.add(page)
        sender = asyncio.create_task(self._send_loop(page), name=f"{self.name}-ws-send")
        try:
            async for msg in ws:  # the page sends nothing we act on; this sees the close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.pages.discard(page)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        return ws

    async def _send_loop(self, page: _Page) -> None:
        while True:
            text = await page.queue.get()
            if text is None:
                if page.transport is None:  # no socket to reset: close the usual way
                    await page.ws.close(code=1013, message=b"too slow; reconnect")
                return
            try:
                await page.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

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

    def _audit(self, request: web.Request, result: ControlResult) -> web.Response:
        peer = _peer(request)
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

    def _disabled(self, request: web.Request, action: str, target: str) -> web.Response:
        res = ControlResult(REFUSED, action, target,
                            "control is off on this dashboard (control: true in its node file)")
        resp = self._audit(request, res)
        resp.set_status(403)
        return resp

    async def _control_valve(self, request: web.Request) -> web.Response:
        body = await self._read_control(request, ("node", "valve", "action"))
        if isinstance(body, web.Response):
            return body
        node, valve, action = str(body["node"]), str(body["valve"]), str(body["action"])
        if not self.config.control:
            return self._disabled(request, action, f"{node}/{valve}")
        result = await self.controls.valve(node, valve, action)
        return self._audit(request, result)

    async def _control_setpoint(self, request: web.Request) -> web.Response:
        body = await self._read_control(request, ("node", "value"))
        if isinstance(body, web.Response):
            return body
        node, device = str(body["node"]), str(body.get("device") or "")
        try:
            value = float(body["value"])
        except (TypeError, ValueError):
            return _error(400, "value must be a number")
        if not self.config.control:
            return self._disabled(request, "setpoint", f"{node}/{device}")
        return self._audit(request, await self.controls.setpoint(node, device, value))


# -- helpers ---------------------------------------------------------------------------------
def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(request.remote or "?")


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
