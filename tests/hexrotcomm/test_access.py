"""Access on the hexrotcomm family (issue 12), on real loopback sockets.

Linux routes all of 127.0.0.0/8 to loopback, so a peer bound to 127.0.0.2, .3 or .4 is a
distinct source address: the node files below make .2 an operator, .3 an observer and give .4
nothing; 127.0.0.1 is admin. Generation D: the test is the CSC, speaking raw hexrotcomm to
the node's mock controllers. Generation A: the test is the controller, connecting to the
node's CSC-side sockets. TLS: certificates made by ``labbridge keys``.

Replacing a silent client depends on time; the tests give the one-client server a clock they
advance instead of waiting (``OneClientServer(clock=...)``, set before any client connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from labbridge.devices.hexrot.hexapod import HexapodMockController
from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.node.config import ConfigError
from labbridge.node.node import Node, build_node
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.hexrotcomm import Generation, WireProfile
from labbridge.protocol.hexrotcomm.devices import (
    HexapodCommandCode,
    RotatorCommandCode,
    RotatorCommandCodeA,
    RotatorEnabledSubstateParam,
)
from labbridge.protocol.hexrotcomm.framing import CommandDecoder, FrameDecoder, FrameKind
from labbridge.protocol.hexrotcomm.structs import (
    CommandStatusCode,
    ControllerState,
    SetStateParam,
)
from labbridge.protocol.hexrotcomm.tai import current_tai
from labbridge.transport.tls import client_context
from tests.cli_helpers import run_cli

ADMIN, OPERATOR, OBSERVER, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"
T = 10.0
R = RotatorCommandCode
H = HexapodCommandCode

SECURITY = """\
security:
  addresses:
    admin: [127.0.0.1]
    operator: [127.0.0.2]
    observer: [127.0.0.3]
