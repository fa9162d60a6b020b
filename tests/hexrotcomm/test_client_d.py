"""Generation-D client against the Simple mock (spec §3.8, §3.10, §7 "Gen D client")."""

from __future__ import annotations

import asyncio
import logging

import pytest

from labbridge.devices.hexrot.mock import SimpleMockController
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.common import CommandRejected, LinkFault
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.hexrotcomm import (
    SIMPLE,
    Command,
    CommandStatusCode,
    ErrorCode,
    FrameDecoder,
    FrameKind,
    SetStateParam,
    SimpleCommandCode,
    WireProfile,
)
from labbridge.transport.one_client import OneClientServer

T = 5.0
PROFILE = WireProfile.make(SIMPLE, "D")
C = SimpleCommandCode


class Harness:
    def __init__(self) -> None:
        self.configs: list = []
        self.telemetry: list = []
        self.mock = SimpleMockController("simple", "D", telemetry_interval=0.02)
        self.server = MockControllerServer(self.mock)
        self.client: CommandTelemetryClient | None = None

    async def __aenter__(self) -> Harness:
        await self.server.start()
        self.client = self.new_client()
        await asyncio.wait_for(self.client.connect(), T)
        return self

    def new_client(self, **kw) -> CommandTelemetryClient:
        return CommandTelemetryClient(PROFILE, "127.0.0.1", self.server.port,
                                      on_config=self.configs.append,
                                      on_telemetry=self.telemetry.append,
                                      config_timeout=T, **kw)

    async def __aexit__(self, *exc) -> None:
        if self.client is not None:
            await self.client.close()
        await self.server.close()


def cmd(code: int, p1: float = 0.0) -> Command:
    return PROFILE.make_command(code, 0, [p1])


async def test_initial_config_and_telemetry_then_counters():
    async with Harness() as h:
        c = h.client
        assert c.config.max_position == 25.0 and c.config.drives_enabled is False
        assert c.telemetry is not None and len(h.configs) == 1
        assert c.clock_offset is not None and abs(c.clock_offset) < 60
        seen = []
        orig = h.server._reply

        def spy(command, out, *who):
            seen.append(command)
            return orig(command, out, *who)

        h.server._reply = spy
        await c.run_command(cmd(C.SET_STATE, SetStateParam.ENABLE))
        await c.run_command(cmd(C.MOVE, 3.5))
        await c.run_command(cmd(C.MOVE, 4.5))
        assert [s.counter for s in seen] == [0, 1, 2]
        assert all(s.commander == 2 for s in seen)


async def test_no_ack_reason_and_config_resend_rules():
    async with Harness() as h:
        c = h.client
        with pytest.raises(CommandRejected, match="state=STANDBY; must be ENABLED"):
            await c.run_command(cmd(C.MOVE, 1.0))
        await c.run_command(cmd(C.SET_STATE, SetStateParam.ENABLE))
        with pytest.raises(CommandRejected, match=r"position 30.0 not in range"):
            await c.run_command(cmd(C.MOVE, 30.0))
        n_cfg = len(h.configs)
        assert await c.run_command(cmd(C.MOVE, 3.0)) == 0.0
        assert len(h.configs) == n_cfg  # MOVE does not re-send CONFIG
        await c.run_command(cmd(C.ENABLE_DRIVES, 1.0))
        for _ in range(20):  # ENABLE_DRIVES does, right after its ACK
            if len(h.configs) > n_cfg:
                break
            await asyncio.wait_for(c.next_telemetry(), T)
        assert len(h.configs) == n_cfg + 1
        assert c.config.drives_enabled is True
        tel = await asyncio.wait_for(c.next_telemetry(), T)
        assert tel.cmd_position == 3.0 and tel.curr_position > 3.0
        with pytest.raises(CommandRejected, match="Unrecognized command code 99"):
            await c.run_command(cmd(99))


async def test_argument_and_connection_errors():
    async with Harness() as h:
        with pytest.raises(ValueError):
            await h.client.run_command(b"not a command")  # type: ignore[arg-type]
        await h.client.close()
        with pytest.raises(ConnectionError):
            await h.client.run_command(cmd(C.SET_STATE, 2))
        with pytest.raises(RuntimeError, match="single use"):
            await h.client.connect()
        # reconnect with a new client after close
        h.client = h.new_client()
        await asyncio.wait_for(h.client.connect(), T)
        await h.client.run_command(cmd(C.SET_STATE, SetStateParam.ENABLE))


async def test_raising_callbacks_do_not_break_the_link(caplog):
    caplog.set_level(logging.ERROR)

    def boom(_):
        raise RuntimeError("callback boom")

    h = Harness()
    await h.server.start()
    c = CommandTelemetryClient(PROFILE, "127.0.0.1", h.server.port, on_config=boom,
                               on_telemetry=boom, on_connect=boom, config_timeout=T)
    try:
        await asyncio.wait_for(c.connect(), T)
        await asyncio.wait_for(c.next_telemetry(), T)
        await c.run_command(cmd(C.SET_STATE, SetStateParam.ENABLE))
        assert "callback boom" in caplog.text and c.connected
    finally:
        await c.close()
        await h.server.close()


