"""Service kinds of the telemetry bus: ``notifier``, ``dashboard_server``, ``recorder``,
``dashboard_client`` (docs/bus.md has the node-file reference).

Example::

    services:
      - {kind: notifier, name: bus, port: 5555}            # REP on 5556; every device change
      - {kind: dashboard_server, config: dashboard.yaml}   # PUB 8100 / REP 8101 by default
      - {kind: recorder, connect: [bus], path: bus.sqlite}
      - {kind: dashboard_client, host: 192.168.1.40, port: 8100}

``connect`` entries of a recorder are URLs (``tcp://host:5555``, ``host:5555``), the names
of this node's own publishing services, resolved when the node starts (so ``port: 0`` works),
or ``{url, server_key, client_key}`` for a publisher with Curve (labbridge.node.bus_clients).

The bus sockets a node binds admit whom its ``security`` section lets in, over Curve when it
names a key pair (``security.curve``; ADR 0127); a notifier also publishes the node's audit
trail on ``<node>.audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labbridge.access import AuditEvent, Gate
from labbridge.bus.dashboard import DashboardClient, DashboardError, DashboardServer
from labbridge.bus.device_publisher import DevicePublisher
from labbridge.bus.notifier import Notifier
from labbridge.bus.publisher import MAX_SUBSCRIPTIONS
from labbridge.bus.recorder import Recorder
from labbridge.bus.sockets import Address, BusError
from labbridge.devices.base import Device
from labbridge.node.bus_clients import BusTarget, bus_targets, client_keys
from labbridge.node.config import ConfigError, Section, load_yaml
from labbridge.node.registry import Endpoint, NodeContext, register_service
from labbridge.node.security import node_curve
from labbridge.protocol.telemetry.dashboard_config import (
    DashboardConfigError,
    parse_dashboard_config,
    parse_dashboard_xml,
)
from labbridge.protocol.telemetry.envelope import make_topic
from labbridge.transport.backoff import Backoff

log = logging.getLogger(__name__)


def _endpoints(name: str, addresses: list[Address]) -> list[Endpoint]:
    return [Endpoint(service=name, protocol=a.protocol, host=a.host, port=a.port, role=a.role,
                     purpose=a.purpose) for a in addresses]


def _host(sec: Section, ctx: NodeContext) -> str:
    return str(ctx.host_override or sec.get_str("host", "127.0.0.1"))


def _devices(sec: Section, ctx: NodeContext) -> list[Device]:
    names = sec.get_list("devices", None)
    if names is None:
        return list(ctx.devices.values())
    out = []
    for n in names:
        dev = ctx.devices.get(str(n))
        if dev is None:
            raise sec.error("devices", f"no device named {n!r} on this node "
                                       f"(devices: {', '.join(sorted(ctx.devices)) or 'none'})")
        out.append(dev)
    return out


def audit_topic(node: str) -> str:
    """The topic of a node's audit trail on its bus: ``<node>.audit``."""
    return make_topic(node, "audit")


class NotifierService:
    """A Notifier plus the DevicePublisher that puts every device change on it, the
    devices' metadata every ``meta_period`` seconds (0: never), and the node's audit trail
    (every event of ``gate``, on ``<node>.audit``, payload ``AuditEvent.to_json()``)."""

    def __init__(self, name: str, notifier: Notifier, publisher: DevicePublisher | None,
                 meta_period: float = 10.0, gate: Gate | None = None) -> None:
        self.name = name
        self.notifier = notifier
        self.device_publisher = publisher
        self.meta_period = meta_period
        self.gate = gate
        self.audit_topic = audit_topic(notifier.node)
        self._meta_task: asyncio.Task[None] | None = None
        self._remove_sink: Callable[[], None] | None = None

    @property
    def pub_url(self) -> str:
        return self.notifier.pub_url

    async def start(self) -> None:
        await self.notifier.start()
        if self.gate is not None and self._remove_sink is None:
            self._remove_sink = self.gate.add_sink(self._publish_audit)
        if self.device_publisher is not None:
            self.device_publisher.start()
            if self.meta_period > 0 and self._meta_task is None:
                self._meta_task = asyncio.create_task(
                    self.device_publisher.meta_loop(self.meta_period),
                    name=f"{self.name}-meta")

    def _publish_audit(self, event: AuditEvent) -> None:
        if self.notifier.publisher.is_open:
            self.notifier.publish(self.audit_topic, event.to_json(), event.ts)

    async def stop(self) -> None:
        remove, self._remove_sink = self._remove_sink, None
        if remove is not None:
            remove()
        task, self._meta_task = self._meta_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.device_publisher is not None:
            self.device_publisher.stop()
        await self.notifier.stop()

    def endpoints(self) -> list[Endpoint]:
        return _endpoints(self.name, self.notifier.addresses())


