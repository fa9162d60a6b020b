"""Regression tests for review findings: blank-only framing head, monitor vs bad replies,
relay processor replying to malformed bare requests ended by quiet gap or EOF."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.dispatch import Caller, Dispatcher, command
from labbridge.links.pychron.monitor import StatusMonitor
from labbridge.links.pychron.relay import RelayProcessor
from labbridge.links.pychron.remote import RemoteValves
from labbridge.links.pychron.server import ServerSettings
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.crc import append_crc16
from labbridge.protocol.pychron.messages import Request
from labbridge.protocol.pychron.relay import decode_crc_reply
from tests.pychron.server_helpers import ask_like_pychron, running_server

TIMEOUT = 5.0


def make_bank() -> ValveBank:
    return ValveBank("valves", [ValveConfig("A"), ValveConfig("B", initially_open=True),
                                ValveConfig("C", initially_locked=True)], SimValveBackend())


# -- 1. a new connection that sends only blanks ----------------------------------------------
# The quiet gap is made long so that only the framing decision itself can end these requests
# (before the fix the blanks piled up in the framing head until a quiet gap).
SLOW_GAP = ServerSettings(quiet_gap=60.0, first_request_timeout=60.0, max_raw_request=4096,
                          linger=0.2)


async def test_blank_only_head_is_bounded_by_max_raw_request():
    bank = make_bank()
    async with running_server(ValveCommands([bank]), settings=SLOW_GAP) as server:
        assert server.port
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port), TIMEOUT)
        try:
            # Blanks in small chunks, well past max_raw_request, never a quiet gap.
            with contextlib.suppress(ConnectionError):
                for _ in range(64):
                    writer.write(b" \t" * 128)
                    await writer.drain()
            reply = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert reply.startswith(b"ERROR 003 : invalid command: request too long"), reply
            rest = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            assert rest == b""  # closed after the error reply
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # The server goes on serving other clients.
        reply, closed = await ask_like_pychron(server.port, b"GetValveState B\r\n")
        assert reply == b"OK" and closed


@pytest.mark.parametrize(("request_bytes", "expected"), [
    (b"          GetValveState B\r\n", b"OK"),
    (b"\t \t \t \t {\"command\": \"GetValveState\", \"value\": \"B\"}", b"OK"),
])
async def test_many_leading_blanks_do_not_stall_framing(request_bytes, expected):
    bank = make_bank()
    async with running_server(ValveCommands([bank]), settings=SLOW_GAP) as server:
        assert server.port
        reply, closed = await asyncio.wait_for(
            ask_like_pychron(server.port, request_bytes), TIMEOUT)
    assert reply == expected and closed


# -- 2. the status monitor survives unparsable replies ---------------------------------------
class FlakyWords(ValveCommands):
    """GetValveStates answers a bad CRC, then a malformed word, then correctly."""

    def __init__(self, banks: list[ValveBank]) -> None:
        super().__init__(banks)
        self.bad_left = ["crc", "word"]
        self.bad_sent = 0

    @command("GetValveStates", idempotent=True)
    def get_valve_states(self, req: Request, caller: Caller) -> str:
        good = super().get_valve_states(req, caller)
        if not self.bad_left:
            return good
        self.bad_sent += 1
        if self.bad_left.pop(0) == "crc":
            last = good[-1]
            return good[:-1] + ("0" if last != "0" else "1")  # wrong checksum
        return append_crc16("A0,B?,C0")  # valid CRC, unparsable entry


async def test_status_monitor_survives_bad_crc_and_malformed_word():
    bank = make_bank()
    cmds = FlakyWords([bank])
    statuses: list[str] = []
    async with running_server(cmds) as server:
        async with PychronClient("127.0.0.1", server.port) as client:
            mon = StatusMonitor(RemoteValves(client), update_period=0.01, unreachable_after=5,
                                on_status=lambda s, d: statuses.append(s))
            await mon.start()
            try:
                await asyncio.wait_for(mon.wait_synced(), TIMEOUT)
                assert mon._task is not None and not mon._task.done()
                assert cmds.bad_sent == 2
                assert {n: v.state for n, v in mon.valves.items()} == {
                    "A": False, "B": True, "C": False}
                assert mon.status == "ok" and mon.failures == 0
                assert "node_unreachable" not in statuses
            finally:
                await mon.stop()


# -- 3. the relay processor answers malformed bare requests however they end -----------------
@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="lbr", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _relay_exchange(path: str, data: bytes, *, eof: bool) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), TIMEOUT)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)  # until the processor closes
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.parametrize("ending", ["crlf", "quiet_gap", "eof"])
async def test_relay_processor_answers_request_without_type(sock_dir, ending):
    bank = make_bank()
    await bank.start()
    path = str(sock_dir / "hw")
    processor = RelayProcessor(path, {"Extractionline": Dispatcher([ValveCommands([bank])])})
    await processor.start()
    try:
        data = b"Open A\r\n" if ending == "crlf" else b"Open A"
        reply = await _relay_exchange(path, data, eof=ending == "eof")
    finally:
        await processor.stop()
        await bank.stop()
    assert decode_crc_reply(reply) == (
        "ERROR 003 : invalid command: relay request 'Open A' has no 'type|' prefix")
    assert bank.is_open("A") is False
