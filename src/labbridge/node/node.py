"""A node: the devices and services one labbridge process runs, built from a node file.

Node file (YAML)::

    node: valve-controller          # name; the bus topic prefix
    state_dir: state                # optional, relative to the file; default .labbridge-state/<node>
    devices:
      - {kind: valve_bank, name: valves, ...}
    services:
      - {kind: pychron_command_server, name: command-server, port: 1061, ...}

Devices start first (in file order), then services; shutdown runs in reverse order. The ready
file, when asked for, is written once every service is listening: JSON with the node name, the
process id and every endpoint (service, protocol, host, port).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labbridge.access import Gate
from labbridge.devices.base import Device
from labbridge.devices.state_file import write_json_atomic
from labbridge.node import kinds
from labbridge.node.config import ConfigError, Section, load_yaml
from labbridge.node.registry import (
    DEVICE_KINDS,
    SERVICE_KINDS,
    Endpoint,
    NodeContext,
    Service,
)
from labbridge.node.security import is_loopback_host, parse_security

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


class StartError(Exception):
    """A device or service of a node could not start: a port in use, an address this machine
    does not have, a bus endpoint that cannot be bound...

    ``str()`` is one line: which node, which part, why, and what to do about it.
    """

    def __init__(self, node: str, what: str, cause: BaseException) -> None:
        self.node = node
        self.what = what
        self.cause = cause
        text_ = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        reason = " ".join(text_.split()) or type(cause).__name__
        name = what.partition(" ")[2]
        if name and reason.startswith(f"{name}: "):  # "command-server: TCP port ..."
            reason = reason[len(name) + 2:]
        text = f"cannot start node {node}: {what}: {reason}" if what else \
            f"cannot start node {node}: {reason}"
        hint = start_hint(cause)
        super().__init__(f"{text}; {hint}" if hint else text)


def start_hint(exc: BaseException) -> str:
    """What a user can do about a start failure ("" when there is nothing general to say).
    Only a system error gets one: labbridge's own errors (a bus socket's, a recording's) say
    what to do themselves, and a second remedy would contradict or repeat theirs."""
    if not isinstance(exc, OSError):
        return ""
    code = exc.errno
    text = str(exc).lower()
    if code == errno.EADDRINUSE or "already in use" in text:
        return ("another program (or another labbridge node) holds that port: stop it, or "
                "change port: in the node file (--port for the command server); "
                "labbridge ports FILE lists the node's ports")
    if code == errno.EADDRNOTAVAIL or "cannot assign requested address" in text:
        return ("that address is not one of this machine's: use --host 127.0.0.1 (or this "
                "machine's own address), or fix host: in the node file")
    if code == errno.EACCES or "permission denied" in text:
        return "ports below 1024 need root: choose a port of 1024 or more"
    return ""


class Node:
    """Devices and services of one node, started and stopped together."""

    def __init__(self, ctx: NodeContext, devices: list[Device], services: list[Service],
                 source: str | None = None) -> None:
        self.ctx = ctx
        self.devices = devices
        self.services = services
        self.source = source
        self._started_devices: list[Device] = []
        self._started_services: list[Service] = []
        #: Non-fatal findings of the node file (``labbridge check`` prints them, ``serve``
        #: logs them), each ``file:line: field: text``.
        self.warnings: list[str] = []
        #: What the node does for each plugin of its initialization.xml (``labbridge check``
        #: prints them), each ``file:line: plugin: text``.
        self.notes: list[str] = []

    @property
    def name(self) -> str:
        return self.ctx.node_name

    def endpoints(self) -> list[Endpoint]:
        """Every socket the node listens on or connects to: its services', then its
        devices' (a generation A ``hexrot_controller`` listens for its controller)."""
        out: list[Endpoint] = []
        for svc in self.services:
            out.extend(svc.endpoints())
        for dev in self.devices:
            out.extend(device_endpoints(dev))
        return out

    async def start(self) -> None:
        """Start devices, then services; on a failure stop what started and raise
        :class:`StartError` naming the part that failed (the cause is chained)."""
        what = ""
        try:
            for dev in self.devices:
                what = f"device {dev.name}"
                await dev.start()
                self._started_devices.append(dev)
            for svc in self.services:
                what = f"service {svc.name}"
                await svc.start()
                self._started_services.append(svc)
                log.info("service %s started: %s", svc.name,
                         ", ".join(_fmt_ep(e) for e in svc.endpoints()) or "no endpoints")
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, StartError):
                raise StartError(self.name, what, exc) from exc
            raise

    async def stop(self) -> None:
        while self._started_services:
            svc = self._started_services.pop()
            try:
                await svc.stop()
            except Exception:
                log.exception("service %s failed to stop cleanly", svc.name)
        while self._started_devices:
            dev = self._started_devices.pop()
            try:
                await dev.stop()
            except Exception:
                log.exception("device %s failed to stop cleanly", dev.name)

    def ready_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "node": self.name,
            "pid": os.getpid(),
            "source": self.source,
            "services": [e.to_json() for e in self.endpoints()],
        }
        # Services with more to tell a client than endpoints (the EPICS IOC: its prefix and
        # every PV name) add it under their own name.
        details: dict[str, Any] = {}
        for svc in self.services:
            extra = getattr(svc, "ready_extra", None)
            if callable(extra):
                details[svc.name] = extra()
        if details:
            info["details"] = details
        return info

    def write_ready_file(self, path: str | Path) -> None:
        write_json_atomic(Path(path), self.ready_info())


