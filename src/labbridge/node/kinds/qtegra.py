"""Device kind ``mass_spectrometer`` and service kind ``qtegra_server`` (spec pychron.md 12).

Node file shapes::

    - kind: mass_spectrometer
      name: argus
      seed: 1                        # noise seed (omit for a random one)
      integration_time: 1.048576     # seconds
      magnet_dac: 5.0                # initial magnet DAC
      detectors: {H2: 0.2, H1: 0.1, AX: 0.0, L1: -0.1, L2: -0.2, CDD: -0.3}   # DAC offsets
      peaks:                         # intensity in volts; dac = centre on the axial cup
        - {name: Ar40, dac: 5.0, intensity: 5.0, width: 0.02, sigma: 0.002}
        - {name: Ar36, dac: 4.5, intensity: 0.017}
      johnson: 2.0e-5                # volts of amplifier noise for a 1 s integration
      baseline: 0.0
      settle: 0.05                   # seconds a magnet move takes at least
      seconds_per_dac: 0.2           # plus this per DAC unit
      valves: [Valve1, Valve2]
      parameters: {"Trap Current Readback": 200.0}

    - kind: qtegra_server
      name: qtegra
      device: argus
      host: 127.0.0.1
      port: 1069                     # the real RemoteControlServer's port
      udp: true                      # the real default transport (TCP is always served too)
"""

from __future__ import annotations

from labbridge.devices.spectrometer import DEFAULT_DETECTORS, Peak, Spectrometer
from labbridge.links.pychron.qtegra import QtegraServer
from labbridge.node.config import Section
from labbridge.node.registry import NodeContext, register_device, register_service


def _peaks(sec: Section) -> list[Peak] | None:
    secs = sec.get_sections("peaks", None)
    if secs is None:
        return None
    peaks = []
    for p in secs:
        peaks.append(Peak(p.get_str("name"), p.get_float("dac", min=0.0, max=10.0),
                          p.get_float("intensity", min=0.0, max=1e3),
                          width=p.get_float("width", 0.02, min=0.0, max=10.0),
                          sigma=p.get_float("sigma", 0.002, min=1e-6, max=1.0)))
        p.check_no_unknown()
    if not peaks:
        raise sec.error("peaks", "give at least one peak (or leave 'peaks' out)")
    return peaks


@register_device("mass_spectrometer")
def _make_spectrometer(sec: Section, ctx: NodeContext) -> Spectrometer:
    detectors = DEFAULT_DETECTORS
    raw = sec.get_mapping("detectors", None)
    if raw is not None:
        detectors = {}
        for k, v in raw.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise sec.error("detectors", f"detector {k!r}: expected a DAC offset number")
            detectors[str(k)] = float(v)
        if not detectors:
            raise sec.error("detectors", "give at least one detector")
    params = {}
    for k, v in (sec.get_mapping("parameters", {}) or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise sec.error("parameters", f"parameter {k!r}: expected a number")
        params[str(k)] = float(v)
    valves = [str(v) for v in sec.get_list("valves", ["Valve1", "Valve2"])]
    return Spectrometer(
        sec.get_str("name"), _peaks(sec), detectors=detectors, seed=sec.get_int("seed", None),
        integration_time=sec.get_float("integration_time", 1.048576, min=0.001, max=1000.0),
        johnson=sec.get_float("johnson", 2e-5, min=0.0, max=1.0),
        baseline=sec.get_float("baseline", 0.0, min=-10.0, max=10.0),
        magnet_dac=sec.get_float("magnet_dac", 0.0, min=0.0, max=10.0),
        settle=sec.get_float("settle", 0.05, min=0.0, max=60.0),
        seconds_per_dac=sec.get_float("seconds_per_dac", 0.2, min=0.0, max=60.0),
        valves=valves, parameters=params,
        poll_period=sec.get_float("poll_period", 0.0, min=0.0, max=86400.0) or None)


@register_service("qtegra_server")
def _qtegra(sec: Section, ctx: NodeContext) -> QtegraServer:
    dev = ctx.device(sec, "device", Spectrometer)
    assert isinstance(dev, Spectrometer)
    host = sec.get_str("host", "127.0.0.1")
    if ctx.host_override:
        host = ctx.host_override
    port = sec.get_port("port", 1069)
    if ctx.port_override is not None and not ctx.extra.get("port_override_used"):
        port = ctx.port_override
        ctx.extra["port_override_used"] = True
    return QtegraServer(dev, host, port, udp=sec.get_bool("udp", True),
                        udp_port=sec.get_port("udp_port", None),
                        name=sec.get_str("name", "qtegra"), gate=ctx.gate)
