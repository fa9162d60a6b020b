"""Service kind ``epics_ioc``: the node's devices as process variables of an embedded IOC.

Node file shape (every field optional)::

    - kind: epics_ioc
      name: epics
      prefix: LAB              # record names are <prefix>:<device>:<field>; default: node name
      host: 127.0.0.1          # interface the CA and PVA servers bind (default: loopback only)
      ca_port: 5064            # CA server TCP port and UDP search port; 0 = a free port
      pva_port: 5075           # pvAccess server TCP port; 0 = a free port
      pva_udp_port: 5076       # pvAccess search UDP port; 0 = a free port
      image_port: 0            # NTNDArray (camera) pvAccess server, TCP; 0 = any
      image_udp_port: 0        # its search UDP port; 0 = any
      devices: [valves, gauges]   # default: every device the EPICS face knows
      write_timeout: 30        # seconds a client's write may wait for the device
      gauge_alarms:            # HIGH and HIHI limits (torr) per controller and gauge
        gauges: {IG: [1.0e-6, 1.0e-5]}

Who may read and write comes from the node's ``security`` section (docs/epics.md, "Who may
write"): every write passes the node's gate, and the IOC's EPICS access security is made from
the same policy. One IOC per process (EPICS base initialises one). Needs
``pip install 'labbridge[epics]'``.
The records, the threads and the refusals are described in labbridge.links.epics.
"""

from __future__ import annotations

import importlib.util

from labbridge.devices.base import Device
from labbridge.links.epics.ioc import EpicsIoc, IocSettings
from labbridge.node.config import Section
from labbridge.node.registry import NodeContext, register_service


def _alarms(sec: Section) -> dict[str, dict[str, tuple[float, float]]]:
    raw = sec.get_mapping("gauge_alarms", None)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for ctrl, gauges in (raw or {}).items():
        if not isinstance(gauges, dict):
            raise sec.error("gauge_alarms", f"{ctrl}: expected {{gauge: [high, hihi]}}")
        for g, lim in gauges.items():
            if not (isinstance(lim, list) and len(lim) == 2
                    and all(isinstance(v, int | float) and not isinstance(v, bool)
                            for v in lim) and 0 < lim[0] < lim[1]):
                raise sec.error("gauge_alarms", f"{ctrl}.{g}: expected [high, hihi] with "
                                "0 < high < hihi")
            out.setdefault(str(ctrl), {})[str(g)] = (float(lim[0]), float(lim[1]))
    return out


@register_service("epics_ioc")
def _epics_ioc(sec: Section, ctx: NodeContext) -> EpicsIoc:
    if importlib.util.find_spec("softioc") is None:
        raise sec.error("kind", "the EPICS IOC needs pythonSoftIOC and p4p: "
                        "pip install 'labbridge[epics]'")
    names = sec.get_list("devices", None)
    devices: list[Device] = []
    if names is None:
        devices = list(ctx.devices.values())
    else:
        for n in names:
            dev = ctx.devices.get(str(n))
            if dev is None:
                raise sec.error("devices", f"no device named {n!r} on this node")
            devices.append(dev)
    host = sec.get_str("host", "127.0.0.1")
    if ctx.host_override:
        host = ctx.host_override
    settings = IocSettings(
        prefix=sec.get_str("prefix", ctx.node_name),
        host=host,
        ca_port=sec.get_port("ca_port", 5064),
        pva_port=sec.get_port("pva_port", 5075),
        pva_udp_port=sec.get_port("pva_udp_port", 5076),
        image_port=sec.get_port("image_port", 0),
        image_udp_port=sec.get_port("image_udp_port", 0),
        write_timeout=sec.get_float("write_timeout", 30.0, min=0.1, max=3600.0),
        gauge_alarms=_alarms(sec),
    )
    try:
        ioc = EpicsIoc(sec.get_str("name", "epics"), devices, settings, gate=ctx.gate)
    except ValueError as exc:
        raise sec.error("prefix", str(exc)) from None
    if not ioc.records:
        raise sec.error("devices", "none of these devices has EPICS records (known: valve "
                        "banks, gauges, furnace, laser, spectrometer, camera, stage, rotator)")
    return ioc