"""


@contextlib.asynccontextmanager
async def running(tmp_path: Path, text: str, name: str = "node.yaml") -> AsyncIterator[Node]:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    node = build_node(path, state_dir=tmp_path / f"state-{path.stem}")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def service(node: Node, index: int = 0) -> Any:
    return node.services[index]


def fake_clock(server: Any) -> list[float]:
    """Give a OneClientServer a clock the test advances (before any client connects)."""
    now = [1000.0]
    server._clock = lambda: now[0]
    return now


def audit(node: Node) -> list[tuple[str, str, str, str]]:
    return [(e.outcome, e.verb, e.address, e.who) for e in node.ctx.gate.recent]


class RawCSC:
    """A generation-D CSC written from the wire description: one socket, bare commands out,
    frames in. ``source`` is the loopback address it connects from."""

    def __init__(self, profile: WireProfile, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.profile = profile
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(profile)
        self.counter = 0
        self.frames: list[Any] = []

    @classmethod
    async def open(cls, profile: WireProfile, port: int, source: str,
                   tls: ssl.SSLContext | None = None) -> RawCSC:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls), T)
        return cls(profile, reader, writer)

    async def next_frame(self) -> Any:
        while True:
            frame = self.decoder.next_event()
            if frame is not NEED_DATA:
                self.frames.append(frame)
                return frame
            data = await asyncio.wait_for(self.reader.read(65536), T)
            if not data:
                raise ConnectionError("closed by the controller")
            self.decoder.receive_data(data)

    async def served(self) -> None:
        """CONFIG, then TELEMETRY: what a controller sends a CSC it serves."""
        assert (await self.next_frame()).kind is FrameKind.CONFIG
        while (await self.next_frame()).kind is not FrameKind.TELEMETRY:
            pass

    async def command(self, code: int, *params: float) -> Any:
        """Send one command; its COMMAND_STATUS frame."""
        self.counter += 1
        self.writer.write(self.profile.encode_command(
            self.profile.make_command(code, self.counter, params)))
        while True:
            frame = await self.next_frame()
            if frame.kind is FrameKind.STATUS and frame.counter == self.counter:
                return frame

    async def closed(self) -> None:
        """Until the controller closes the connection (whatever it sent before)."""
        with contextlib.suppress(ConnectionError):
            while await asyncio.wait_for(self.reader.read(65536), T):
                pass

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


async def refused(port: int, source: str, tls: ssl.SSLContext | None = None,
                  send: bytes = b"") -> bytes:
    """Connect from ``source``, send ``send``; what the server sent before closing (b"" when
    refused).

    A TLS peer without a good certificate may fail in the handshake (an exception here) or,
    with TLS 1.3, only at its first read: both count as refused with nothing sent."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), ssl=tls), T)
    except (ssl.SSLError, ConnectionError):
        return b""
    got = b""
    try:
        if send:
            writer.write(send)
        while data := await asyncio.wait_for(reader.read(65536), T):
            got += data
    except (ssl.SSLError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return got


def status(frame: Any) -> tuple[CommandStatusCode, str]:
    return CommandStatusCode(frame.status), frame.reason


# -- generation D: the mock controllers -----------------------------------------------------
MOCKS = SECURITY + """\
node: mocks
devices:
  - kind: hexrot_rotator_mock
    name: rotator
    telemetry_hz: 50
  - kind: hexrot_hexapod_mock
    name: hexapod
    telemetry_hz: 50
services:
  - kind: hexrot_mock_controller
    device: rotator
    port: 0
  - kind: hexrot_mock_controller
    device: hexapod
    port: 0
"""

ROT_D = WireProfile.make(RotatorMockController("p", "D").spec, Generation.D)


async def test_observer_commands_get_no_ack_and_change_nothing(tmp_path, caplog):
    async with running(tmp_path, MOCKS) as node:
        port = service(node).side.port
        mock = node.ctx.devices["rotator"]
        csc = await RawCSC.open(ROT_D, port, OBSERVER)
        try:
            await csc.served()  # an observer may watch
            with caplog.at_level(logging.INFO):
                replies = [status(await csc.command(code, *params)) for code, params in (
                    (R.ENABLE_DRIVES, (1.0,)),
                    (R.SET_STATE, (float(SetStateParam.ENABLE),)),
                    (R.POSITION_SET, (10.0,)),
                    (R.SET_ENABLED_SUBSTATE, (float(RotatorEnabledSubstateParam.STOP),)),
                    (R.CONFIG_VEL, (1.0,)),
                )]
        finally:
            await csc.close()
        no = CommandStatusCode.NO_ACK
        assert replies == [(no, "access: observer may not enable drives"),
                           (no, "access: observer may not change state"),
                           (no, "access: observer may not move"),
                           (no, "access: observer may not stop"),
                           (no, "access: observer may not configure")]
        # Nothing reached the controller: no command counted, state and config unchanged.
        assert mock.commands_received == 0
        assert mock.state is ControllerState.STANDBY
        assert mock.config["drives_enabled"] is False and mock.config_version == 0
        events = audit(node)
        assert ("refused", "ENABLE_DRIVES", OBSERVER, OBSERVER) in events
        assert ("refused", "CONFIG_VEL", OBSERVER, OBSERVER) in events
        assert not any(e[0] == "done" for e in events)
        messages = [r.getMessage() for r in caplog.records]
        assert any("refused: SET_STATE rotator (ENABLE) by 127.0.0.3 as observer via "
                   "hexrot_mock_controller-0/tcp: SET_STATE needs the operator role" in m
                   for m in messages)


async def test_operator_commands_work_and_are_audited_config_needs_admin(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="labbridge.audit")
    async with running(tmp_path, MOCKS) as node:
        port = service(node).side.port
        mock = node.ctx.devices["rotator"]
        csc = await RawCSC.open(ROT_D, port, OPERATOR)
        try:
            await csc.served()
            ack = CommandStatusCode.ACK
            assert status(await csc.command(R.ENABLE_DRIVES, 1.0))[0] is ack
            assert status(await csc.command(R.SET_STATE, float(SetStateParam.ENABLE)))[0] is ack
            assert mock.state is ControllerState.ENABLED
            # The velocity limit is configuration: the operator may not change it.
            assert status(await csc.command(R.CONFIG_VEL, 1.0)) == (
                CommandStatusCode.NO_ACK, "access: operator may not configure")
            limit = mock.config["velocity_limit"]
            assert limit != 1.0
            # A command the controller itself refuses is audited as failed.
            assert status(await csc.command(R.SET_STATE, float(SetStateParam.ENABLE)))[0] is (
                CommandStatusCode.NO_ACK)
        finally:
            await csc.close()
        await asyncio.wait_for(service(node).side.server.wait_disconnected(), T)
        admin = await RawCSC.open(ROT_D, port, ADMIN)
        try:
            await admin.served()
            assert status(await admin.command(R.CONFIG_VEL, 1.0))[0] is CommandStatusCode.ACK
            assert mock.config["velocity_limit"] == 1.0
        finally:
            await admin.close()
        events = audit(node)
        assert ("done", "ENABLE_DRIVES", OPERATOR, OPERATOR) in events
        assert ("done", "SET_STATE", OPERATOR, OPERATOR) in events
        assert ("refused", "CONFIG_VEL", OPERATOR, OPERATOR) in events
        assert ("failed", "SET_STATE", OPERATOR, OPERATOR) in events
        assert ("done", "CONFIG_VEL", ADMIN, ADMIN) in events
        # The audit line docs/hexrotcomm.md shows.
        assert ("refused: CONFIG_VEL rotator (1) by 127.0.0.2 as operator via "
                "hexrot_mock_controller-0/tcp: CONFIG_VEL needs the admin role; 127.0.0.2 is "
                "operator") in [r.getMessage() for r in caplog.records]


async def test_hexapod_move_and_configuration_roles(tmp_path):
    profile = WireProfile.make(HexapodMockController("p", "D").spec, Generation.D)
    async with running(tmp_path, MOCKS) as node:
        port = service(node, 1).side.port
        hexapod = node.ctx.devices["hexapod"]
        pivot = tuple(hexapod.config["pivot"])
        obs = await RawCSC.open(profile, port, OBSERVER)
        try:
            await obs.served()
            assert status(await obs.command(H.POSITION_SET, 100.0, 0, 0, 0, 0, 0)) == (
                CommandStatusCode.NO_ACK, "access: observer may not move")
        finally:
            await obs.close()
        await asyncio.wait_for(service(node, 1).side.server.wait_disconnected(), T)
        op = await RawCSC.open(profile, port, OPERATOR)
        try:
            await op.served()
            assert status(await op.command(H.ENABLE_DRIVES, 1.0))[0] is CommandStatusCode.ACK
            assert status(await op.command(H.SET_STATE, float(SetStateParam.ENABLE)))[0] is (
                CommandStatusCode.ACK)
            assert status(await op.command(H.POSITION_SET, 100.0, 0, 0, 0, 0, 0))[0] is (
                CommandStatusCode.ACK)
            # The pivot and the limits rewrite the hexapod's CONFIG: admin only.
            assert status(await op.command(H.SET_PIVOTPOINT, 0.0, 0.0, 1.0)) == (
                CommandStatusCode.NO_ACK, "access: operator may not set the pivot")
            assert status(await op.command(H.CONFIG_LIMITS, 1000, -1000, 1000, 0.1, -0.1, 0.1)
                          ) == (CommandStatusCode.NO_ACK, "access: operator may not configure")
        finally:
            await op.close()
        assert hexapod.state is ControllerState.ENABLED
        assert tuple(hexapod.config["pivot"]) == pivot
        assert ("done", "POSITION_SET", OPERATOR, OPERATOR) in audit(node)
        assert ("refused", "SET_PIVOTPOINT", OPERATOR, OPERATOR) in audit(node)


async def test_stranger_is_refused_and_cannot_replace_a_quiet_csc(tmp_path, caplog):
    async with running(tmp_path, MOCKS) as node:
        server = service(node).side.server
        port = server.port
        now = fake_clock(server)
        caplog.set_level(logging.INFO)
        # Nobody connected: a stranger is refused at once, sent nothing, audited.
        assert await refused(port, STRANGER) == b""
        assert server.client_count == 0
        csc = await RawCSC.open(ROT_D, port, OPERATOR)
        try:
            await csc.served()
            now[0] += 60.0  # the CSC has been quiet for a minute (limit: 5 s)
            # A stranger and an observer may not take its place; the CSC keeps its link.
            assert await refused(port, STRANGER) == b""
            assert await refused(port, OBSERVER) == b""
            assert server.peer is not None and server.peer.startswith(OPERATOR + ":")
            assert server.replaced_count == 0 and server.rejected_count == 3
            before = len(csc.frames)
            while len(csc.frames) < before + 3:  # telemetry still flows to it
                await csc.next_frame()
            # An operator newcomer replaces the quiet CSC (logged, audited).
            newcomer = await RawCSC.open(ROT_D, port, ADMIN)
            try:
                await newcomer.served()
                await csc.closed()
                assert server.replaced_count == 1
            finally:
                await newcomer.close()
        finally:
            await csc.close()
        messages = [r.getMessage() for r in caplog.records]
        assert any("refusing connection from 127.0.0.4" in m and "has no access" in m
                   for m in messages)
        assert any("127.0.0.3" in m and "may not replace the silent client 127.0.0.2" in m
                   and "needs the operator role" in m for m in messages)
        assert any("sent nothing for 60.0 s" in m and "replacing it with 127.0.0.1" in m
                   for m in messages)
        events = audit(node)
        # The stranger's second try repeats the first refusal: counted, audited once a
        # minute with the count (the gate's flood control), never let in.
        assert events.count(("refused", "connect", STRANGER, STRANGER)) == 1
        assert node.ctx.gate.quieted >= 1
        assert ("refused", "replace client", OBSERVER, OBSERVER) in events
        assert ("done", "replace client", ADMIN, ADMIN) in events


async def test_an_observer_cannot_hold_the_controller_against_an_operator(tmp_path, caplog):
    async with running(tmp_path, MOCKS) as node:
        server = service(node).side.server
        port = server.port
        fake_clock(server)  # time stands still: the observer is never silent
        caplog.set_level(logging.INFO)
        watcher = await RawCSC.open(ROT_D, port, OBSERVER)
        try:
            await watcher.served()
            assert status(await watcher.command(R.SET_STATE, 2.0))[0] is (
                CommandStatusCode.NO_ACK)
            # Another observer is turned away (the one connection is taken)...
            assert await refused(port, OBSERVER) == b""
            # ...but an operator's CSC takes the controller from the observer at once.
            csc = await RawCSC.open(ROT_D, port, OPERATOR)
            try:
                await csc.served()
                await watcher.closed()
                assert server.peer.startswith(OPERATOR + ":")
                assert status(await csc.command(R.ENABLE_DRIVES, 1.0))[0] is (
                    CommandStatusCode.ACK)
            finally:
                await csc.close()
        finally:
            await watcher.close()
        assert ("done", "replace client", OPERATOR, OPERATOR) in audit(node)
        assert any("127.0.0.2 may command the controller; closing the connection of "
                   "127.0.0.3, who may only watch" in r.getMessage() for r in caplog.records)


# -- generation A: our CSC-side sockets ----------------------------------------------------
CSC_A = SECURITY + """\
node: csc
devices:
  - kind: hexrot_controller
    name: rot
    device: rotator
    generation: A
    port: 0
    connect_timeout: 10
"""

ROT_A = WireProfile.make(RotatorMockController("p", "A").spec, Generation.A)


class RawControllerA:
    """A generation-A controller from ``source``: telemetry socket P, command socket P+1."""

    def __init__(self) -> None:
        self.mock = RotatorMockController("raw", "A")
        self.writers: list[asyncio.StreamWriter] = []
        self.cmd_reader: asyncio.StreamReader | None = None

    async def connect(self, port: int, source: str) -> None:
        _, tel = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0)), T)
        self.cmd_reader, cmd = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port + 1, local_addr=(source, 0)), T)
        self.writers = [tel, cmd]
        tai = current_tai()
        # Generation A hands a frame out once the next header confirms it: two telemetry.
        tel.write(ROT_A.encode_frame(FrameKind.CONFIG, self.mock.config_record(), 0, tai)
                  + b"".join(ROT_A.encode_frame(FrameKind.TELEMETRY,
                                                self.mock.telemetry_record(tai), n, tai)
                             for n in (0, 1)))
        await tel.drain()

    async def next_command(self) -> Any:
        assert self.cmd_reader is not None
        decoder = CommandDecoder(ROT_A)
        while (cmd := decoder.next_event()) is NEED_DATA:
            data = await asyncio.wait_for(self.cmd_reader.read(65536), T)
            assert data, "the CSC closed the command socket"
            decoder.receive_data(data)
        return cmd

    async def close(self) -> None:
        for w in self.writers:
            w.close()
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


