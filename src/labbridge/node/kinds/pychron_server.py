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
      frame_timeout: 10        # a request must be whole within this many seconds of its FIRST
                               # byte, however slowly it trickles (braced: ERROR 902, plain
                               # and JSON: ERROR 003; then close); also the TLS handshake's
      first_request_timeout: 30   # a connection that sends nothing this long is closed
      max_connections: 1024    # beyond, the connection idle longest is evicted
      max_per_address: 256     # connections one address may hold (default: a quarter of
                               # max_connections); its idlest goes when it opens one more
      max_connection_buffer: 262144   # bytes one connection may hold (partial request, queued
                               # requests, unread replies) before reading from it pauses
      max_server_buffer: 33554432     # bytes all connections together may hold; beyond, the
                               # connection holding the most is evicted
      tls:                     # optional: the TCP port speaks only TLS, for labbridge clients
        cert: keys/node.crt    #   this server's certificate and key, and the site CA that
        key: keys/node.pem     #   signed the clients' certificates (`labbridge keys tls-ca`,
        ca: keys/ca.crt        #   `keys tls-cert`); paths relative to this file. A client
                               #   certificate is required; its common name is an identity
                               #   of the security section (identities.<name>.cert), whose
                               #   role applies. UDP stays plain (docs/security.md)

A client of such a server (``remote_manager``, the web dashboard's ``command_servers``) takes
``tls: {ca, cert, key}`` (its own certificate, and the CA that signed the server's) and
``check_host`` (default true: the server's certificate must name the host connected to).
Every ``tls:`` is read by :func:`labbridge.node.tls.tls_section` (imported here under the
same name for the client kinds that took it from this module).
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
from labbridge.node.tls import tls_section

#: A braced frame is at most 65535 bytes plus its header: a connection must be able to hold one.
_MIN_CONNECTION_BUFFER = 64 * 1024


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
    max_connections = sec.get_int("max_connections", 1024, min=1, max=100000)
    conn_buffer = sec.get_int("max_connection_buffer", 256 * 1024, min=_MIN_CONNECTION_BUFFER,
                              max=1 << 30)
    server_buffer = sec.get_int("max_server_buffer", max(32 << 20, conn_buffer),
                                min=_MIN_CONNECTION_BUFFER, max=1 << 36)
    if server_buffer < conn_buffer:
        raise sec.error("max_server_buffer", f"must be at least max_connection_buffer "
                                             f"({conn_buffer}), got {server_buffer}")
    settings = ServerSettings(
        quiet_gap=sec.get_float("quiet_gap", 0.05, min=0.001, max=10.0),
        frame_timeout=sec.get_float("frame_timeout", 10.0, min=0.1, max=3600.0),
        first_request_timeout=sec.get_float("first_request_timeout", 30.0, min=0.1),
        max_connections=max_connections,
        max_per_address=sec.get_int("max_per_address", None, min=1, max=max_connections),
        max_connection_buffer=conn_buffer,
        max_server_buffer=server_buffer,
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
        name=sec.get_str("name", "command-server"), ssl=tls_section(sec, ctx, server=True))
