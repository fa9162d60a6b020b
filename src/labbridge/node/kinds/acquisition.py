"""Service kind ``remote_manager``: the acquisition side of a remote node (seed 002).

Each remote node is one ``remote_manager``, described as the seed describes it: by a device
YAML file on the acquisition computer (``device_file``) or the same fields inline. The
``klass`` says what the remote node is (spec pychron.md 16.2):

* ``RemoteExtractionLineManager`` / ``PychronGPActuator``: valves (``lab.line`` in scripts);
* ``RemoteFurnaceManager`` / ``NMGRLFurnaceEurotherm``: a furnace (``lab.furnace``);
* ``RemoteLaserManager``: a laser (``lab.laser``);
* ``ArgusSpectrometer`` / ``QtegraSpectrometer``: Qtegra's RemoteControlServer
  (``lab.spectrometer``; port 1069 by default, plain text, ``transport: UDP`` for the real
  default).

Node file shape::

    - kind: remote_manager
      name: extraction-line
      device_file: seed/extraction_line.yaml   # the seed's device YAML (either shape), or:
      klass: RemoteExtractionLineManager       # inline: klass, host, port, timeout, kind
      host: 127.0.0.1
      port: 1061
      timeout: 2
      transport: TCP           # or UDP (inline form; a device file says kind: UDP)
      framing: braced          # braced (labbridge nodes, default) | plain | json (real Pychron)
      monitor: {state_freq: 3, lock_freq: 5, owner_freq: 5, checksum_freq: 3,
                update_period: 1}
      bus: tcp://127.0.0.1:5555   # the valve node's notifier: pushed changes, gap detection
      # with Curve: bus: {url: ..., server_key: keys/valves.key, client_key: keys/me.key_secret}
      tls: {ca: keys/ca.crt, cert: keys/acq.crt, key: keys/acq.pem}   # optional: the node's
                               # command server has a tls section (docs/security.md);
                               # check_host: true (default) wants the host in its certificate

For valves it builds a :class:`PychronClient`, :class:`RemoteValves` and a
:class:`StatusMonitor`, and adds a proxy device (named after the service) to the node so the bus
and the web page show the remote valves like local ones. A peer that is down at start, or goes
away later, is retried with backoff; the status goes to ``node_unreachable`` after three failed
polls and back to ``ok``. For a furnace, laser or spectrometer it builds the client proxy of
:mod:`labbridge.links.pychron.clients` (``monitor`` and ``bus`` are valve settings); a node that
is down makes the script's first call to it fail with a one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.clients import QtegraSpectrometer, RemoteFurnace, RemoteLaser
from labbridge.links.pychron.monitor import StatusMonitor
from labbridge.links.pychron.proxy import RemoteValveBankProxy
from labbridge.links.pychron.remote import RemoteValves
from labbridge.node.bus_clients import BusTarget, bus_target
from labbridge.node.config import Section
from labbridge.node.registry import NodeContext, register_service
from labbridge.node.seed import KLASSES, DeviceLink, check_host, load_device_file
from labbridge.node.tls import tls_section
from labbridge.transport.endpoint import Endpoint

log = logging.getLogger(__name__)


def read_link(sec: Section, ctx: NodeContext) -> DeviceLink:
    dfile = sec.get_str("device_file", None)
    if dfile is not None:
        return load_device_file(ctx.resolve_path(dfile))
    klass = sec.get_str("klass", "RemoteExtractionLineManager")
    role = KLASSES.get(klass)
    if role is None:
        raise sec.error("klass", f"unknown klass {klass!r} (known: {', '.join(sorted(KLASSES))})")
    return DeviceLink(sec.get_str("name", klass), klass, role, check_host(sec, "host"),
                      sec.get_port("port", 1069 if role == "spectrometer" else 1061),
                      sec.get_float("timeout", 2.0, min=0.001),
                      sec.get_choice("transport", ("TCP", "UDP"), "TCP"), sec.file or "", "inline")


class RemoteManagerService:
    """Client link + StatusMonitor + proxy device for one remote valve node."""

    def __init__(self, name: str, link: DeviceLink, client: PychronClient,
                 monitor_kw: dict[str, Any], bus: str | None,
                 bus_url: Callable[[], str] | None = None) -> None:
        self.name = name
        self.link = link
        self.client = client
        self.remote = RemoteValves(client)
        self.proxy: RemoteValveBankProxy | None = None
        self.monitor = StatusMonitor(self.remote, **monitor_kw)
        self.bus = bus
        #: What to connect to for ``bus`` (a URL, carrying Curve keys when it has them),
        #: resolved at start.
        self.bus_url = bus_url
        self._subscriber: Any = None

    def attach(self, proxy: RemoteValveBankProxy) -> None:
        self.proxy = proxy
        self.monitor.on_change = proxy.on_change
        self.monitor.on_status = proxy.on_status

    async def start(self) -> None:
        await self.monitor.start()
        if self.bus:
            from labbridge.bus.subscriber import Subscriber

            sub = Subscriber([self.bus_url() if self.bus_url is not None else self.bus])
            sub.add_listener(self._on_bus)
            sub.add_gap_listener(lambda gap: self.monitor.gap_detected())
            await sub.start()
            self._subscriber = sub

    def _on_bus(self, topic: str, payload: Any, meta: Any) -> None:
        self.monitor.bus_alive()
        if isinstance(payload, dict) and "state" in payload and "locked" in payload:
            name = topic.rsplit(".", 1)[-1]
            if isinstance(payload.get("name"), str):  # legacy "pychron {...}" events
                name = payload["name"]
            if name in self.monitor.valves or not self.monitor.valves:
                self.monitor.push(name, state=bool(payload["state"]),
                                  locked=bool(payload["locked"]),
                                  owner=str(payload.get("owner") or ""))

    async def stop(self) -> None:
        if self._subscriber is not None:
            await self._subscriber.stop()
            self._subscriber = None
        await self.monitor.stop()
        await self.client.close()

    def endpoints(self) -> list[Endpoint]:
        eps = [Endpoint(self.name, self.link.kind.lower(), self.link.host, self.link.port,
                        role="connect", purpose=f"pychron commands ({self.link.klass})")]
        if self.bus:
            host, _, port = self.bus.removeprefix("tcp://").rpartition(":")
            eps.append(Endpoint(self.name, "zmq-sub", host, int(port) if port.isdigit()
                                else None, role="connect", purpose="valve changes (bus)"))
        return eps


class RemoteInstrumentService:
    """The acquisition side of a furnace, laser or spectrometer node: one client proxy,
    reachable by scripts as ``lab.furnace`` / ``lab.laser`` / ``lab.spectrometer`` (the
    attribute named after the link's role)."""

    def __init__(self, name: str, link: DeviceLink, proxy: Any) -> None:
        self.name = name
        self.link = link
        self.client: PychronClient = proxy.client
        self.instrument = proxy
        setattr(self, link.role, proxy)

    async def start(self) -> None:
        """Nothing to do: the client connects on its first request (and reconnects with
        backoff), so a node that starts after this one is no error."""

    async def stop(self) -> None:
        await self.instrument.close()

    def endpoints(self) -> list[Endpoint]:
        what = {"furnace": "furnace commands", "laser": "laser commands",
                "spectrometer": "Qtegra RemoteControlServer"}[self.link.role]
        return [Endpoint(self.name, self.link.kind.lower(), self.link.host, self.link.port,
                         role="connect", purpose=f"{what} ({self.link.klass})")]


def _instrument(sec: Section, ctx: NodeContext, link: DeviceLink) -> RemoteInstrumentService:
    for key in ("monitor", "bus"):
        if key in sec:
            raise sec.error(key, f"{key} is a setting of a valve link; {link.klass} is a "
                            f"{link.role}")
    udp = link.kind == "UDP"
    if link.role == "spectrometer":
        # Qtegra's RemoteControlServer speaks plain text only (spec pychron.md 12).
        sec.get_choice("framing", ("plain",), "plain")
        if "tls" in sec:
            raise sec.error("tls", "Qtegra's RemoteControlServer has no TLS")
        proxy: Any = QtegraSpectrometer(PychronClient(link.host, link.port, framing="plain",
                                                      udp=udp, timeout=link.timeout))
    else:
        framing = sec.get_choice("framing", ("braced", "plain", "json"), "braced")
        tls = tls_section(sec, ctx, server=False)
        if tls is not None and udp:
            raise sec.error("tls", "TLS runs over TCP; this link is UDP (transport/kind: TCP)")
        client = PychronClient(link.host, link.port, framing=framing, udp=udp,
                               timeout=link.timeout, ssl=tls)
        proxy = (RemoteFurnace if link.role == "furnace" else RemoteLaser)(client)
    return RemoteInstrumentService(sec.get_str("name", link.role), link, proxy)


@register_service("remote_manager")
def _remote_manager(sec: Section, ctx: NodeContext) -> RemoteManagerService | \
        RemoteInstrumentService:
    link = read_link(sec, ctx)
    if link.role != "valves":
        return _instrument(sec, ctx, link)
    framing = sec.get_choice("framing", ("braced", "plain", "json"), "braced")
    tls = tls_section(sec, ctx, server=False)
    if tls is not None and link.kind == "UDP":
        raise sec.error("tls", "TLS runs over TCP; this link is UDP (transport/kind: TCP)")
    client = PychronClient(link.host, link.port, framing=framing, udp=link.kind == "UDP",
                           timeout=link.timeout, ssl=tls)
    mon = sec.get_section("monitor", None)
    monitor_kw: dict[str, Any] = {}
    if mon is not None:
        for key in ("state_freq", "lock_freq", "owner_freq", "checksum_freq"):
            if key in mon:
                monitor_kw[key] = mon.get_int(key, min=1)
        if "update_period" in mon:
            monitor_kw["update_period"] = mon.get_float("update_period", min=0.001)
        mon.check_no_unknown()
    name = sec.get_str("name", "extraction-line")
    bus: BusTarget | None = bus_target(sec, "bus", ctx, "remote manager")
    svc = RemoteManagerService(name, link, client, monitor_kw,
                               None if bus is None else bus.label,
                               None if bus is None else (lambda: bus.resolve(ctx)))
    proxy = RemoteValveBankProxy(name.replace(" ", "_"), svc.remote, svc.monitor)
    svc.attach(proxy)
    ctx.devices.setdefault(proxy.name, proxy)
    return svc
