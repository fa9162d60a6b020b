"""Service kinds of the legacy relay (spec pychron.md sections 3.3, 3.4, 10).

Node file shapes::

    - kind: relay_processor            # the CommandProcessor, inside the hardware process
      name: processor
      path: hardware-extractionline    # Unix socket; relative = in a private runtime
                                       # directory: $XDG_RUNTIME_DIR/labbridge, else
                                       # <state_dir>/run (mode 0700; never /tmp)
      handlers:                        # request type -> devices whose command sets answer it
        Extractionline: [valves, gauges]   # default: every device of the node
        Hardware: [furnace]
      # "System" (the seed's type) always means Extractionline; "test" always echoes.

    - kind: relay_front_server         # the RemoteHardwareServer
      name: front
      host: 127.0.0.1
      port: 1061
      udp: true
      path: hardware-extractionline    # where the processor listens
      process_type: Extractionline     # prepended to every request (seed: System)
      timeout: 5                       # seconds for the processor's reply
      max_connections: 8               # parallel requests to the processor
      http: true                       # also take the HTTP GET form on the TCP port:
                                       # `GET /Open%20A HTTP/1.0` -> 200, body "OK\n"
      http_hosts: [valve-pc.lab]       # names (besides IP addresses and localhost) an HTTP
                                       # request's Host may give; others get 403
      legacy_cfg: servers/system.cfg   # optional: a legacy RHS .cfg ([General] class/host/
                                       # port, [Requests] type, [Repeater] path) as defaults
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

from labbridge.devices.base import Device
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.relay import CommandRepeater, RelayFrontServer, RelayProcessor
from labbridge.node.config import ConfigError, Section
from labbridge.node.kinds import pychron_server
from labbridge.node.registry import NodeContext, register_service
from labbridge.protocol.pychron.relay import PROCESS_TYPES
from labbridge.transport.unix import MAX_SOCKET_PATH, resolve_socket_path


def _socket_path(sec: Section, ctx: NodeContext, default: str = "hardware-extractionline",
                 ) -> str:
    """The socket's path: absolute as given, relative ones in the node's private runtime
    directory (:mod:`labbridge.transport.unix`; a fixed name in a world-writable directory
    could be squatted by another user)."""
    path = resolve_socket_path(sec.get_str("path", default), ctx.state_dir.absolute())
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise sec.error("path", f"a Unix socket path may hold at most {MAX_SOCKET_PATH} bytes, "
                        f"{path!r} has {len(path.encode())}: give an absolute path in a "
                        "shorter private directory (mode 0700), or set XDG_RUNTIME_DIR")
    return path


def _dispatcher(sec: Section, key: str, devices: list[Device], ctx: NodeContext) -> Dispatcher:
    sets = [s for s in (b(devices) for b in pychron_server.COMMAND_SET_BUILDERS)
            if s is not None]
    if not sets:
        raise sec.error(key, "none of these devices speaks a Pychron command set")
    try:
        return Dispatcher(sets, ctx.gate)
    except ValueError as exc:
        raise sec.error(key, str(exc)) from None


@register_service("relay_processor")
def _processor(sec: Section, ctx: NodeContext) -> RelayProcessor:
    handlers: dict[str, Dispatcher] = {}
    hsec = sec.get_section("handlers", None)
    if hsec is None:
        handlers["Extractionline"] = _dispatcher(sec, "handlers",
                                                 list(ctx.devices.values()), ctx)
    else:
        for ptype in list(hsec):
            if ptype not in PROCESS_TYPES or ptype in ("test", "System"):
                raise hsec.error(ptype, f"unknown request type {ptype!r} (known: "
                                 "Extractionline, Diode, Synrad, CO2, UV, Hardware)")
            devices: list[Device] = []
            for n in hsec.get_list(ptype):
                dev = ctx.devices.get(str(n))
                if dev is None:
                    raise hsec.error(ptype, f"no device named {n!r} on this node")
                devices.append(dev)
            handlers[ptype] = _dispatcher(hsec, ptype, devices, ctx)
    return RelayProcessor(_socket_path(sec, ctx), handlers, name=sec.get_str("name", "processor"))


def _legacy_cfg(sec: Section, ctx: NodeContext) -> dict[str, Any]:
    """Defaults from a legacy RemoteHardwareServer ``<root>/servers/<name>.cfg`` (spec 10).

    ``[General] class`` (TCPServer / UDPServer), ``host``, ``port``; ``[Requests] type``;
    ``[Repeater] path``. Fields of the node file win over the ``.cfg``.
    """
    name = sec.get_str("legacy_cfg", None)
    if name is None:
        return {}
    path = ctx.resolve_path(name)
    cp = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            cp.read_file(fh)
    except (OSError, configparser.Error) as exc:
        raise sec.error("legacy_cfg", f"cannot read {path}: {exc}") from None
    out: dict[str, Any] = {}
    try:
        kind = cp.get("General", "class", fallback="TCPServer")
        if kind not in ("TCPServer", "UDPServer"):
            raise ConfigError(f"[General] class {kind!r}: only TCPServer and UDPServer can "
                              "front a relay", file=str(path))
        out["udp"] = kind == "UDPServer"
        if cp.has_option("General", "host"):
            out["host"] = cp.get("General", "host")
        if cp.has_option("General", "port"):
            out["port"] = _cfg_port(cp, path)
        if cp.has_option("Requests", "type"):
            out["process_type"] = cp.get("Requests", "type")
        if cp.has_option("Repeater", "path"):
            out["path"] = cp.get("Repeater", "path")
    except ValueError as exc:
        raise ConfigError(str(exc), file=str(path)) from None
    if out.get("process_type", "Extractionline") not in PROCESS_TYPES:
        raise ConfigError(f"[Requests] type {out['process_type']!r} is not a relay type",
                          file=str(path))
    return out


def _cfg_line(path: Path, section: str, option: str) -> int | None:
    """Line number of ``option`` in ``[section]`` of an INI file (configparser keeps none)."""
    current = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for n, line in enumerate(lines, 1):
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            current = m.group(1).strip()
        elif current == section and re.match(rf"\s*{re.escape(option)}\s*[=:]", line,
                                              re.IGNORECASE):
            return n
    return None


def _cfg_port(cp: configparser.ConfigParser, path: Path) -> int:
    raw = cp.get("General", "port")
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"[General] port {raw!r} is not a port number (0-65535)",
                          file=str(path), line=_cfg_line(path, "General", "port"),
                          field="port")
    return port


@register_service("relay_front_server")
def _front(sec: Section, ctx: NodeContext) -> RelayFrontServer:
    legacy = _legacy_cfg(sec, ctx)
    ptype = sec.get_choice("process_type", PROCESS_TYPES,
                           legacy.get("process_type", "Extractionline"))
    repeater = CommandRepeater(
        _socket_path(sec, ctx, legacy.get("path", "hardware-extractionline")), ptype,
        timeout=sec.get_float("timeout", 5.0, min=0.01, max=3600.0),
        max_connections=sec.get_int("max_connections", 8, min=1, max=1024))
    host = sec.get_str("host", legacy.get("host", "127.0.0.1"))
    if ctx.host_override:
        host = ctx.host_override
    port = sec.get_port("port", legacy.get("port", 1061))
    if ctx.port_override is not None and not ctx.extra.get("port_override_used"):
        port = ctx.port_override
        ctx.extra["port_override_used"] = True
    http = sec.get_bool("http", True)
    http_hosts = [str(h) for h in sec.get_list("http_hosts", [])]
    for h in http_hosts:
        if not h.strip() or any(c in h for c in " /:[]"):
            raise sec.error("http_hosts", f"expected host names (valve-pc.lab), got {h!r}")
    return RelayFrontServer(repeater, host, port,
                            udp=sec.get_bool("udp", legacy.get("udp", False)),
                            udp_port=sec.get_port("udp_port", None),
                            name=sec.get_str("name", "front"), http=http,
                            http_hosts=http_hosts)
