"""Device and service kinds of the hexapod/rotator family (docs/hexrotcomm.md).

Node file shapes (every field read through Section getters)::

    devices:
      - kind: hexrot_rotator_mock        # or hexrot_simple_mock, hexrot_hexapod_mock
        name: rotator
        generation: D                    # A (seed 003) or D (real system today)
        telemetry_hz: 50                 # rotator default 50, simple default 10
        initial_position: 0.0            # rotator only
        config: {velocity_limit: 3.5, accel_limit: 1.0, upper_pos_limit: 90}
      - kind: hexrot_hexapod_mock        # generation D only
        name: hexapod
        index: camera                    # camera (SAL index 1) or m2 (2)
        telemetry_hz: 10
        config: {max_velocity_strut: 500, pos_limits: [11400, -13100, 13100, 0.36, -0.1, 0.1]}
      - kind: hexrot_controller          # the CSC-side model of a (remote) controller
        name: rot
        device: rotator                  # rotator, simple or hexapod (D only)
        generation: D
        host: 127.0.0.1                  # D: the controller's address; A: where we listen
        port: 5570                       # A: telemetry port P, commands on P+1
        connect_timeout: 10
        config_timeout: 10
        enable_drives_delay: 1.0
        replace_idle_after: 5            # A: a new controller connection replaces an idle one
        tls: {cert: csc.crt, key: csc.pem, ca: ca.crt}   # optional: labbridge at both ends
                                         # (D: check_host: false if the mock's certificate
                                         #  does not name `host`)

    services:
      - kind: hexrot_mock_controller     # the socket side of a mock device
        device: rotator                  # a hexrot_*_mock device on this node
        host: 127.0.0.1                  # D: listen here; A: the CSC to connect to
        port: 5570                       # D: listen port (0 = any); A: CSC telemetry port P
        command_port: 5571               # A only; default P+1
        replace_idle_after: 5            # D: a new CSC replaces one silent this long (s)
        tls: {cert: mock.crt, key: mock.pem, ca: ca.crt}  # optional: labbridge at both ends

Access (issue 12, docs/adr/0183): whoever listens asks the node's gate (``security``
section): on a mock (gen D) a peer needs ``observer`` to connect, ``operator`` to command or to
replace a silent CSC, ``admin`` for ``CONFIG_*``; on the CSC side (gen A) a peer needs
``operator`` to act as the controller. Whoever connects out trusts the address its node file
names. ``tls`` (files relative to the node file; made by ``labbridge keys tls-ca`` and ``keys
tls-cert``) turns on TLS with client certificates at both ends; the peer's certificate name is
its identity (``security.identities.<name>.cert``). A real controller or CSC cannot use it.
"""

from __future__ import annotations

import math
import ssl
from typing import Any

from labbridge.access import Gate
from labbridge.devices.hexrot.hexapod import HEXAPODS, HexapodMockController
from labbridge.devices.hexrot.mock import (
    BaseMockController,
    RotatorMockController,
    SimpleMockController,
)
from labbridge.links.hexrotcomm.common import REPLACE_IDLE_AFTER
from labbridge.links.hexrotcomm.controller import HexapodController, HexrotController
from labbridge.links.hexrotcomm.mock_server import MockControllerClient, MockControllerServer
from labbridge.node.config import Section
from labbridge.node.registry import Endpoint, NodeContext, register_device, register_service
from labbridge.node.tls import tls_section
from labbridge.protocol.hexrotcomm.devices import device_spec
from labbridge.protocol.hexrotcomm.framing import WireProfile
from labbridge.protocol.hexrotcomm.structs import Generation

_GENERATIONS = ("A", "D")