@register_service("notifier")
def _notifier(sec: Section, ctx: NodeContext) -> NotifierService:
    port = sec.get_port("port", 5555)
    rep_port = sec.get_port("rep_port", None)
    heartbeat = sec.get_float("heartbeat", 2.0, min=0.0)
    legacy = sec.get_bool("legacy", True)
    name = sec.get_str("name", "notifier")
    n = Notifier(_host(sec, ctx), port, rep_port, node=ctx.node_name, legacy=legacy,
                 heartbeat=heartbeat or None, source=ctx.node_name,
                 sndhwm=sec.get_int("sndhwm", 100_000, min=1),
                 max_subscriptions=sec.get_int("max_subscriptions", MAX_SUBSCRIPTIONS,
                                               min=1),
                 name=f"notifier {name!r}", gate=ctx.gate, curve=node_curve(ctx.gate),
                 via=name)
    pub = None
    if sec.get_bool("publish_devices", True):
        pub = DevicePublisher(n, ctx.node_name, _devices(sec, ctx), legacy=legacy)
    else:
        sec.get_list("devices", None)
    meta_period = sec.get_float("meta_period", 10.0, min=0.0, max=86400.0)
    return NotifierService(name, n, pub, meta_period, gate=ctx.gate)


class DashboardServerService:
    def __init__(self, name: str, server: DashboardServer) -> None:
        self.name = name
        self.server = server

    @property
    def pub_url(self) -> str:
        return self.server.pub_url

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def endpoints(self) -> list[Endpoint]:
        return _endpoints(self.name, self.server.addresses())


def _remote_reader(sec: Section, ctx: NodeContext) -> Callable[[str, str], Any] | None:
    """``remote: <service>``: a service of this node with ``read_value(device, func_name)``
    (sync or async) that reads values from another node."""
    name = sec.get_str("remote", None)
    if name is None:
        return None
    svc = ctx.services.get(name)
    reader = getattr(svc, "read_value", None)
    if svc is None or reader is None or not callable(reader):
        raise sec.error("remote", f"no service {name!r} with a read_value(device, func_name) "
                                  "method on this node (declare it before the dashboard)")

    async def read(device: str, func_name: str) -> Any:
        result = reader(device, func_name)
        if inspect.isawaitable(result):
            result = await result
        return result

    return read


@register_service("dashboard_server")
def _dashboard_server(sec: Section, ctx: NodeContext) -> DashboardServerService:
    path = ctx.resolve_path(sec.get_str("config"))
    try:
        if path.suffix.lower() == ".xml":
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read file: {exc}", file=str(path)) from None
            config = parse_dashboard_xml(text, str(path))
        else:
            config = parse_dashboard_config(load_yaml(path), str(path))
    except DashboardConfigError as exc:
        raise ConfigError(exc.reason, file=str(path), line=exc.line,
                          field=exc.field or None) from None
    port = sec.get_port("port", None)
    name = sec.get_str("name", "dashboard")
    try:
        server = DashboardServer(
            config, node=ctx.node_name, devices=ctx.devices, remote=_remote_reader(sec, ctx),
            host=_host(sec, ctx), port=port, rep_port=sec.get_port("rep_port", None),
            heartbeat=sec.get_float("heartbeat", 2.0, min=0.01),
            legacy=sec.get_bool("legacy", True),
            max_subscriptions=sec.get_int("max_subscriptions", MAX_SUBSCRIPTIONS, min=1),
            name=f"dashboard_server {name!r}", gate=ctx.gate, curve=node_curve(ctx.gate),
            via=name)
    except DashboardError as exc:
        raise sec.error("config", str(exc)) from None
    return DashboardServerService(name, server)


