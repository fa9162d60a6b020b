"""Legacy relay: front server -> Unix socket -> processor -> handler, byte-exact vs the vectors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from labbridge.links.pychron.client import ErrorReply
from labbridge.links.pychron.clients import RelayClient
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.relay import CommandRepeater, RelayFrontServer, RelayProcessor
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.crc import ChecksumMismatch
from labbridge.protocol.pychron.relay import decode_crc_reply
from tests.access_helpers import gate_for
from tests.conftest import load_vectors
from tests.hardware.helpers import FakeClock
from tests.pychron.server_helpers import ask_like_pychron, ask_udp, bank_from_vector

V = load_vectors("pychron.json")
RELAY = V["legacy_relay"]
SAMPLE = V["state_checksum"]["cases"][0]["switches"]  # A closed, B open, C closed + locked
REPLY = {r["data"]: r for r in RELAY["replies"]}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="lbr", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def relay(sock_dir: Path, *, udp: bool = False, timeout: float = 5.0, **repeater_kw: Any,
                ) -> AsyncIterator[tuple[RelayProcessor, RelayFrontServer, object]]:
    bank = bank_from_vector(SAMPLE)
    await bank.start()
    path = str(sock_dir / "hw-extractionline")
    processor = RelayProcessor(path, {"Extractionline": Dispatcher([ValveCommands([bank])],
                                                                   gate_for("192.168.0.0/16"))})
    front = RelayFrontServer(CommandRepeater(path, timeout=timeout, **repeater_kw),
                             "127.0.0.1", 0, udp=udp)
    await processor.start()
    await front.start()
    try:
        yield processor, front, bank
    finally:
        await front.stop()
        await processor.stop()
        await bank.stop()


async def _ask(front: RelayFrontServer, text: str) -> bytes:
    assert front.port
    reply, closed = await ask_like_pychron(front.port, text.encode() + b"\r\n")
    assert closed
    return reply


async def test_replies_through_the_whole_chain_match_the_vectors(sock_dir):
    async with relay(sock_dir, udp=True) as (processor, front, _bank):
        # UDP: the same frame in one datagram.
        assert front.udp_port
        got = await ask_udp(front.udp_port, b"GetStateChecksum A,B,C")
        assert got == REPLY["1023369191"]["tcp_reply_to_external_client"].encode()
        cases = [
            ("GetStateChecksum A,B,C", "1023369191"),
            ("GetValveStates", "A0,B1,C03446"),
            ("GetValveState Z", "ERROR 005 : Z is not a registered valve name"),
            ("Open A", "OK"),
            ("Open C", "ok"),  # C is software-locked: actuation skipped
        ]
        for request, data in cases:
            expected = REPLY[data]["tcp_reply_to_external_client"].encode()
            assert await _ask(front, request) == expected, request
        assert processor.requests == len(cases) + 1
        async with RelayClient("127.0.0.1", front.udp_port, udp=True) as client:
            assert await client.ask("GetValveState A") == "OK"
            with pytest.raises(ErrorReply):
                await client.call("GetValveState Z")


async def test_repeater_sends_the_vector_request_frames(sock_dir):
    """A recording processor sees exactly the vector bytes; the reply comes back decoded."""
    path = str(sock_dir / "rec")
    seen: list[bytes] = []
    got_all = asyncio.Event()

    async def fake_processor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(int(head, 16))
                seen.append(head + body)
                writer.write(REPLY["OK"]["frame"].encode())
                if len(seen) == len(RELAY["requests"]):
                    got_all.set()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(fake_processor, path)
    repeater = CommandRepeater(path)
    try:
        for case in RELAY["requests"]:
            sender = None if case["sender"] == "None" else case["sender"]
            reply = await repeater.ask(case["command"], sender, process_type=case["type"])
            assert reply == "OK"
        await asyncio.wait_for(got_all.wait(), 5)
        assert seen == [c["frame"].encode() for c in RELAY["requests"]]
        assert repeater.connects == 1  # one pooled connection reused
    finally:
        await repeater.close()
        server.close()
        await server.wait_closed()


async def test_processor_answers_vector_frames_byte_exact(sock_dir):
    """Raw frames on the Unix socket, as the real repeater writes them; glued and split."""
    async with relay(sock_dir) as (processor, _front, _bank):
        reader, writer = await asyncio.open_unix_connection(processor.path)
        try:
            # The "test" echo vector and a checksum request, glued into one write.
            echo = next(c for c in RELAY["requests"] if c["type"] == "test")
            checksum = "0032Extractionline|GetStateChecksum A,B,C|192.168.1.10"
            writer.write((echo["frame"] + checksum).encode())
            want = (REPLY["0.532"]["frame"] + REPLY["1023369191"]["frame"]).encode()
            assert await asyncio.wait_for(reader.readexactly(len(want)), 5) == want
            # One byte at a time.
            for b in echo["frame"].encode():
                writer.write(bytes([b]))
                await writer.drain()
            want = REPLY["0.532"]["frame"].encode()
            assert await asyncio.wait_for(reader.readexactly(len(want)), 5) == want
            # The seed's bare form with System as the type, ended by CR.
            writer.write(b"System|GetValveState Z\r")
            want = REPLY["ERROR 005 : Z is not a registered valve name"]["frame"].encode()
            assert await asyncio.wait_for(reader.readexactly(len(want)), 5) == want
            # Unknown type: ERROR 007 framed; the connection goes on.
            writer.write(b"0014Synrad|Enable|1.2.3.4")
            frame = await asyncio.wait_for(reader.readexactly(4), 5)
            rest = await asyncio.wait_for(reader.readexactly(int(frame, 16) - 4), 5)
            assert decode_crc_reply(frame + rest) == "ERROR 007 : manager unavaliable: Synrad"
        finally:
            writer.close()
            await writer.wait_closed()


async def test_pychron_ready_and_system_type(sock_dir):
    async with relay(sock_dir) as (processor, front, _bank):
        assert front.port
        before = processor.requests
        assert decode_crc_reply(await _ask(front, "PychronReady")) == "OK"
        assert processor.requests == before + 1  # it went through as a "test" echo
        async with RelayClient("127.0.0.1", front.port) as client:
            assert await client.ready()
            assert await client.ask("GetValveState B") == "OK"
            assert await client.ask("GetValveStates") == "A0,B1,C03446"
        # A front server configured with the seed's "System" type.
        seed_front = RelayFrontServer(CommandRepeater(processor.path, "System"), "127.0.0.1", 0)
        await seed_front.start()
        try:
            assert decode_crc_reply(await _ask(seed_front, "GetValveState B")) == "OK"
        finally:
            await seed_front.stop()


async def test_processor_down_gives_error_011_then_recovers(sock_dir, caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="labbridge")
    async with relay(sock_dir, clock=clock) as (processor, front, _bank):
        assert await _ask(front, "GetValveState B") == b"000AOK75b7\n"
        await processor.stop()  # the hardware process dies
        for _ in range(2):
            data = decode_crc_reply(await _ask(front, "GetValveState B"))
            assert data.startswith(f"ERROR 011 : could not communicate with pychron through "
                                   f"{processor.path}. socket.error = ")
        assert decode_crc_reply(await _ask(front, "PychronReady")).startswith("ERROR 011")
        # One connection attempt, then backoff: the requests meanwhile were answered at once.
        assert front.repeater.connect_attempts == 2  # the first (good) one and one failure
        await processor.start()  # it comes back; the front server was never restarted
        assert decode_crc_reply(await _ask(front, "GetValveState B")).startswith("ERROR 011")
        clock.advance(front.repeater.backoff.maximum)  # the next attempt is due
        assert await _ask(front, "GetValveState B") == b"000AOK75b7\n"
        assert decode_crc_reply(await _ask(front, "PychronReady")) == "OK"
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("pychron.relay")]
    assert len([m for m in messages if "unreachable" in m]) == 1  # one line per state change
    assert len([m for m in messages if "works again" in m]) == 1


async def test_slow_command_never_blocks_another_client(sock_dir):
    async with relay(sock_dir) as (_processor, front, bank):
        backend = bank.backend
        backend.block("A")  # bank_from_vector uses the valve name as address
        slow = asyncio.ensure_future(_ask(front, "Open A"))
        assert await asyncio.wait_for(backend.waiting.get(), 5) == "A"
        # While Open A is held inside the hardware, other clients are answered.
        assert await _ask(front, "GetValveState B") == b"000AOK75b7\n"
        assert decode_crc_reply(await _ask(front, "GetStateChecksum A,B,C")).isdigit()
        assert not slow.done()
        backend.unblock("A")
        assert await asyncio.wait_for(slow, 5) == b"000AOK75b7\n"


async def test_malformed_input_gets_framed_errors_and_the_server_keeps_serving(sock_dir):
    async with relay(sock_dir) as (processor, front, _bank):
        assert front.port
        for junk in (b"\x00\xff\xfe\r\n", b"|||\r\n", b"\r\n", b"Open\r\n"):
            reply, closed = await ask_like_pychron(front.port, junk)
            assert closed and reply.endswith(b"\n")
            assert decode_crc_reply(reply).startswith("ERROR 0"), (junk, reply)
        reply, _ = await ask_like_pychron(front.port, b"x" * 70000)
        assert decode_crc_reply(reply) == "ERROR 003 : invalid command: request too long"
        # Garbage straight into the processor's socket: answered, then closed; others go on.
        reader, writer = await asyncio.open_unix_connection(processor.path)
        writer.write(b"nonsense without a type\n")
        head = await asyncio.wait_for(reader.readexactly(4), 5)
        body = await asyncio.wait_for(reader.readexactly(int(head, 16) - 4), 5)
        assert decode_crc_reply(head + body).startswith("ERROR 003")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        assert await _ask(front, "GetValveState B") == b"000AOK75b7\n"


async def test_relay_client_verifies_the_crc():
    assert RelayClient.decode("000AOK75b7\n") == "OK"
    assert RelayClient.decode("ERROR 011 : could not communicate").startswith("ERROR 011")
    with pytest.raises(ChecksumMismatch):
        RelayClient.decode("000AOK75b8\n")


async def test_front_server_request_byte_by_byte_and_glued(sock_dir):
    async with relay(sock_dir) as (_processor, front, bank):
        assert front.port
        reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
        try:
            for b in b"GetValveState B":
                writer.write(bytes([b]))
                await writer.drain()
            writer.write(b"\r\n")
            assert await asyncio.wait_for(reader.read(), 5) == b"000AOK75b7\n"
        finally:
            writer.close()
            await writer.wait_closed()
        # Two requests glued in one segment are one request (one connection, one request):
        # never two actuations.
        reply = await _ask(front, "GetValveState B\r\nOpen A")
        assert decode_crc_reply(reply).startswith("ERROR 0")
        assert not bank.is_open("A")


async def test_front_server_from_a_legacy_cfg(tmp_path, sock_dir):
    from labbridge.node.config import ConfigError
    from labbridge.node.node import build_node

    path = sock_dir / "hw-extractionline"
    (tmp_path / "system.cfg").write_text(
        "[General]\nclass = UDPServer\nhost = 127.0.0.1\nport = 1061\n"
        f"[Requests]\ntype = System\ndatasize = 1024\n[Repeater]\npath = {path}\n")
    node_file = tmp_path / "rhs.yaml"
    node_file.write_text("node: rhs\nservices:\n"
                         "  - {kind: relay_front_server, legacy_cfg: system.cfg, port: 0}\n")
    node = build_node(node_file)
    front = node.services[0]
    assert isinstance(front, RelayFrontServer)
    assert front.repeater.process_type == "System"
    assert front.repeater.path == str(path)
    bank = bank_from_vector(SAMPLE)
    processor = RelayProcessor(str(path), {"Extractionline": Dispatcher([ValveCommands([bank])], gate_for("192.168.0.0/16"))})
    await bank.start()
    await processor.start()
    await node.start()
    try:
        assert front.udp_port  # class = UDPServer
        got = await ask_udp(front.udp_port, b"GetStateChecksum A,B,C")
        assert got == REPLY["1023369191"]["tcp_reply_to_external_client"].encode()
    finally:
        await node.stop()
        await processor.stop()
        await bank.stop()
    (tmp_path / "bad.cfg").write_text("[General]\nclass = IPCServer\n")
    node_file.write_text("node: rhs\nservices:\n  - {kind: relay_front_server, "
                         "legacy_cfg: bad.cfg}\n")
    with pytest.raises(ConfigError, match="IPCServer"):
        build_node(node_file)