def _mock_config(sec: Section, cls: type[BaseMockController], generation: str) -> dict[str, Any]:
    try:
        layout = device_spec(cls.device_name, generation).config
    except ValueError as exc:
        raise sec.error("generation", str(exc)) from None
    types = {name: ftype for name, ftype, _, _ in layout.fields}
    cfg = sec.get_mapping("config", {})
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key not in layout.names:
            raise sec.error("config", f"{layout.name} has no field {key!r} (fields: "
                            f"{', '.join(layout.names)})")
        ftype = types[key]
        if ftype == "bool":
            if not isinstance(value, bool):
                raise sec.error("config", f"{key}: expected true or false")
            out[key] = value
        elif "[" in ftype:  # an array such as f64[6]
            n = int(ftype.split("[", 1)[1].rstrip("]"))
            if (not isinstance(value, list) or len(value) != n
                    or not all(_is_number(v) for v in value)):
                raise sec.error("config", f"{key}: expected a list of {n} numbers, got "
                                f"{value!r}")
            out[key] = tuple(float(v) for v in value)
        else:
            if not _is_number(value):
                raise sec.error("config", f"{key}: expected a number, got {value!r}")
            out[key] = float(value)
    return out


def _tls(sec: Section, ctx: NodeContext, *, server: bool) -> ssl.SSLContext | None:
    """The ``tls: {cert, key, ca}`` field (a connecting side may add ``check_host: false``) as
    a server context (client certificates required) or a client context; None when absent. A
    bad file is a one-line config error naming it. The same section as the Pychron command
    server's and its clients'."""
    return tls_section(sec, ctx, server=server)


def _is_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))


@register_device("hexrot_rotator_mock")
def _rotator_mock(sec: Section, ctx: NodeContext) -> RotatorMockController:
    gen = sec.get_choice("generation", _GENERATIONS, "D")
    hz = sec.get_float("telemetry_hz", 50.0, min=0.1, max=1000.0)
    return RotatorMockController(sec.get_str("name"), gen,
                                 config=_mock_config(sec, RotatorMockController, gen),
                                 telemetry_interval=1.0 / hz,
                                 initial_position=sec.get_float("initial_position", 0.0))


@register_device("hexrot_simple_mock")
def _simple_mock(sec: Section, ctx: NodeContext) -> SimpleMockController:
    gen = sec.get_choice("generation", _GENERATIONS, "D")
    hz = sec.get_float("telemetry_hz", 10.0, min=0.1, max=1000.0)
    return SimpleMockController(sec.get_str("name"), gen,
                                config=_mock_config(sec, SimpleMockController, gen),
                                telemetry_interval=1.0 / hz)


@register_device("hexrot_hexapod_mock")
def _hexapod_mock(sec: Section, ctx: NodeContext) -> HexapodMockController:
    gen = sec.get_choice("generation", _GENERATIONS, "D")  # A: refused with the reason
    hz = sec.get_float("telemetry_hz", 10.0, min=0.1, max=1000.0)
    return HexapodMockController(sec.get_str("name"), gen,
                                 index=sec.get_choice("index", tuple(HEXAPODS), "camera"),
                                 config=_mock_config(sec, HexapodMockController, gen),
                                 telemetry_interval=1.0 / hz)


@register_device("hexrot_controller")
def _controller(sec: Section, ctx: NodeContext) -> HexrotController:
    gen = sec.get_choice("generation", _GENERATIONS, "D")
    device = sec.get_choice("device", ("rotator", "simple", "hexapod"), "rotator")
    try:
        spec = device_spec(device, gen)
    except ValueError as exc:
        raise sec.error("generation", str(exc)) from None
    profile = WireProfile.make(spec, gen,
                               header_size=int(sec.get_choice("gen_a_header", ("24", "36"),
                                                              "24")))
    cls = HexapodController if device == "hexapod" else HexrotController
    # Gen A: we listen for the controller (server context); gen D: we connect to it.
    tls = _tls(sec, ctx, server=gen == "A")
    return cls(
        sec.get_str("name"), profile, ctx.host_override or sec.get_str("host", "127.0.0.1"),
        sec.get_port("port"),
        connect_timeout=sec.get_float("connect_timeout", 10.0, min=0.01),
        config_timeout=sec.get_float("config_timeout", 10.0, min=0.01),
        ack_timeout=sec.get_float("ack_timeout", 5.0, min=0.01),
        enable_drives_delay=sec.get_float("enable_drives_delay", 1.0, min=0.0),
        move_pause=sec.get_float("move_pause", 0.1 if device == "hexapod" else 0.2, min=0.0),
        replace_idle_after=sec.get_float("replace_idle_after", REPLACE_IDLE_AFTER, min=0.01),
        gate=ctx.gate, ssl=tls,
    )