def device_endpoints(dev: Device) -> list[Endpoint]:
    """Where a device listens or connects by itself (an ``endpoints()`` method, as a
    service has); most devices have none."""
    endpoints = getattr(dev, "endpoints", None)
    return list(endpoints()) if callable(endpoints) else []


def _fmt_ep(e: Endpoint) -> str:
    if e.path:
        return f"{e.protocol} {e.path}"
    return f"{e.protocol} {e.host}:{e.port}"


def build_node(path: str | Path, *, host: str | None = None, port: int | None = None,
               state_dir: str | Path | None = None) -> Node:
    """Read a node file and build (not start) its devices and services."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError("a node file must be a mapping with node, devices and services",
                          file=str(p), line=1)
    root = Section(data, file=str(p))
    name = root.get_str("node")
    if not _NAME_RE.match(name):
        raise root.error("node", "a node name may hold letters, digits, '_' and '-' only")
    if state_dir is None:
        sd = root.get_str("state_dir", None)
        state_path = (p.parent / sd) if sd else (p.parent / ".labbridge-state" / name)
    else:
        state_path = Path(state_dir)
    ctx = NodeContext(node_name=name, config_dir=p.parent.resolve(), state_dir=state_path,
                      host_override=host, port_override=port)
    # The access policy comes first: every service factory hands ctx.gate to its links.
    ctx.gate = Gate(parse_security(root.get_section("security", None)), node=name)
    root.get_str("description", None)
    init_path = root.get_str("initialization", None)
    if init_path is not None:
        from labbridge.node.seed import load_initialization

        # Shown as the node file names it, next to the node file (not as an absolute path).
        shown = Path(init_path).expanduser()
        ctx.extra["initialization"] = load_initialization(
            shown if shown.is_absolute() else Path(os.path.normpath(p.parent / shown)))
    rhs_mode = root.get_choice("remote_hardware_server", ("relay", "command_server"), None)

    devices: list[Device] = []
    warnings: list[str] = []
    #: Who listens where (devices and services), for the port clash check.
    listening: dict[tuple[str, int], list[tuple[str | None, str]]] = {}
    #: What the node runs, for the initialization.xml cross-check: (what, kind, name, line).
    parts: list[tuple[str, str, str, int]] = []
    for sec in root.get_sections("devices", []):
        kind = sec.get_str("kind")
        kinds.load_for((kind,))
        factory = DEVICE_KINDS.get(kind)
        if factory is None:
            raise sec.error("kind", f"unknown device kind {kind!r} (known: "
                            f"{', '.join(sorted(kinds.DEVICE_FAMILIES))})")
        dname = sec.get_str("name")
        if not _NAME_RE.match(dname):
            raise sec.error("name", "a device name may hold letters, digits, '_' and '-' only")
        if dname in ctx.devices:
            raise sec.error("name", f"duplicate device name {dname!r}")
        dev: Device = _build(factory, sec, ctx)
        _consume_overridden(sec, ctx)
        sec.check_no_unknown()
        _check_ports(sec, f"device {dname!r}", device_endpoints(dev), listening)
        warnings.extend(_exposure(sec, dname, device_endpoints(dev), ctx))
        ctx.devices[dname] = dev
        devices.append(dev)
        parts.append(("device", kind, dname, sec.line_of("kind") or 0))

    services: list[Service] = []
    for i, sec in enumerate(root.get_sections("services", [])):
        kind = sec.get_str("kind")
        kinds.load_for((kind,))
        factory_s = SERVICE_KINDS.get(kind)
        if factory_s is None:
            raise sec.error("kind", f"unknown service kind {kind!r} (known: "
                            f"{', '.join(sorted(kinds.SERVICE_FAMILIES))})")
        sname = sec.get_str("name", f"{kind}-{i}")
        if sname in ctx.services:
            raise sec.error("name", f"duplicate service name {sname!r}")
        svc: Service = _build(factory_s, sec, ctx)
        svc.name = sname
        try:
            svc._kind = kind  # type: ignore[attr-defined]
        except AttributeError:  # slotted services
            pass
        _consume_overridden(sec, ctx)
        sec.check_no_unknown()
        _check_ports(sec, f"service {sname!r}", svc.endpoints(), listening)
        warnings.extend(_exposure(sec, sname, svc.endpoints(), ctx))
        ctx.services[sname] = svc
        services.append(svc)
        parts.append(("service", kind, sname, sec.line_of("kind") or 0))
        link = getattr(svc, "link", None)
        role = getattr(link, "role", None)
        if isinstance(role, str):
            parts.append(("link", role, sname, sec.line_of("kind") or 0))
    root.check_no_unknown()
    notes: list[str] = []
    if init_path is not None:
        from labbridge.node.plugins import check_plugins

        w, notes = check_plugins(root, ctx.extra["initialization"], parts, rhs_mode)
        warnings.extend(w)
    elif rhs_mode is not None:
        warnings.append(_where(root, "remote_hardware_server") + "only means something with "
                        "an initialization.xml that enables RemoteHardwareServer "
                        "(initialization:); it is ignored")
    if not devices and not services:
        raise ConfigError("the node has no devices and no services", file=str(p), line=1)
    node = Node(ctx, devices, services, source=str(p))
    node.warnings = warnings
    node.notes = notes
    return node


def _where(sec: Section, key: str) -> str:
    err = sec.error(key, "")
    return f"{err.file}:{err.line}: {err.field}: "


def _build(factory: Any, sec: Section, ctx: NodeContext) -> Any:
    """A device or service from its section. ``--host`` replaces the addresses the node
    listens on, never the ones it connects to; the factories take ``ctx.host_override``
    for their ``host``, so a part that then listens on nothing but connects to the override
    (a generation D ``hexrot_controller``, whose host is the controller; a generation A mock,
    whose host is the CSC it calls) is built again from the file's own host, with the node's
    devices and extras as they were before the first try. A device says where it listens or
    connects by an ``endpoints()`` method of its own, as services do; one without it is
    taken as it is."""
    override = ctx.host_override
    devices, extra = dict(ctx.devices), dict(ctx.extra)
    part = factory(sec, ctx)
    endpoints = getattr(part, "endpoints", None)
    if override is None or endpoints is None:
        return part
    eps = endpoints()
    if any(e.role == "listen" for e in eps) or \
            not any(e.role == "connect" and e.host == override for e in eps):
        return part
    ctx.devices.clear()
    ctx.devices.update(devices)
    ctx.extra.clear()
    ctx.extra.update(extra)
    ctx.host_override = None
    try:
        return factory(sec, ctx)
    finally:
        ctx.host_override = override


def _exposure(sec: Section, name: str, endpoints: list[Endpoint],
              ctx: NodeContext) -> list[str]:
    """A warning for each endpoint that listens beyond loopback while no non-loopback
    address or identity has a role on the node (nobody out there could use it, or the file
    forgot its access rules)."""
    policy = ctx.gate.policy
    out = []
    for ep in endpoints:
        if ep.role != "listen" or ep.path or is_loopback_host(ep.host):
            continue
        if policy.grants_beyond_loopback():
            continue
        field = "host" if "host" in sec else None
        err = sec.error(field, "")
        where = f"{err.file}:{err.line}: {err.field}" if err.field else f"{err.file}:{err.line}"
        why = ("no security section" if not policy.configured
               else "its security section gives no role to any address beyond loopback")
        out.append(f"{where}: {name} listens on {ep.host}:{ep.port} ({ep.protocol}) but "
                   f"the node has {why}: only this machine may use it; add "
                   "security.addresses (docs/security.md)")
    return out


def _consume_overridden(sec: Section, ctx: NodeContext) -> None:
    """``--host`` replaces every ``host`` of the file; a factory that takes the override
    without reading the key (``ctx.host_override or sec.get_str("host")``) must not make the
    key look unknown. It is still checked for its type, so a typo stays an error."""
    if ctx.host_override and "host" in sec:
        sec.get_str("host", None)


_ANY_HOST = ("", "0.0.0.0", "::", None)


def _check_ports(sec: Section, name: str, endpoints: list[Endpoint],
                 listening: dict[tuple[str, int], list[tuple[str | None, str]]]) -> None:
    """Two parts (services, devices that listen) of one node may not listen on the same
    port and address (port 0 excepted); a wildcard address (0.0.0.0, ::) clashes with every
    address."""
    for ep in endpoints:
        if ep.role != "listen" or not ep.port:
            continue
        proto = "udp" if ep.protocol == "udp" else "tcp"  # zmq, http, ... are TCP
        key = (proto, ep.port)
        holders = listening.setdefault(key, [])
        for host, other in holders:
            if other != name and (host == ep.host or host in _ANY_HOST
                                      or ep.host in _ANY_HOST):
                field = next((k for k in sec if sec.raw().get(k) == ep.port
                              and not isinstance(sec.raw().get(k), bool)), None)
                raise sec.error(field, f"{proto.upper()} port {ep.port} is already used by "
                                f"{other} of this node")
        holders.append((ep.host, name))


async def run_node(node: Node, *, ready_file: str | Path | None = None,
                   stop: asyncio.Event | None = None,
                   on_ready: Callable[[Node], None] | None = None) -> None:
    """Start a node, write the ready file, wait for ``stop``, stop the node.

    The ready file exists only while the node serves: one left by an earlier run is removed
    before starting (a supervisor waiting for it must not take it for this run's), and the
    file is removed again on stop. ``on_ready`` is called once everything listens (after
    the ready file is written), for a command that prints what it serves.
    """
    stop = stop or asyncio.Event()
    ready = Path(ready_file) if ready_file else None
    if ready is not None:
        ready.unlink(missing_ok=True)
    for warning in node.warnings:
        log.warning("%s", warning)
    for note in node.notes:
        log.debug("%s", note)
    await node.start()
    try:
        if ready is not None:
            node.write_ready_file(ready)
        log.info("node %s ready", node.name)
        if on_ready is not None:
            on_ready(node)
        await stop.wait()
    finally:
        log.info("node %s stopping", node.name)
        if ready is not None:
            ready.unlink(missing_ok=True)
        await node.stop()
        log.info("node %s stopped", node.name)
