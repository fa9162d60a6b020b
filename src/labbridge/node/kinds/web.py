"""Service kind ``web_dashboard``: the live web page of the lab (issue 8; docs/web.md).

Example (a dashboard node watching two other nodes)::

    services:
      - kind: web_dashboard
        name: web
        host: 127.0.0.1            # default: loopback only; 0.0.0.0 serves the lab network
        port: 8080                 # 0 picks any free port (the ready file says which)
        title: Argon lab
        subscribe:                 # bus publishers: URLs, or names of this node's services
          - tcp://192.168.1.40:5555          # valve controller's notifier
          # with Curve: {url: tcp://..., server_key: keys/x.key, client_key: keys/web.key_secret}
          - tcp://192.168.1.41:5555          # furnace controller's notifier
          - tcp://192.168.1.40:8100          # a dashboard_server's PUB (warnings, criticals)
        command_servers:           # where control actions go, by node name
          - {node: valve-controller, url: 192.168.1.40:1061}
          - {node: furnace-controller, url: 192.168.1.41:1061}
        control: false             # default; true lets the page open/close valves, set setpoints
        recorder: /var/lib/labbridge/bus.sqlite   # history on page load (or a recorder service)
        stale_after: 10            # seconds without heartbeat before a node shows "stale"
        history_minutes: 10
        cameras:                   # devices of THIS node that can grab(): a camera, or the
          - {device: remote_detector, every: 1}   # remote_detector of a pymodaq_server
        schematic:                 # optional: the extraction line as drawn, per node
          valve-controller:
            valves: {A: [1, 0], B: [2, 0], C: [2, 1]}   # [x, y] in grid units
            gauges: {IG: [3, 0]}                         # a gauge (or device.signal)
            parts: {laser: [0, 0], pump: [3, 1]}         # labelled boxes (volumes, pumps)
            pipes: [[laser, A, B, IG], [B, C, pump]]     # lines through named items
        units: {legacy-node.: torr}        # units where no device metadata says them
        alarms:                    # an event with this level when a value is out of limits
          - {topic: valve-controller.gauges.IG, above: 1.0e-6, level: warning}
        node_limits: {rotator: {stale_after: 30}}   # per-node health thresholds
        allowed_hosts: [lab-pc.example.org, 192.168.1.30]   # names browsers use for it
        tls: {cert: keys/web.crt, key: keys/web.pem}        # optional: HTTPS
        session_idle_minutes: 60   # a login ends after this long unused,
        session_hours: 12          #   and this long after it was made
        login_attempts_per_minute: 10   # failed logins from one address
        one_time_logins: {demo: "sha256$..."}   # login links that work once (labbridge demo)

Who may do what comes from the node's ``security`` section (identities with a password or a
token, roles by address): docs/web.md "Log in" and docs/security.md.

A ``command_servers`` entry may name a ``pychron_command_server`` of this node instead of a
URL (``{node: me, service: command-server}``), and may hold ``tls: {ca, cert, key}`` when
that server speaks TLS (docs/security.md); and ``recorder`` may name a ``recorder``
service of this node. Valve banks on this node contribute their own ``layout`` hints.

Layering (ADR 0070): this module is the one place under ``labbridge.node`` that imports the web
face; pyproject.toml's import-linter contract lists exactly these imports as allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

try:
    import aiohttp  # noqa: F401  (the `web` extra)
except ModuleNotFoundError as exc:  # reported by the registry as a family not installed
    raise ModuleNotFoundError(f"{exc} (pip install 'labbridge[web]')", name=__name__) from exc

from labbridge.access import check_hash_format
from labbridge.devices.valves import ValveBank
from labbridge.node.bus_clients import subscriptions
from labbridge.node.config import Section
from labbridge.node.registry import Endpoint, NodeContext, register_service
from labbridge.node.tls import tls_section
from labbridge.protocol.telemetry.envelope import make_topic
from labbridge.web.app import (
    AlarmRule,
    CameraSource,
    WebConfig,
    WebDashboard,
    split_host,
    tls_context,
)
from labbridge.web.control import CommandTarget

#: Largest schematic: items per node and names per pipe.
MAX_SCHEMATIC_ITEMS = 200


class WebDashboardService:
    """The node-side wrapper: start/stop and the endpoints for ``labbridge ports``."""

    def __init__(self, name: str, dashboard: WebDashboard) -> None:
        self.name = name
        self.dashboard = dashboard

    @property
    def url(self) -> str:
        return self.dashboard.url

    async def start(self) -> None:
        await self.dashboard.start()

    async def stop(self) -> None:
        await self.dashboard.stop()

    def endpoints(self) -> list[Endpoint]:
        c = self.dashboard.config
        port = self.dashboard.port if self.dashboard.port is not None else c.port
        out = [Endpoint(service=self.name, protocol="http", host=c.host, port=port,
                        role="listen", purpose="web dashboard"
                        + (" (HTTPS)" if c.ssl_context is not None else ""))]
        for url in c.subscribe:
            out.append(Endpoint(service=self.name, protocol="zmq-sub", role="connect",
                                path=url, purpose="bus events for the page"))
        for t in c.command_servers:
            port_t = t.service.port if isinstance(t, _ServiceTarget) else t.port
            out.append(Endpoint(service=self.name, protocol="pychron-tcp", host=t.host,
                                port=port_t, role="connect",
                                purpose=f"control of {t.node}"))
        return out


def _hostport(sec: Section, key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise sec.error(key, f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _ServiceTarget(CommandTarget):
    """A command server of this node, whose port is known only once it listens."""

    def __init__(self, node: str, service: Any, timeout: float, tls: Any = None) -> None:
        super().__init__(node, "127.0.0.1", 0, timeout, tls=tls)
        self.service = service

    def remote(self) -> Any:
        if self.client is None:
            self.port = int(self.service.port)
            host = str(getattr(self.service, "host", "127.0.0.1"))
            self.host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return super().remote()


def _command_servers(sec: Section, ctx: NodeContext) -> list[CommandTarget]:
    out: list[CommandTarget] = []
    seen: set[str] = set()
    for s in sec.get_sections("command_servers", []):
        node = s.get_str("node")
        if node in seen:
            raise s.error("node", f"two command servers for node {node!r}")
        seen.add(node)
        timeout = s.get_float("timeout", 3.0, min=0.05, max=600.0)
        svc_name = s.get_str("service", None)
        url = s.get_str("url", None)
        if (svc_name is None) == (url is None):
            raise s.error("url", "give either url: HOST:PORT or service: <name of a "
                                 "command server on this node>")
        tls = tls_section(s, ctx, server=False)
        if svc_name is not None:
            svc = ctx.services.get(svc_name)
            if svc is None or not hasattr(svc, "port"):
                raise s.error("service", f"no command server named {svc_name!r} declared "
                                         "before the dashboard on this node")
            out.append(_ServiceTarget(node, svc, timeout, tls))
        else:
            assert url is not None
            host, port = _hostport(s, "url", url)
            out.append(CommandTarget(node, host, port, timeout, tls=tls))
        s.check_no_unknown()
    return out


def _layout(sec: Section, ctx: NodeContext) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dev in ctx.devices.values():  # hints from this node's own valve banks
        if isinstance(dev, ValveBank):
            for v in dev.describe().get("valves", []):
                if v.get("layout"):
                    out.setdefault(ctx.node_name, {})[v["name"]] = dict(v["layout"])
    raw = sec.get_section("layout", None)
    if raw is None:
        return out
    for node in list(raw):
        per_node = raw.get_section(node)
        for valve in list(per_node):
            hint = per_node.get_section(valve)
            x, y = hint.get_float("x"), hint.get_float("y")
            if not (math.isfinite(x) and math.isfinite(y)):
                raise hint.error("x", "x and y must be finite numbers")
            entry: dict[str, Any] = {"x": x, "y": y}
            to = hint.get_list("to", [])
            entry["to"] = [str(t) for t in to]
            hint.check_no_unknown()
            out.setdefault(str(node), {})[str(valve)] = entry
    return out


def _position(sec: Section, key: str, value: Any) -> list[float]:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool)
                       and math.isfinite(c) and abs(c) <= 1000 for c in value)):
        raise sec.error(key, f"expected a position [x, y] (numbers), got {value!r}")
    return [float(value[0]), float(value[1])]


def _schematic(sec: Section) -> dict[str, dict[str, Any]]:
    """``schematic: {node: {valves, gauges, parts: {name: [x, y]}, pipes: [[name...]]}}``:
    every name in a pipe must be placed in the same node's entry."""
    raw = sec.get_section("schematic", None)
    out: dict[str, dict[str, Any]] = {}
    if raw is None:
        return out
    for node in list(raw):
        entry = raw.get_section(node)
        placed: dict[str, dict[str, list[float]]] = {}
        for kind in ("valves", "gauges", "parts"):
            group = entry.get_section(kind, None)
            placed[kind] = {}
            if group is None:
                continue
            for name in list(group):
                placed[kind][str(name)] = _position(group, name, group.get_list(name))
        names = {n for g in placed.values() for n in g}
        if len(names) > MAX_SCHEMATIC_ITEMS:
            raise entry.error(None, f"at most {MAX_SCHEMATIC_ITEMS} items per node")
        pipes: list[list[str]] = []
        for i, pipe in enumerate(entry.get_list("pipes", [])):
            if not isinstance(pipe, list) or len(pipe) < 2:
                raise entry.error("pipes", f"pipe {i} must list at least two names")
            unknown = [str(n) for n in pipe if str(n) not in names]
            if unknown:
                raise entry.error("pipes", f"pipe {i} goes through {', '.join(unknown)}, "
                                           "placed nowhere in valves, gauges or parts")
            pipes.append([str(n) for n in pipe[:MAX_SCHEMATIC_ITEMS]])
        entry.check_no_unknown()
        out[str(node)] = {**placed, "pipes": pipes}
    return out