async def test_no_config_faults_no_config():
    h = Harness()
    h.server.send_config = False
    await h.server.start()
    c = CommandTelemetryClient(PROFILE, "127.0.0.1", h.server.port, config_timeout=0.2)
    try:
        with pytest.raises(LinkFault, match="Timed out waiting for config") as ei:
            await c.connect()
        assert ei.value.error_code == ErrorCode.NO_CONFIG
        assert c.error_code == ErrorCode.NO_CONFIG
    finally:
        await c.close()
        await h.server.close()


async def test_cannot_connect_faults_connection_lost():
    srv = OneClientServer("gone")
    await srv.start()
    port = srv.port
    await srv.close()
    c = CommandTelemetryClient(PROFILE, "127.0.0.1", port)
    with pytest.raises(LinkFault, match="Could not connect") as ei:
        await c.connect()
    assert ei.value.error_code == ErrorCode.CONNECTION_LOST
    await c.close()


class ScriptedController:
    """Answers each command with a scripted list of (counter offset, status, reason)."""

    def __init__(self, replies):
        self.replies = replies
        self.server = OneClientServer("scripted", handler=self._serve)
        #: Set when the last scripted command has been read.
        self.received = asyncio.Event()

    async def _serve(self, reader, writer):
        writer.write(PROFILE.encode_frame(FrameKind.CONFIG, SIMPLE.config.make(), 0, 1.0)
                     + PROFILE.encode_frame(FrameKind.TELEMETRY, SIMPLE.telemetry.make(), 0,
                                            1.0))
        await writer.drain()
        while data := await reader.read(60):
            command = PROFILE.command.decode(data)
            replies = self.replies.pop(0)
            if not self.replies:
                self.received.set()
            for offset, status, reason in replies:
                writer.write(PROFILE.encode_status(command.counter + offset, status, 0.5,
                                                   reason, 1.0))
            await writer.drain()


async def test_ack_timeout_stale_counter_and_late_status(caplog):
    caplog.set_level(logging.WARNING)
    ctl = ScriptedController([
        [],                                          # no reply: timeout
        [(-1, CommandStatusCode.ACK, ""),            # late status of the timed-out command
         (5, CommandStatusCode.ACK, ""),             # stale/mismatched counter: ignored
         (0, CommandStatusCode.NO_ACK, "x" * 60)],   # the real answer, reason > 50 bytes
        [(0, 7, "odd")],                             # unknown status code
    ])
    await ctl.server.start()
    c = CommandTelemetryClient(PROFILE, "127.0.0.1", ctl.server.port, ack_timeout=0.2)
    try:
        await asyncio.wait_for(c.connect(), T)
        with pytest.raises(TimeoutError, match="no status"):
            await c.run_command(cmd(1, 2.0))
        with pytest.raises(CommandRejected) as ei:
            await c.run_command(cmd(1, 2.0))
        assert ei.value.reason == "x" * 49  # we wrote 49 bytes + NUL (spec §3.4 Decision)
        assert c.late_statuses == 1 and c.ignored_statuses == 1
        assert "late command status" in caplog.text and "does not match" in caplog.text
        with pytest.raises(CommandRejected, match="Unknown command status 7"):
            await c.run_command(cmd(1, 2.0))
    finally:
        await c.close()
        await ctl.server.close()


async def test_unrecognized_commander_refused_by_mock():
    async with Harness() as h:
        await h.client.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", h.server.port)
        try:
            writer.write(PROFILE.encode_command(Command(7, 0, 1, 2.0)))
            await writer.drain()
            dec = FrameDecoder(PROFILE)
            status = None
            while status is None:
                dec.receive_data(await asyncio.wait_for(reader.read(4096), T))
                while (f := dec.next_event()) is not NEED_DATA:
                    if f.kind is FrameKind.STATUS:
                        status = f.payload
            assert status.status == CommandStatusCode.NO_ACK
            assert status.reason == "Unrecognized commander; must be one of GUI or CSC"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_ack_watchdog_sleeps_until_the_deadline_of_the_command_in_flight():
    """One watchdog per connection (no timer per command): when it fires before the deadline
    of the command now in flight (armed for an earlier command), it re-arms instead of
    expiring it; past the deadline it expires it with TimeoutError."""
    ctl = ScriptedController([[(0, CommandStatusCode.ACK, "")], []])
    received = ctl.received
    await ctl.server.start()
    c = CommandTelemetryClient(PROFILE, "127.0.0.1", ctl.server.port, ack_timeout=30.0)
    try:
        await asyncio.wait_for(c.connect(), T)
        assert await asyncio.wait_for(c.run_command(cmd(1, 2.0)), T) == 0.5
        armed = c._watchdog
        assert armed is not None  # still armed for the first command's deadline
        task = asyncio.create_task(c.run_command(cmd(1, 2.0)))
        await asyncio.wait_for(received.wait(), T)
        assert c._watchdog is armed  # sending did not create a timer
        c._check_ack()  # fires "early": the command in flight has 30 s left
        assert not task.done() and c._watchdog is not None and c._watchdog is not armed
        c._ack_deadline = asyncio.get_running_loop().time() - 1.0
        c._check_ack()
        with pytest.raises(TimeoutError, match="no status"):
            await asyncio.wait_for(task, T)
        assert c._watchdog is None
    finally:
        await c.close()
        await ctl.server.close()