async def test_gen_a_only_an_operator_may_act_as_the_controller(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running(tmp_path, CSC_A) as node:
        ctrl = node.ctx.devices["rot"]
        link = ctrl.link
        port = link.port
        # Nobody connected yet: a stranger and an observer are refused on both sockets.
        for source in (STRANGER, OBSERVER):
            assert await refused(port, source) == b""
            assert await refused(port + 1, source) == b""
        assert link.telemetry_server.client_count == link.command_server.client_count == 0
        assert not ctrl.connected
        # The operator's controller is served: its CONFIG and telemetry become our state,
        # and it receives our commands.
        raw = RawControllerA()
        try:
            await raw.connect(port, OPERATOR)
            await asyncio.wait_for(ctrl.connect(), T)
            assert ctrl.connected and ctrl.config is not None
            await ctrl.send("SET_STATE", [float(SetStateParam.ENTER_CONTROL)])
            cmd = await raw.next_command()
            assert cmd.code == RotatorCommandCodeA.SET_STATE
            # While it is connected, strangers are still refused.
            assert await refused(port, STRANGER) == b""
            assert ctrl.connected
        finally:
            await raw.close()
        events = audit(node)
        for source in (STRANGER, OBSERVER):
            assert ("refused", "connect", source, source) in events
        assert events.count(("done", "connect", OPERATOR, OPERATOR)) == 2  # P and P+1
        refusals = [r.getMessage() for r in caplog.records
                    if "refusing connection from 127.0.0.3" in r.getMessage()]
        assert refusals and "connect needs the operator role; 127.0.0.3 is observer" in (
            refusals[0])


async def test_gen_a_silent_squatter_is_replaced_only_by_an_operator(tmp_path):
    async with running(tmp_path, CSC_A) as node:
        link = node.ctx.devices["rot"].link
        tel = link.telemetry_server
        now = fake_clock(tel)
        port = link.port
        # An operator's connection on P that sends nothing (a stuck controller).
        reader, squatter = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(OPERATOR, 0)), T)
        try:
            await asyncio.wait_for(tel.wait_connected(), T)
            now[0] += 60.0
            assert await refused(port, STRANGER) == b""
            assert await refused(port, OBSERVER) == b""
            assert tel.connected and tel.replaced_count == 0
            # The admin's controller takes over the telemetry socket.
            raw = RawControllerA()
            try:
                await raw.connect(port, ADMIN)
                assert await asyncio.wait_for(reader.read(), T) == b""  # squatter closed
                assert tel.replaced_count == 1 and tel.peer.startswith(ADMIN + ":")
            finally:
                await raw.close()
        finally:
            squatter.close()
            with contextlib.suppress(ConnectionError):
                await squatter.wait_closed()
        events = audit(node)
        # In generation A an observer may not even connect: it never gets as far as replacing.
        assert ("refused", "connect", STRANGER, STRANGER) in events
        assert ("refused", "connect", OBSERVER, OBSERVER) in events
        assert ("done", "replace client", ADMIN, ADMIN) in events