def _alarms(sec: Section) -> list[AlarmRule]:
    out = []
    for a in sec.get_sections("alarms", []):
        rule = AlarmRule(topic=a.get_str("topic"),
                         level=a.get_choice("level", ("warning", "critical", "info"), "warning"),
                         above=a.get_float("above", None), below=a.get_float("below", None))
        if rule.above is None and rule.below is None:
            raise a.error("above", "give above: and/or below: (the limits)")
        a.check_no_unknown()
        out.append(rule)
    return out


def _node_limits(sec: Section, stale: float) -> dict[str, dict[str, float]]:
    raw = sec.get_section("node_limits", None)
    out: dict[str, dict[str, float]] = {}
    if raw is None:
        return out
    for node in list(raw):
        lim = raw.get_section(node)
        s = lim.get_float("stale_after", stale, min=0.05, max=86400.0)
        entry = {"stale_after": s}
        d = lim.get_float("disconnect_after", None, min=s, max=864000.0)
        if d is not None:
            entry["disconnect_after"] = d
        lim.check_no_unknown()
        out[str(node)] = entry
    return out


def _units(sec: Section) -> dict[str, str]:
    raw = sec.get_mapping("units", None) or {}
    out = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise sec.error("units", f"units of {k!r} must be text, got {v!r}")
        out[str(k)] = v
    return out