class MockControllerService:
    """Runs the socket side of a mock device: gen D server, or gen A client to a CSC."""

    def __init__(self, mock: BaseMockController, host: str, port: int,
                 command_port: int | None,
                 replace_idle_after: float = REPLACE_IDLE_AFTER, *,
                 gate: Gate | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.name = "hexrot_mock_controller"
        self.mock = mock
        self.host = host
        self.port = port
        self.command_port = command_port
        self.replace_idle_after = replace_idle_after
        self.gate = gate
        self.tls = tls
        self.side: MockControllerServer | MockControllerClient | None = None

    async def start(self) -> None:
        if self.mock.generation is Generation.D:
            self.side = MockControllerServer(self.mock, self.host, self.port,
                                             replace_idle_after=self.replace_idle_after,
                                             gate=self.gate, via=self.name, ssl=self.tls)
        else:
            self.side = MockControllerClient(self.mock, self.host, self.port, self.command_port,
                                             gate=self.gate, via=self.name, ssl=self.tls)
        await self.side.start()

    async def stop(self) -> None:
        if self.side is not None:
            await self.side.close()
            self.side = None

    def endpoints(self) -> list[Endpoint]:
        # By generation, not by what runs: `labbridge ports` asks before start (issue 15 #6).
        if self.mock.generation is Generation.D:
            port = self.side.port if self.side is not None else self.port
            return [Endpoint(self.name, "tcp", self.host, port, role="listen",
                             purpose=f"hexrotcomm generation D controller "
                                     f"({self.mock.spec.name} mock)"
                                     + (", TLS" if self.tls is not None else ""))]
        cmd = self.command_port if self.command_port is not None else self.port + 1
        return [
            Endpoint(self.name, "tcp", self.host, self.port, role="connect",
                     purpose="hexrotcomm generation A telemetry (controller writes)"),
            Endpoint(self.name, "tcp", self.host, cmd, role="connect",
                     purpose="hexrotcomm generation A commands (controller reads)"),
        ]


@register_service("hexrot_mock_controller")
def _mock_service(sec: Section, ctx: NodeContext) -> MockControllerService:
    mock = ctx.device(sec, "device")
    if not isinstance(mock, BaseMockController):
        raise sec.error("device", f"device {mock.name!r} is a {mock.kind}, expected a "
                        "hexrot_rotator_mock, hexrot_simple_mock or hexrot_hexapod_mock")
    host = ctx.host_override or sec.get_str("host", "127.0.0.1")
    port = sec.get_port("port")
    if ctx.port_override is not None and mock.generation is Generation.D:
        port = ctx.port_override
    cmd_port = sec.get_port("command_port", None)
    if mock.generation is Generation.D and cmd_port is not None:
        raise sec.error("command_port", "generation D uses one socket; remove command_port")
    if mock.generation is Generation.A and port == 0:
        raise sec.error("port", "generation A connects to the CSC: give its telemetry port")
    if mock.generation is Generation.A and "replace_idle_after" in sec:
        raise sec.error("replace_idle_after", "generation A: the mock connects to the CSC; "
                        "set replace_idle_after on the side that listens")
    # Gen D: the mock listens (server context); gen A: it connects to the CSC.
    tls = _tls(sec, ctx, server=mock.generation is Generation.D)
    return MockControllerService(
        mock, host, port, cmd_port,
        sec.get_float("replace_idle_after", REPLACE_IDLE_AFTER, min=0.01),
        gate=ctx.gate, tls=tls)
