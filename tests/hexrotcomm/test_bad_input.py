"""Bad bytes on the telemetry stream (seed 003; spec §5.6, §3.8 [lb], §9 quirk 2).

Generation A: the CSC side breaks the telemetry connection with a logged reason, keeps running,
and accepts the controller's next connection. Generation D: the client raises a clear protocol
error, faults cleanly, and a new connection works.
"""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm.common import LinkFault
from labbridge.links.hexrotcomm.controller import HexrotController
from labbridge.links.hexrotcomm.mock_server import MockControllerClient
from labbridge.protocol.hexrotcomm import (
    HEADER,
    HEADER_A24,
    ROTATOR,
    ControllerState,
    ErrorCode,
    FrameKind,
    Generation,
    WireProfile,
    device_spec,
)
from labbridge.transport.one_client import OneClientServer
from tests.hexrotcomm.helpers import T, wait_for_signal

PROFILE_A = WireProfile.make(device_spec("rotator", "A"), "A")
PROFILE_D = WireProfile.make(ROTATOR, "D")


def _good(profile: WireProfile) -> bytes:
    cfg, tel = profile.device.config, profile.device.telemetry
    return (profile.encode_frame(FrameKind.CONFIG, cfg.make(upper_pos_limit=90.0), 0, 1.0)
            + profile.encode_frame(FrameKind.TELEMETRY, tel.make(), 0, 1.0))


def _bad_inputs(profile: WireProfile) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes to send before EOF, expected error kind)."""
    layout = profile.device.telemetry
    tel = layout.encode(layout.make())
    if profile.generation is Generation.A:
        corrupt = HEADER_A24.encode((0x5555, 0, 0, 1, 3_000_000_000)) + tel
        unknown = HEADER_A24.encode((0x5555, 0x77, 0, 1, 0)) + tel
    else:
        corrupt = HEADER.encode((2, 0, 1, 3_000_000_000)) + tel
        unknown = HEADER.encode((1025, 0, 1, 0)) + tel
    truncated = profile.encode_frame(FrameKind.TELEMETRY, layout.make(), 0, 1.0)
    return {
        "corrupt_header": (corrupt, "bad_header"),
        "unknown_frame_id": (unknown, "unknown_frame_id"),
        "truncated_struct": (truncated[:24 + 200], "truncated"),
        "random_bytes": (b"\xde\xad\xbe\xef" + os.urandom(60) + b"\xff" * 400,
                         "unknown_frame_id"),
    }


BAD_NAMES = list(_bad_inputs(PROFILE_D))


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_gen_a_bad_telemetry_breaks_connection_and_server_lives_on(name, caplog):
    caplog.set_level(logging.INFO)
    data, kind = _bad_inputs(PROFILE_A)[name]
    ctrl = HexrotController("rot", PROFILE_A, "127.0.0.1", 0, connect_timeout=T,
                            config_timeout=T, enable_drives_delay=0, move_pause=0)
    await ctrl.start()
    srv = ctrl.link
    try:
        # A rogue "controller" sends a good prefix, then the bad bytes.
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        w.write(_good(PROFILE_A) + data)
        await w.drain()
        if kind == "truncated":
            w.write_eof()  # the stream ends inside a struct
        assert await asyncio.wait_for(r.read(10), T) == b""  # the server broke the connection
        w.close()
        await w.wait_closed()
        await asyncio.wait_for(srv.telemetry_server.wait_disconnected(), T)
        assert srv.bad_frames == 1 and srv.last_error.kind == kind
        assert "closing the telemetry connection" in caplog.text
        # The good CONFIG before the bad bytes was used (the header after it confirmed it);
        # the telemetry frame right before a bad header is never handed out (ADR 0042
        # amendment): it may be a frame of another size. Before a truncated frame (whose
        # header is valid) it was confirmed.
        assert srv.config is not None and srv.config.upper_pos_limit == 90.0
        assert (srv.telemetry is not None) == (kind == "truncated")
        # The server keeps running: the real controller connects and works.
        mock = RotatorMockController("rot", "A")
        client = MockControllerClient(mock, "127.0.0.1", srv.port)
        await client.start()
        try:
            await asyncio.wait_for(ctrl.connect(), T)
            await asyncio.wait_for(ctrl.enable(), T)
            assert ctrl.state == ControllerState.ENABLED
        finally:
            await client.close()
    finally:
        await ctrl.disconnect()


async def test_gen_a_controller_reconnects_after_telemetry_socket_broken():
    mock = RotatorMockController("rot", "A")
    ctrl = HexrotController("rot", PROFILE_A, "127.0.0.1", 0, connect_timeout=T,
                            config_timeout=T)
    await ctrl.start()
    client = MockControllerClient(mock, "127.0.0.1", ctrl.port)
    await client.start()
    try:
        await asyncio.wait_for(ctrl.connect(), T)
        assert client.telemetry_connections == 1
        await ctrl.link.telemetry_server.close_client()
        assert not ctrl.connected
        await asyncio.wait_for(ctrl.link.wait_connected(), T)  # the mock retried
        assert client.telemetry_connections == 2 and client.command_connections == 1
        await asyncio.wait_for(ctrl.link.next_telemetry(), T)
    finally:
        await client.close()
        await ctrl.disconnect()


class FakeController:
    """A gen-D 'controller' whose n-th connection sends scripted bytes, then either closes
    (``close=True``: the stream ends there) or stays open; later connections are good."""

    def __init__(self, scripts: list[tuple[bytes, bool]]) -> None:
        self.scripts = scripts
        self.server = OneClientServer("fake", handler=self._serve)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data, close = self.scripts.pop(0) if self.scripts else (_good(PROFILE_D), False)
        writer.write(data)
        await writer.drain()
        if close:
            return
        while await reader.read(1024):
            pass


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_gen_d_bad_telemetry_raises_protocol_error_and_faults(name):
    data, kind = _bad_inputs(PROFILE_D)[name]
    close = kind == "truncated"
    # 1st connection: bad bytes right away -> connect() fails with a clear error.
    # 2nd connection: good frames then bad bytes -> FAULT with the reason.
    # 3rd connection: good -> works.
    fake = FakeController([(data, close), (_good(PROFILE_D) + data, close)])
    await fake.server.start()
    ctrl = HexrotController("rot", PROFILE_D, "127.0.0.1", fake.server.port,
                            connect_timeout=T, config_timeout=T, autoconnect=False)
    try:
        with pytest.raises(LinkFault, match=kind) as ei:
            await asyncio.wait_for(ctrl.connect(), T)
        assert ei.value.error_code == ErrorCode.CONNECTION_LOST
        assert "Protocol error" in str(ei.value)
        assert ctrl.state == ControllerState.FAULT

        waiter = asyncio.ensure_future(wait_for_signal(ctrl, "fault", lambda v: kind in v))
        try:
            await asyncio.wait_for(ctrl.connect(), T)
        except LinkFault:
            pass  # the bad bytes may arrive in the same read as the good ones
        await waiter
        assert ctrl.state == ControllerState.FAULT and kind in ctrl.fault_reason

        await asyncio.wait_for(ctrl.connect(), T)  # a new connection works
        assert ctrl.connected and ctrl.state == ControllerState.STANDBY
    finally:
        await ctrl.disconnect()
        await fake.server.close()