def _recorder(sec: Section, ctx: NodeContext) -> Path | None:
    value = sec.get_str("recorder", None)
    if value is None:
        return None
    svc = ctx.services.get(value)
    if svc is not None:
        path = getattr(svc, "path", None)
        if path is None:
            raise sec.error("recorder", f"service {value!r} is not a recorder")
        return Path(path)
    return ctx.resolve_path(value)


def _cameras(sec: Section, ctx: NodeContext) -> list[CameraSource]:
    out: list[CameraSource] = []
    for c in sec.get_sections("cameras", []):
        dev = ctx.device(c, "device")
        if not callable(getattr(dev, "grab", None)):
            raise c.error("device", f"device {dev.name!r} ({dev.kind}) cannot grab frames")
        out.append(CameraSource(dev, make_topic(ctx.node_name, dev.name, "frame"),
                                every=c.get_float("every", 1.0, min=0.05, max=3600.0),
                                timeout=c.get_float("timeout", 10.0, min=0.05, max=3600.0)))
        c.check_no_unknown()
    return out


def _allowed_hosts(sec: Section) -> list[str]:
    out = []
    for h in sec.get_list("allowed_hosts", []):
        hp = split_host(str(h)) if isinstance(h, str) else None
        if hp is None or hp[1] is not None:
            raise sec.error("allowed_hosts", f"expected a host name or address without a "
                                             f"port, got {h!r}")
        out.append(hp[0])
    return out


