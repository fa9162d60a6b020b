"""DashboardServer and DashboardClient (spec pychron.md §14; seed 002: PUB 8100, REP 8101).

Server
------
Reads a :class:`~labbridge.protocol.telemetry.dashboard_config.DashboardConfig`
(``dashboard.yaml``), samples every enabled value and publishes what
:class:`~labbridge.protocol.telemetry.dashboard.ValueMonitor` says: ``value_update``,
``warning``, ``critical``, ``timeout`` and ``error`` events, plus a ``heartbeat`` from its own
2 s timer (§17 #16). Every event goes out in the envelope form (topic
``<node>.dashboard.value.<Device>.<value>`` or ``<node>.dashboard.event.<kind>``) and, with
``legacy`` on, in the single-string forms real Pychron clients read, in the spec's order.
The REP socket (PUB port + 1) answers ``ping`` and ``config_json``; unknown requests get an
error reply (never the pickled ``config``, §17 #17).

Sources: the hardware ``device`` of a dashboard device is a local
:class:`~labbridge.devices.base.Device` when the node has one by that name: the server calls
its method ``func_name`` (sync or async; ``"pressure IG"`` calls ``pressure("IG")`` [lb]).
Otherwise it asks ``remote(device, func_name)``, a callable the node supplies (for instance a
client link to another node). ``period: on_change`` values of local devices are fed by the
device's change events for signal ``bindname`` (default: the value name) instead of polling;
remote ones are polled every second, as Pychron does. A sample that raises or takes longer
than the value's ``timeout`` (or its period) is a failure: one ``error`` event per outage,
and a ``timeout`` event once ``timeout`` seconds pass without a good reading.

Client
------
``connect()`` pings (text compare, §17 #15), fetches ``config_json``, subscribes and listens.
A source is *stale* when no heartbeat arrived for ``stale_after`` (10) seconds, measured on
an injectable clock so tests need not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import zmq
import zmq.asyncio

from labbridge.access import Gate
from labbridge.bus import sockets
from labbridge.bus.auth import ClientKeys, CurveKeyPair, apply_client
from labbridge.bus.notifier import Notifier
from labbridge.bus.publisher import MAX_SUBSCRIPTIONS
from labbridge.bus.subscriber import MessageMeta, Subscriber
from labbridge.devices.base import Change, Device
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.dashboard import (
    DashboardEvent,
    ErrorEvent,
    Heartbeat,
    ValueMonitor,
    ValueUpdate,
    event_from_json,
    event_topic,
)
from labbridge.protocol.telemetry.dashboard_config import (
    DashboardConfig,
    DeviceConfig,
    ValueConfig,
)
from labbridge.protocol.telemetry.envelope import make_topic

log = logging.getLogger(__name__)

#: ``remote(device, func_name)`` -> value (or an awaitable of it).
RemoteReader = Callable[[str, str], Any]
Reader = Callable[[], Awaitable[Any]]

HEARTBEAT_PERIOD = 2.0
STALE_AFTER = 10.0
#: Largest reply a DashboardClient accepts (a ``config_json`` of a large dashboard is tens
#: of KiB); a server sending more is disconnected by ZeroMQ (MAXMSGSIZE).
MAX_REPLY = 4 * 1024 * 1024
#: How often on_change values of remote devices are polled (Pychron: 1 s).
ON_CHANGE_POLL = 1.0


class DashboardError(Exception):
    """The dashboard cannot run with this configuration (a device or method is missing)."""


def _split_func(func_name: str) -> tuple[str, list[str]]:
    name, *args = func_name.split()
    return name, args


class DashboardServer:
    """See the module docstring."""

    def __init__(self, config: DashboardConfig, *, node: str = "node",
                 devices: Mapping[str, Device] | None = None,
                 remote: RemoteReader | None = None, host: str = "127.0.0.1",
                 port: int | None = None, rep_port: int | None = None,
                 heartbeat: float = HEARTBEAT_PERIOD, legacy: bool = True,
                 clock: Callable[[], float] = time.time,
                 ctx: zmq.asyncio.Context | None = None,
                 max_subscriptions: int = MAX_SUBSCRIPTIONS, name: str = "dashboard",
                 gate: Gate | None = None, curve: CurveKeyPair | None = None,
                 via: str = "") -> None:
        self.config = config
        self.node = node
        self.devices = dict(devices or {})
        self.remote = remote
        self.heartbeat_period = heartbeat
        self.clock = clock
        self.name = name
        self.legacy = legacy
        self.notifier = Notifier(host, config.port if port is None else port, rep_port,
                                 node=node, ctx=ctx, legacy=legacy, heartbeat=None,
                                 max_subscriptions=max_subscriptions, name=name, clock=clock,
                                 gate=gate, curve=curve, via=via)
        self.notifier.add_request_handler("config_json", self._config_json)
        self.state = "configured"
        self.monitors: dict[str, ValueMonitor] = {}
        self._plan: list[tuple[ValueMonitor, Reader | None, float | None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.published: list[DashboardEvent] = []  # last events (bounded), for status pages
        self.events_published = 0
        self._check_sources()

    # -- setup ---------------------------------------------------------------------------
    def _reader(self, dev: DeviceConfig, val: ValueConfig) -> Reader:
        fname, args = _split_func(val.func_name)
        local = self.devices.get(dev.device)
        if local is not None:
            method = getattr(local, fname, None)
            if method is None or not callable(method):
                raise DashboardError(
                    f"{self.config.source_path or 'dashboard'}: device {dev.device!r} "
                    f"({type(local).__name__}) has no method {fname!r} "
                    f"(value {dev.name}.{val.name})")

            async def read_local() -> Any:
                result = method(*args)
                if inspect.isawaitable(result):
                    result = await result
                return result

            return read_local
        remote = self.remote
        if remote is None:
            known = ", ".join(sorted(self.devices)) or "none"
            raise DashboardError(
                f"{self.config.source_path or 'dashboard'}: no device named {dev.device!r} on "
                f"this node and no remote source (devices: {known})")

        async def read_remote() -> Any:
            result = remote(dev.device, val.func_name)
            if inspect.isawaitable(result):
                result = await result
            return result

        return read_remote

    def _check_sources(self) -> None:
        now = self.clock()
        for dev, val in self.config.values():
            if not (dev.enabled and val.enabled):
                continue
            mon = ValueMonitor(dev, val, now)
            self.monitors[val.tag] = mon
            local = self.devices.get(dev.device)
            if val.on_change and local is not None:
                self._plan.append((mon, None, None))
            else:
                reader = self._reader(dev, val)
                period = ON_CHANGE_POLL if val.period is None else val.period
                self._plan.append((mon, reader, period))

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def port(self) -> int | None:
        return self.notifier.port

    @property
    def rep_port(self) -> int | None:
        return self.notifier.rep_port

    @property
    def pub_url(self) -> str:
        return self.notifier.pub_url

    def addresses(self) -> list[sockets.Address]:
        return self.notifier.addresses()

    async def start(self) -> None:
        if self._tasks:
            return
        await self.notifier.start()
        self.state = "polling"
        now = self.clock()
        for mon, reader, period in self._plan:
            mon.last_ok = now
            if reader is None:
                signal = mon.value.bindname or mon.value.name
                dev = self.devices[mon.device.device]
                self._unsubscribe.append(dev.subscribe(self._change_listener(mon, signal)))
            else:
                assert period is not None
                self._tasks.append(asyncio.create_task(
                    self._poll(mon, reader, period),
                    name=f"{self.name}-{mon.device.name}.{mon.value.name}"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name=f"{self.name}-tick"))

    async def stop(self) -> None:
        self.state = "stopped"
        while self._unsubscribe:
            self._unsubscribe.pop()()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.notifier.stop()

    # -- publishing ----------------------------------------------------------------------
    def publish(self, event: DashboardEvent) -> None:
        """Send one event in the envelope form and (legacy on) the legacy forms."""
        self.notifier.publish(event_topic(self.node, event), event.to_json(), event.ts)
        if self.legacy:
            for line in event.legacy_lines():
                self.notifier.publisher.publish_legacy(line)
        self.events_published += 1
        self.published.append(event)
        if len(self.published) > 1000:
            del self.published[:500]

    def publish_heartbeat(self) -> None:
        self.publish(Heartbeat(self.clock(), self.config.source_path, self.state))

    def _emit_all(self, events: list[DashboardEvent]) -> None:
        for ev in events:
            self.publish(ev)

    # -- sampling ------------------------------------------------------------------------
    async def sample(self, mon: ValueMonitor, reader: Reader) -> None:
        """Read one value once and publish what it produces."""
        limit = mon.value.timeout or mon.value.period or ON_CHANGE_POLL
        try:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation
            # that arrives as the reading completes, and stop() would then wait forever
            async with asyncio.timeout(limit):
                raw = await reader()
        except TimeoutError:
            self._emit_all(mon.failure(f"no reading within {limit:g} s", self.clock()))
            return
        except Exception as exc:
            log.warning("%s: reading %s.%s failed: %r", self.name, mon.device.name,
                        mon.value.name, exc)
            self._emit_all(mon.failure(str(exc) or type(exc).__name__, self.clock()))
            return
        if raw is None:
            self._emit_all(mon.failure("no value", self.clock()))
            return
        self._emit_all(mon.sample(raw, self.clock()))

    async def _poll(self, mon: ValueMonitor, reader: Reader, period: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.sample(mon, reader)
            next_at += period
            delay = next_at - loop.time()
            if delay < 0:  # a slow source: skip missed slots instead of bursting
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    def _change_listener(self, mon: ValueMonitor, signal: str) -> Callable[[Change], None]:
        def on_change(change: Change) -> None:
            if change.signal != signal:
                return
            if change.value is None:
                self._emit_all(mon.failure("no value", self.clock()))
            else:
                self._emit_all(mon.sample(change.value, self.clock()))

        return on_change

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.heartbeat_period)
        last_beat = -1e300
        while True:
            now_l = loop.time()
            if now_l - last_beat >= self.heartbeat_period - 1e-3:
                last_beat = now_l
                self.publish_heartbeat()
            now = self.clock()
            for mon in self.monitors.values():
                ev = mon.check_timeout(now)
                if ev is not None:
                    self.publish(ev)
            await asyncio.sleep(tick)

    # -- requests ------------------------------------------------------------------------
    def config_snapshot(self) -> dict[str, Any]:
        cfg = self.config.to_json()
        cfg["port"] = self.port if self.port is not None else self.config.port
        return {"kind": "config_snapshot", "ts": self.clock(), "config": cfg,
                "node": self.node, "topic_prefix": make_topic(self.node, "dashboard") + "."}

    def _config_json(self, args: str) -> bytes:
        return json.dumps(self.config_snapshot(), sort_keys=True).encode("utf-8")


class DashboardClient:
    """Connects to a DashboardServer (ours or Pychron's); see the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8100, rep_port: int | None = None,
                 *, stale_after: float = STALE_AFTER,
                 clock: Callable[[], float] = time.monotonic,
                 on_event: Callable[[DashboardEvent, MessageMeta], None] | None = None,
                 on_stale: Callable[[bool], None] | None = None,
                 request_timeout: float = 2.0, use_envelope: bool = True,
                 ctx: zmq.asyncio.Context | None = None,
                 name: str = "dashboard-client", curve: ClientKeys | None = None) -> None:
        self.host = host
        self.port = port
        self.rep_port = rep_port if rep_port is not None else port + 1
        self.stale_after = stale_after
        self.clock = clock
        self.on_event = on_event
        self.on_stale = on_stale
        self.request_timeout = request_timeout
        self.use_envelope = use_envelope
        self._ctx = ctx
        self.name = name
        #: The server's public key and ours, for a dashboard server with Curve (ADR 0127).
        self.curve = curve
        self.config: dict[str, Any] | None = None
        self.values: dict[str, Any] = {}
        self.events: list[DashboardEvent] = []
        self.subscriber: Subscriber | None = None
        self._req: zmq.asyncio.Socket | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._connected_at: float | None = None
        self.last_heartbeat: float | None = None
        self._stale = False
        #: Set once :meth:`connect` has succeeded (cleared by :meth:`close`).
        self.connected = asyncio.Event()

    @property
    def pub_url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def rep_url(self) -> str:
        return f"tcp://{self.host}:{self.rep_port}"

    # -- request/reply -------------------------------------------------------------------
    def _req_socket(self) -> zmq.asyncio.Socket:
        if self._req is None:
            ctx = self._ctx or sockets.context()
            req = ctx.socket(zmq.REQ)
            req.setsockopt(zmq.LINGER, 0)
            req.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY)
            # one connection attempt per request, not one every 100 ms: the socket is
            # discarded after a timeout anyway, and the caller backs off between requests
            req.setsockopt(zmq.RECONNECT_IVL, int(max(self.request_timeout, 0.5) * 1000))
            req.setsockopt(zmq.RECONNECT_IVL_MAX, int(sockets.RECONNECT_MAX * 1000))
            apply_client(req, self.curve)
            try:
                sockets.connect(req, self.rep_url, self.name)
            except sockets.BusError:
                req.close(linger=0)
                raise
            self._req = req
        return self._req

    async def request(self, text: str, timeout: float | None = None) -> bytes:
        """One request/reply within ``timeout`` (default ``request_timeout``); on timeout the
        REQ socket is discarded (a REQ socket that missed its reply cannot send again) and
        :class:`TimeoutError` is raised. :class:`BusError` for an endpoint ZeroMQ refuses."""
        req = self._req_socket()
        try:
            async with asyncio.timeout(timeout or self.request_timeout):
                await req.send(text.encode("utf-8"))
                return await req.recv()
        except BaseException:
            sockets.close(self._req)
            self._req = None
            raise

    async def ping(self, timeout: float = 1.0) -> bool:
        try:
            reply = await self.request("ping", timeout)
        except TimeoutError:
            return False
        return reply.decode("utf-8", "replace").strip() == "echo"

    async def fetch_config(self) -> dict[str, Any]:
        reply = await self.request("config_json")
        try:
            obj = json.loads(reply)
        except ValueError:
            raise DashboardError(f"config_json reply is not JSON: {reply[:80]!r}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict):
            raise DashboardError(f"unexpected config_json reply: {reply[:80]!r}")
        self.config = obj
        return obj

    # -- lifecycle -----------------------------------------------------------------------
    async def connect(self) -> dict[str, Any]:
        """Ping, fetch the configuration, subscribe; returns the config snapshot."""
        if not await self.ping():
            why = ("or it refused our Curve key: is our public key a curve_key in its node's "
                   "security.identities?" if self.curve is not None else
                   "or it uses Curve: give server_key and client_key")
            raise DashboardError(
                f"no dashboard server answers at {self.rep_url} (is the dashboard node "
                f"running, and is {self.port} its PUB port? requests go to port + 1; {why})")
        cfg = await self.fetch_config()
        prefix = cfg.get("topic_prefix")
        if self.use_envelope and isinstance(prefix, str) and prefix:
            topics = [prefix]
        else:  # a real Pychron server: the legacy strings (§14.3)
            topics = [legacy.DASHBOARD_TAG, legacy.ERROR_TAG]
        self.subscriber = Subscriber(self.pub_url, topics, on_message=self._on_message,
                                     ctx=self._ctx, name=self.name, curve=self.curve)
        await self.subscriber.start()
        self._connected_at = self.clock()
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.name}-stale")
        self.connected.set()
        return cfg

    async def close(self) -> None:
        self.connected.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self.subscriber is not None:
            await self.subscriber.stop()
            self.subscriber = None
        sockets.close(self._req)
        self._req = None

    # -- events --------------------------------------------------------------------------
    def _on_message(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        event: DashboardEvent | None
        if isinstance(payload, dict):
            event = event_from_json(payload)
        elif topic == legacy.ERROR_TAG:
            event = ErrorEvent(self.clock(), str(payload))
        else:
            event = None
        if event is None:
            return
        if isinstance(event, Heartbeat):
            self.last_heartbeat = self.clock()
            self.check_stale()
        elif isinstance(event, ValueUpdate):
            self.values[event.tag] = event.value
        self.events.append(event)
        if len(self.events) > 10_000:
            del self.events[:5_000]
        if self.on_event is not None:
            try:
                self.on_event(event, meta)
            except Exception:
                log.exception("%s: on_event failed", self.name)

    @property
    def stale(self) -> bool:
        """No heartbeat for ``stale_after`` seconds (since connect when none came yet)."""
        ref = self.last_heartbeat if self.last_heartbeat is not None else self._connected_at
        if ref is None:
            return True
        return self.clock() - ref > self.stale_after

    def check_stale(self) -> bool:
        """Re-evaluate :attr:`stale`; calls ``on_stale`` on a change. Returns the state."""
        now_stale = self.stale
        if now_stale != self._stale:
            self._stale = now_stale
            log.log(logging.WARNING if now_stale else logging.INFO,
                    "%s: source %s is %s", self.name, self.pub_url,
                    "stale" if now_stale else "live again")
            if self.on_stale is not None:
                try:
                    self.on_stale(now_stale)
                except Exception:
                    log.exception("%s: on_stale failed", self.name)
        return now_stale

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.check_stale()
