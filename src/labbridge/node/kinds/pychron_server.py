"""Service kind ``pychron_command_server``: the RemoteCommandServer of a node.

Node file shape::

    - kind: pychron_command_server
      name: command-server
      host: 0.0.0.0            # default 127.0.0.1; the seed's server YAML uses 0.0.0.0
      port: 1061               # the seed's default; 8000 for the real tx server; 0 = any
      udp: true                # also answer UDP datagrams on the same port (real clients
                               # default to UDP)
      udp_port: 1062           # or on another port
      allow: [192.168.1.0/24]  # an extra filter: only these networks may connect at all ([] =
                               # nobody); who may do what is the node's security section
      devices: [valves, gauges, AFlag]   # default: every valve bank, flag and gauge controller
      quiet_gap: 0.05          # seconds of silence that end an unterminated request
      frame_timeout: 10        # a partial braced frame older than this gets ERROR 902
"""

from __future__ import annotations

from collections.abc import Callable

from labbridge.devices.base import Device
from labbridge.devices.flags import Flag
from labbridge.devices.gauges import GaugeController
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.dispatch import CommandSet, Dispatcher
from labbridge.links.pychron.server import PychronCommandServer, ServerSettings
from labbridge.links.pychron.valves import ValveCommands
from labbridge.node.config import Section
from labbridge.node.registry import NodeContext, register_service

#: Other families add command sets for their device types here (furnace, laser...):
#: a function from the node's selected devices to a CommandSet, or None when none apply.
COMMAND_SET_BUILDERS: list[Callable[[list[Device]], CommandSet | None]] = []


def _valve_set(devices: list[Device]) -> CommandSet | None:
    banks = [d for d in devices if isinstance(d, ValveBank)]
    flags = [d for d in devices if isinstance(d, Flag)]
    gauges = [d for d in devices if isinstance(d, GaugeController)]
    if not (banks or flags or gauges):
        return None
    return ValveCommands(banks, flags, gauges)


COMMAND_SET_BUILDERS.append(_valve_set)


@register_service("pychron_command_server")
def _command_server(sec: Section, ctx: NodeContext) -> PychronCommandServer:
    names = sec.get_list("devices", None)
    if names is None:
        devices = list(ctx.devices.values())
    else:
        devices = []
        for n in names:
            dev = ctx.devices.get(str(n))
            if dev is None:
                raise sec.error("devices", f"no device named {n!r} on this node")
            devices.append(dev)
    sets = [s for s in (b(devices) for b in COMMAND_SET_BUILDERS) if s is not None]
    if not sets:
        raise sec.error("devices", "none of these devices speaks the Pychron command set")
    settings = ServerSettings(
        quiet_gap=sec.get_float("quiet_gap", 0.05, min=0.001, max=10.0),
        frame_timeout=sec.get_float("frame_timeout", 10.0, min=0.1, max=3600.0),
        first_request_timeout=sec.get_float("first_request_timeout", 30.0, min=0.1),
        max_connections=sec.get_int("max_connections", 1024, min=1, max=100000),
        allow=sec.get_networks("allow", None),
    )
    host = sec.get_str("host", "127.0.0.1")
    if ctx.host_override:
        host = ctx.host_override
    port = sec.get_port("port", 1061)
    if ctx.port_override is not None and not ctx.extra.get("port_override_used"):
        port = ctx.port_override
        ctx.extra["port_override_used"] = True
    return PychronCommandServer(
        Dispatcher(sets, ctx.gate), host, port, udp=sec.get_bool("udp", False),
        udp_port=sec.get_port("udp_port", None), settings=settings,
        name=sec.get_str("name", "command-server"))