def _allowed_origins(sec: Section) -> list[str]:
    out = []
    for o in sec.get_list("allowed_origins", []):
        text = str(o)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("http", "https") or split_host(rest.rstrip("/")) is None:
            raise sec.error("allowed_origins", f"expected an origin such as "
                                               f"https://lab.example.org, got {o!r}")
        out.append(text)
    return out


def _tls(sec: Section, ctx: NodeContext) -> Any:
    t = sec.get_section("tls", None)
    if t is None:
        return None
    cert, key = ctx.resolve_path(t.get_str("cert")), ctx.resolve_path(t.get_str("key"))
    t.check_no_unknown()
    try:
        return tls_context(cert, key)
    except ValueError as exc:
        raise t.error("cert", str(exc)) from None


def _one_time_logins(sec: Section, ctx: NodeContext) -> dict[str, str]:
    raw = sec.get_mapping("one_time_logins", None) or {}
    identities = ctx.gate.policy.identities
    out = {}
    for name, value in raw.items():
        if str(name) not in identities:
            raise sec.error("one_time_logins", f"{name!r} is not an identity of this node "
                                               "(security.identities)")
        if not isinstance(value, str) or not value.startswith("sha256$") \
                or check_hash_format(value) is not None:
            raise sec.error("one_time_logins", f"the link of {name!r} must be a token hash "
                                               "sha256$<hex> (never the token itself)")
        out[str(name)] = value
    return out


@register_service("web_dashboard")
def _web_dashboard(sec: Section, ctx: NodeContext) -> WebDashboardService:
    name = sec.get_str("name", "web")
    # entries: URLs, service names, or {url, server_key, client_key} (Curve; ADR 0127)
    subscribe, resolve = subscriptions(sec, ctx, "subscribe", "dashboard")

    stale = sec.get_float("stale_after", 10.0, min=0.05, max=86400.0)
    config = WebConfig(
        host=str(ctx.host_override or sec.get_str("host", "127.0.0.1")),
        port=sec.get_port("port", 8080),
        title=sec.get_str("title", ctx.node_name),
        node=ctx.node_name,
        subscribe=subscribe,
        topics=[str(t) for t in sec.get_list("topics", [""])],
        command_servers=_command_servers(sec, ctx),
        control=sec.get_bool("control", False),
        recorder=_recorder(sec, ctx),
        stale_after=stale,
        disconnect_after=sec.get_float("disconnect_after", None, min=stale, max=864000.0),
        node_limits=_node_limits(sec, stale),
        history_minutes=sec.get_float("history_minutes", 10.0, min=0.1, max=7 * 24 * 60.0),
        push_interval=sec.get_float("push_interval", 0.05, min=0.005, max=5.0),
        max_clients=sec.get_int("max_clients", 64, min=1, max=10_000),
        max_per_address=sec.get_int("max_per_address", 16, min=1, max=10_000),
        ping_interval=sec.get_float("ping_interval", 10.0, min=0.1, max=3600.0),
        hello_timeout=sec.get_float("hello_timeout", 5.0, min=0.1, max=600.0),
        client_bytes=int(sec.get_float("client_buffer_mb", 4.0, min=0.01, max=1024.0)
                         * 1024 * 1024),
        layout=_layout(sec, ctx),
        schematic=_schematic(sec),
        units=_units(sec),
        alarms=_alarms(sec),
        hide=[str(h) for h in sec.get_list("hide", [])],
        cameras=_cameras(sec, ctx),
        allowed_hosts=_allowed_hosts(sec),
        allowed_origins=_allowed_origins(sec),
        ssl_context=_tls(sec, ctx),
        session_idle=sec.get_float("session_idle_minutes", 60.0, min=1.0,
                                   max=7 * 24 * 60.0) * 60.0,
        session_lifetime=sec.get_float("session_hours", 12.0, min=0.1, max=24 * 365.0)
        * 3600.0,
        max_sessions=sec.get_int("max_sessions", 256, min=1, max=100_000),
        login_attempts=sec.get_int("login_attempts_per_minute", 10, min=1, max=10_000),
        one_time_logins=_one_time_logins(sec, ctx),
        used_logins_file=ctx.state_dir / f"{name}.used-logins.json",
    )
    return WebDashboardService(name, WebDashboard(config, name=name, resolve=resolve,
                                                  gate=ctx.gate))