class RecorderService:
    def __init__(self, name: str, path: Path, connect: list[BusTarget], topics: list[str],
                 ctx: NodeContext, batch_size: int, flush_interval: float) -> None:
        self.name = name
        self.path = path
        self.targets = connect
        self.connect = [t.label for t in connect]
        self.topics = topics
        self.ctx = ctx
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.recorder: Recorder | None = None

    def _urls(self) -> list[str]:
        return [t.resolve(self.ctx) for t in self.targets]

    async def start(self) -> None:
        self.recorder = Recorder(self.path, self._urls(), self.topics or ("",),
                                 batch_size=self.batch_size,
                                 flush_interval=self.flush_interval, name=self.name)
        await self.recorder.start()

    async def stop(self) -> None:
        if self.recorder is not None:
            await self.recorder.stop()

    def endpoints(self) -> list[Endpoint]:
        """One ``connect`` endpoint per subscribed publisher (what a firewall must allow),
        and the SQLite file as a ``file`` endpoint."""
        out = []
        for t in self.targets:
            svc = self.ctx.services.get(t.service) if t.service is not None else None
            if svc is not None:  # a publisher of this node: its (configured) PUB endpoint
                pub = next((e for e in svc.endpoints() if e.protocol == "zmq-pub"), None)
                host, port = (pub.host, pub.port) if pub is not None else (None, None)
                purpose = f"records {t.service} of this node"
            else:
                h, _, p = str(t.url).removeprefix("tcp://").rpartition(":")
                host, port, purpose = h.strip("[]") or None, int(p) if p.isdigit() else None, \
                    "records this publisher"
            out.append(Endpoint(service=self.name, protocol="zmq-sub", host=host, port=port,
                                role="connect", purpose=purpose))
        out.append(Endpoint(service=self.name, protocol="sqlite", path=str(self.path),
                            role="file", purpose="the recording"))
        return out


@register_service("recorder")
def _recorder(sec: Section, ctx: NodeContext) -> RecorderService:
    connect = bus_targets(sec, "connect", ctx, "recorder")
    if not connect:
        raise sec.error("connect", "a recorder needs at least one endpoint or service name")
    p = sec.get_str("path", "bus.sqlite")
    path = Path(p).expanduser()
    if not path.is_absolute():
        path = ctx.state_dir / path
    topics = [str(t) for t in sec.get_list("topics", [])]
    return RecorderService(sec.get_str("name", "recorder"), path, connect, topics, ctx,
                           sec.get_int("batch_size", 5000, min=1),
                           sec.get_float("flush_interval", 0.25, min=0.001))


class DashboardClientService:
    """Follows a remote dashboard. The server may come up after this node: connecting is
    retried in the background (0.5 s doubling to 10 s) instead of failing the node;
    ``client.connected`` is set once it succeeds. One log line when it cannot connect, one
    when it finally does -- never one per attempt (ADR 0121)."""

    def __init__(self, name: str, client: DashboardClient) -> None:
        self.name = name
        self.client = client
        self._task: asyncio.Task[None] | None = None
        self.attempts = 0
        #: The endpoint is malformed: retrying cannot help (the error, logged once).
        self.failed: str | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name=f"{self.name}-connect")

    async def _connect(self) -> None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        failing = False
        while True:
            self.attempts += 1
            try:
                await self.client.connect()
            except BusError as exc:  # ZeroMQ refuses the endpoint itself
                self.failed = str(exc)
                log.error("%s: %s", self.name, exc)
                await self.client.close()
                return
            except (DashboardError, TimeoutError) as exc:
                if not failing:
                    failing = True
                    log.warning("%s: %s; retrying in the background (every %g s at most)",
                                self.name, exc or "no reply", backoff.maximum)
                await self.client.close()
            else:
                if failing:
                    log.info("%s: connected to %s after %d attempts", self.name,
                             self.client.pub_url, self.attempts)
                return
            await asyncio.sleep(backoff.next())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.client.close()

    def endpoints(self) -> list[Endpoint]:
        c = self.client
        return [Endpoint(service=self.name, protocol="zmq-sub", host=c.host, port=c.port,
                         role="connect", purpose="dashboard values"),
                Endpoint(service=self.name, protocol="zmq-req", host=c.host, port=c.rep_port,
                         role="connect", purpose="dashboard config")]


@register_service("dashboard_client")
def _dashboard_client(sec: Section, ctx: NodeContext) -> DashboardClientService:
    client = DashboardClient(sec.get_str("host"), sec.get_port("port", 8100),
                             sec.get_port("rep_port", None),
                             stale_after=sec.get_float("stale_after", 10.0, min=0.1),
                             name=sec.get_str("name", "dashboard-client"),
                             curve=client_keys(sec, ctx))
    return DashboardClientService(sec.get_str("name", "dashboard-client"), client)