# -- TLS --------------------------------------------------------------------------------------
def tls_security(d: Path) -> str:
    # alice and the labbridge CSC are operators by certificate; no address has a role.
    return textwrap.dedent("""\
        security:
          addresses:
            admin: []
          identities:
            alice: {role: operator, cert: alice}
            csc: {role: operator, cert: csc}
        """)


def tls_field(d: Path, name: str) -> str:
    return f"{{cert: {d / name}.crt, key: {d / name}.pem, ca: {d / 'ca.crt'}}}"


async def test_tls_gen_d_certificate_identity_and_refusals(tmp_path, site):
    d, other = site
    mock_node = tls_security(d) + textwrap.dedent(f"""\
        node: tlsmock
        devices:
          - kind: hexrot_rotator_mock
            name: rotator
        services:
          - kind: hexrot_mock_controller
            device: rotator
            port: 0
            tls: {tls_field(d, "node")}
        """)
    async with running(tmp_path, mock_node, "mock.yaml") as node:
        port = service(node).side.port
        server = service(node).side.server
        mock = node.ctx.devices["rotator"]
        # No certificate, another CA's certificate, plain TCP, a site certificate whose name
        # is no identity here: refused, nothing sent, nothing changed.
        assert await refused(port, ADMIN, client_context(d / "ca.crt")) == b""
        assert await refused(port, ADMIN, client_context(
            d / "ca.crt", other / "mallory.crt", other / "mallory.pem")) == b""
        plain = ROT_D.encode_command(ROT_D.make_command(R.ENABLE_DRIVES, 1, (1.0,)))
        assert await refused(port, ADMIN, send=plain) == b""
        assert await refused(port, ADMIN, client_context(
            d / "ca.crt", d / "bob.crt", d / "bob.pem")) == b""
        assert server.client_count == 0 and mock.commands_received == 0
        # alice's certificate makes her an operator even from an address with no role.
        alice = client_context(d / "ca.crt", d / "alice.crt", d / "alice.pem")
        csc = await RawCSC.open(ROT_D, port, STRANGER, alice)
        try:
            await csc.served()
            assert status(await csc.command(R.ENABLE_DRIVES, 1.0))[0] is CommandStatusCode.ACK
            assert status(await csc.command(R.CONFIG_VEL, 1.0)) == (
                CommandStatusCode.NO_ACK, "access: operator may not configure")
        finally:
            await csc.close()
        assert mock.config["drives_enabled"] is True
        await asyncio.wait_for(server.wait_disconnected(), T)
        # The labbridge CSC (its own node file, its own certificate) drives the mock.
        csc_node = textwrap.dedent(f"""\
            node: tlscsc
            devices:
              - kind: hexrot_controller
                name: rot
                device: rotator
                generation: D
                port: {port}
                enable_drives_delay: 0
                tls: {tls_field(d, "csc")}
            """)
        async with running(tmp_path, csc_node, "csc.yaml") as cnode:
            ctrl = cnode.ctx.devices["rot"]
            assert ctrl.connected, ctrl.fault_reason
            await asyncio.wait_for(ctrl.enable(), T)
            assert mock.state is ControllerState.ENABLED
        events = [(e.outcome, e.verb, e.who, e.transport) for e in node.ctx.gate.recent]
        assert ("refused", "connect", "bob@127.0.0.1", "tls") in events
        assert ("done", "ENABLE_DRIVES", "alice@127.0.0.4", "tls") in events
        assert ("refused", "CONFIG_VEL", "alice@127.0.0.4", "tls") in events
        assert ("done", "SET_STATE", "csc@127.0.0.1", "tls") in events


