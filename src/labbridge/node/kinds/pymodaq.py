"""Device and service kinds of the PyMoDAQ family (docs/pymodaq.md, spec pymodaq.md).

Node file shapes (every field read through Section getters)::

    devices:
      - {kind: camera, name: cam, width: 640, height: 480, dtype: uint16, noise: 10,
         backend: {kind: sim}}
      - {kind: stage, name: stage, units: mm, min: -50, max: 50, backend: {kind: sim, speed: 5}}
      - {kind: spectrometer, name: spectro, pixels: 1024, backend: {kind: sim}}

    services:
      - kind: pymodaq_server           # the main computer (TCPServer plugin role)
        host: 127.0.0.1                 # the default; 0.0.0.0 accepts distant computers
        port: 6341
        actuator: remote_stage          # device names the remote modules get on this node
        detector: remote_camera
        timeout: 10                     # seconds for a position query or a grab
        move_timeout: 60                # seconds for a move (null = wait forever)
        g1_dialect: "1.6"               # used to send until a client's dialect is seen
        g1_dialect_detect: auto         # or fixed
        max_message_mb: 256
        max_connections: 16
        max_per_address: 4              # connections from one host (idle ones are evicted)
        hello_timeout: 10               # seconds a connection has to send its client type
        message_timeout: 60             # seconds from a message's first byte to its last
        max_buffered_mb: 512            # unfinished-message bytes of all connections together
        tls: {cert: keys/main.crt, key: keys/main.pem, ca: keys/ca.crt}   # optional: TLS only,
                                        # client certificates required (labbridge clients)
      - kind: pymodaq_client           # the distant computer (ACTUATOR / GRABBER)
        device: cam
        server: 192.168.1.10:6341       # required: there is no default address (spec §9 #16)
        source: 192.168.1.20            # optional: the local address to connect from
        generation: g3                  # g1 (default, seed) or g3 (PyMoDAQ 5.0/5.1)
        g1_dialect: "1.6"               # 1.6 (seed) or 2.1 (PyMoDAQ 2.1 to 3.x)
        reconnect: {initial: 0.2, maximum: 5.0}
        message_timeout: 60             # seconds from a message's first byte to its last
        max_queue: 64                   # commands waiting; beyond, reading pauses
        position_interval: 0.1          # s between position reports during a move (null: off)
        tls: {cert: keys/cam.crt, key: keys/cam.pem, ca: keys/ca.crt,   # optional
              check_host: true}         # the server's certificate must name its host

Access (docs/security.md, ADR 0171): the server hands the node's gate to its link; who may
register a module is in the node file's ``security`` section (the ``operator`` role, by source
address, or by certificate over TLS).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.spectrum import SimSpectrumBackend, Spectrometer
from labbridge.devices.stage import SimStageBackend, Stage
from labbridge.links.pymodaq import PyMoDAQClient, PyMoDAQServer, RemoteActuator, RemoteDetector
from labbridge.node.config import Section
from labbridge.node.registry import Endpoint, NodeContext, register_device, register_service
from labbridge.node.tls import tls_section
from labbridge.protocol.pymodaq.messages import Dialect, Generation
from labbridge.transport.backoff import Backoff

_DIALECTS = {"1.6": Dialect.G1A, "2.1": Dialect.G1B}


def _sim_backend(sec: Section) -> Section:
    backend = sec.get_section("backend", None) or Section({"kind": "sim"}, file=sec.file,
                                                          path=sec.field_name("backend"),
                                                          line=sec.line)
    backend.get_choice("kind", ("sim",), "sim")
    return backend


@register_device("camera")
def _camera(sec: Section, ctx: NodeContext) -> Camera:
    b = _sim_backend(sec)
    backend = SimCameraBackend(
        sec.get_int("width", 640, min=1, max=16384), sec.get_int("height", 480, min=1, max=16384),
        dtype=sec.get_choice("dtype", ("uint8", "uint16", "float32", "float64"), "uint16"),
        amplitude=sec.get_float("amplitude", 1000.0), offset=sec.get_float("offset", 100.0),
        sigma=sec.get_float("sigma", 20.0, min=0.1), noise=sec.get_float("noise", 10.0, min=0),
        seed=sec.get_int("seed", 0))
    b.check_no_unknown()
    publish = sec.get_float("publish_period", 0.0, min=0.0, max=86400.0)
    return Camera(sec.get_str("name"), backend, units=sec.get_str("units", "counts"),
                  exposure_ms=sec.get_float("exposure_ms", 10.0, min=0),
                  publish_period=publish or None)


@register_device("stage")
def _stage(sec: Section, ctx: NodeContext) -> Stage:
    b = _sim_backend(sec)
    backend = SimStageBackend(b.get_float("position", 0.0), b.get_float("speed", 0.0, min=0))
    b.check_no_unknown()
    return Stage(sec.get_str("name"), backend, units=sec.get_str("units", "mm"),
                 home=sec.get_float("home", 0.0), minimum=sec.get_float("min", float("-inf")),
                 maximum=sec.get_float("max", float("inf")))


@register_device("spectrometer")
def _spectrometer(sec: Section, ctx: NodeContext) -> Spectrometer:
    b = _sim_backend(sec)
    backend = SimSpectrumBackend(sec.get_int("pixels", 1024, min=2, max=1 << 20),
                                 sec.get_float("start_nm", 400.0), sec.get_float("stop_nm", 800.0),
                                 noise=sec.get_float("noise", 0.01, min=0))
    b.check_no_unknown()
    return Spectrometer(sec.get_str("name"), backend, units=sec.get_str("units", "a.u."))


class PyMoDAQServerService:
    """``pymodaq_server``: the link server plus its two remote devices."""

    def __init__(self, server: PyMoDAQServer) -> None:
        self.server = server

    @property
    def name(self) -> str:
        return self.server.name

    @name.setter
    def name(self, value: str) -> None:
        # The node names the service; the link's log lines and the audit trail's ``via``
        # use the same name.
        self.server.name = value
        self.server.tcp.name = value

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    def endpoints(self) -> list[Endpoint]:
        tls = ", TLS with client certificates" if self.server.tls is not None else ""
        return [Endpoint(self.name, "tcp", self.server.host,
                         self.server.port or self.server.requested_port,
                         purpose=f"pymodaq remote modules (ACTUATOR, GRABBER{tls})")]


class PyMoDAQClientService:
    """``pymodaq_client``: serve a device to a PyMoDAQ-style server."""

    def __init__(self, client: PyMoDAQClient) -> None:
        self.client = client

    @property
    def name(self) -> str:
        return self.client.name

    @name.setter
    def name(self, value: str) -> None:
        self.client.name = value

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint(self.name, "tcp", self.client.host, self.client.port, role="connect",
                         purpose=f"pymodaq {self.client.client_type.value} client "
                                 f"({self.client.generation.value}"
                                 f"{', TLS' if self.client.tls is not None else ''})")]


def _position_interval(sec: Section) -> float | None:
    # null switches the reports off; absent = 0.1 s (the real DAQ_Move's polling interval)
    value: float | None = sec.get_float("position_interval", None, min=0.001)
    return value if "position_interval" in sec.raw() else 0.1


def _max_message(sec: Section) -> int:
    return int(sec.get_float("max_message_mb", 256.0, min=0.001, max=4095.0) * 1024 * 1024)


def _new_device_name(sec: Section, ctx: NodeContext, key: str, default: str) -> str:
    name: str = sec.get_str(key, default)
    if name in ctx.devices:
        raise sec.error(key, f"a device named {name!r} already exists on this node")
    return name


def _source(sec: Section) -> str | None:
    text: str | None = sec.get_str("source", None)
    if text is not None:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise sec.error("source", f"expected an IP address of this computer, got {text!r}"
                            ) from None
    return text


@register_service("pymodaq_server")
def _server(sec: Section, ctx: NodeContext) -> Any:
    timeout = sec.get_float("timeout", 10.0, min=0.001)
    # move_timeout: null waits forever for a long move (spec §7.3 [lb]); absent = 60 s.
    mt = sec.get_float("move_timeout", None, min=0.001)
    move_timeout = mt if "move_timeout" in sec.raw() else 60.0
    actuator = RemoteActuator(_new_device_name(sec, ctx, "actuator", "remote_actuator"),
                              timeout=timeout, move_timeout=move_timeout)
    detector = RemoteDetector(_new_device_name(sec, ctx, "detector", "remote_detector"),
                              timeout=timeout,
                              data_dim=sec.get_choice("data_dim", ("0D", "1D", "2D", "ND"), "2D"))
    # Safe by default: loopback unless the node file names a host.
    host, port = sec.get_str("host", "127.0.0.1"), sec.get_port("port", 6341)
    server = PyMoDAQServer(
        ctx.host_override or host, ctx.port_override if ctx.port_override is not None else port,
        name=sec.get_str("name", "pymodaq-server"), actuator=actuator, detector=detector,
        dialect=_DIALECTS[sec.get_choice("g1_dialect", tuple(_DIALECTS), "1.6")],
        detect_dialect=sec.get_choice("g1_dialect_detect", ("auto", "fixed"), "auto") == "auto",
        max_message=_max_message(sec),
        max_connections=sec.get_int("max_connections", 16, min=1),
        max_per_address=sec.get_int("max_per_address", 4, min=1),
        hello_timeout=sec.get_float("hello_timeout", 10.0, min=0.001),
        message_timeout=sec.get_float("message_timeout", 60.0, min=0.001),
        max_buffered=int(sec.get_float("max_buffered_mb", 2 * _max_message(sec) / 1024 / 1024,
                                       min=1.0, max=1 << 20) * 1024 * 1024),
        gate=ctx.gate, ssl=tls_section(sec, ctx, server=True))
    ctx.devices[actuator.name] = actuator
    ctx.devices[detector.name] = detector
    return PyMoDAQServerService(server)


@register_service("pymodaq_client")
def _client(sec: Section, ctx: NodeContext) -> Any:
    device = ctx.device(sec, "device")
    text = sec.get_str("server")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise sec.error("server", f"expected HOST:PORT, got {text!r}")
    rec = sec.get_section("reconnect", None)
    backoff = Backoff()
    if rec is not None:
        backoff = Backoff(initial=rec.get_float("initial", 0.2, min=0.001),
                          maximum=rec.get_float("maximum", 5.0, min=0.001))
        rec.check_no_unknown()
    if not (callable(getattr(device, "move_abs", None)) or callable(getattr(device, "grab", None))):
        raise sec.error("device", f"device {device.name!r} is neither an actuator nor a detector")
    client = PyMoDAQClient(
        device, host.strip("[]"), int(port_text), name=sec.get_str("name", "pymodaq-client"),
        generation=Generation(sec.get_choice("generation", ("g1", "g3"), "g1")),
        dialect=_DIALECTS[sec.get_choice("g1_dialect", tuple(_DIALECTS), "1.6")],
        backoff=backoff, max_message=_max_message(sec),
        message_timeout=sec.get_float("message_timeout", 60.0, min=0.001),
        max_queue=sec.get_int("max_queue", 64, min=1, max=1 << 16),
        position_interval=_position_interval(sec), ssl=tls_section(sec, ctx, server=False),
        source=_source(sec))
    return PyMoDAQClientService(client)