async def test_tls_gen_a_controller_by_certificate(tmp_path, site):
    d, other = site
    csc_node = tls_security(d) + textwrap.dedent(f"""\
        node: tlscsca
        devices:
          - kind: hexrot_controller
            name: rot
            device: rotator
            generation: A
            port: 0
            tls: {tls_field(d, "node")}
        """)
    async with running(tmp_path, csc_node, "csc.yaml") as cnode:
        ctrl = cnode.ctx.devices["rot"]
        port = ctrl.link.port
        # Plain TCP and a foreign certificate cannot act as the controller.
        mock = RotatorMockController("plain", "A")
        plain = ROT_A.encode_frame(FrameKind.CONFIG, mock.config_record(), 0, current_tai())
        assert await refused(port, ADMIN, send=plain) == b""
        assert await refused(port + 1, ADMIN, client_context(
            d / "ca.crt", other / "mallory.crt", other / "mallory.pem")) == b""
        mock_node = textwrap.dedent(f"""\
            node: tlsmocka
            devices:
              - kind: hexrot_rotator_mock
                name: rotator
                generation: A
            services:
              - kind: hexrot_mock_controller
                device: rotator
                port: {port}
                tls: {tls_field(d, "alice")}
            """)
        async with running(tmp_path, mock_node, "mock.yaml") as mnode:
            await asyncio.wait_for(ctrl.connect(), T)
            await ctrl.send("SET_STATE", [float(SetStateParam.ENTER_CONTROL)])
            await ctrl.wait_state(ControllerState.STANDBY)
            assert mnode.ctx.devices["rotator"].state is ControllerState.STANDBY
        events = [(e.outcome, e.verb, e.who, e.transport) for e in cnode.ctx.gate.recent]
        assert events.count(("done", "connect", "alice@127.0.0.1", "tls")) == 2
        # The mock trusts the CSC its node file names and audits what it was told to do.
        mevents = [(e.outcome, e.verb, e.address, e.transport) for e in mnode.ctx.gate.recent]
        assert ("done", "SET_STATE", "127.0.0.1", "tls") in mevents


async def test_tls_file_errors_are_one_line_config_errors(tmp_path, site):
    d, _ = site
    text = textwrap.dedent(f"""\
        node: badtls
        devices:
          - kind: hexrot_rotator_mock
            name: rotator
        services:
          - kind: hexrot_mock_controller
            device: rotator
            port: 0
            tls: {{cert: {d}/node.crt, key: {d}/node.pem, ca: {tmp_path}/nope.crt}}
        """)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.crt: no such file"):
        build_node(path, state_dir=tmp_path / "state")
    result = run_cli("check", str(path))
    assert result.returncode != 0
    assert "nope.crt" in result.stderr and "bad.yaml" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
