"""The legacy relay against slow, greedy and squatting peers (issue 13), on real sockets.

* a relay request and a front-server request have a deadline from their first byte;
* the processor stops reading from a repeater that does not read its replies;
* the Unix socket lives in a private directory: relative paths go to $XDG_RUNTIME_DIR or the
  node's state directory (mode 0700), and a directory another user could write to, or that
  is not ours, is refused by the processor and by the repeater;
* a legacy ``.cfg`` port out of range is a config error naming file and line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.relay import CommandRepeater, RelayFrontServer, RelayProcessor
from labbridge.links.pychron.valves import ValveCommands
from labbridge.node.config import ConfigError
from labbridge.node.node import build_node
from labbridge.protocol.pychron.relay import RelayRequest, decode_crc_reply, encode_relay_request
from labbridge.transport.unix import UnsafeSocketDirectory, check_private_dir
from tests.conftest import load_vectors
from tests.pychron.server_helpers import ask_like_pychron, bank_from_vector

TIMEOUT = 10.0
SAMPLE = load_vectors("pychron.json")["state_checksum"]["cases"][0]["switches"]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~100 bytes: pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="lbl", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def processor_at(path: Path, **kw):
    bank = bank_from_vector(SAMPLE)
    await bank.start()
    processor = RelayProcessor(str(path), {"Extractionline": Dispatcher([ValveCommands([bank])])},
                               **kw)
    await processor.start()
    try:
        yield processor, bank
    finally:
        await processor.stop()
        await bank.stop()


async def read_frame(reader: asyncio.StreamReader) -> str:
    head = await asyncio.wait_for(reader.readexactly(4), TIMEOUT)
    body = await asyncio.wait_for(reader.readexactly(int(head, 16) - 4), TIMEOUT)
    return decode_crc_reply(head + body)


async def test_a_trickled_relay_request_gets_an_error_by_its_deadline(sock_dir):
    async with processor_at(sock_dir / "hw", request_timeout=0.5, quiet_gap=1.0) as (
            processor, bank):
        reader, writer = await asyncio.open_unix_connection(processor.path)
        try:
            # A 4-digit frame declaring 255 payload bytes, trickled: it would take 12 s.
            body = b"00FFExtractionline|Open A|" + b"x" * 229
            answer = asyncio.ensure_future(read_frame(reader))
            sent = 0
            for b in body:
                if answer.done():
                    break
                writer.write(bytes([b]))
                sent += 1
                with contextlib.suppress(TimeoutError):  # the trickle's pace
                    await asyncio.wait_for(asyncio.shield(answer), 0.05)
            reply = await asyncio.wait_for(answer, TIMEOUT)
            assert reply == ("ERROR 003 : invalid command: request not complete within 0.5 s "
                             "of its first byte")
            assert sent < len(body)
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # then closed
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # Another repeater connection is served.
        reader, writer = await asyncio.open_unix_connection(processor.path)
        writer.write(encode_relay_request(RelayRequest("Extractionline", "GetValveState B",
                                                       "127.0.0.1")))
        assert await read_frame(reader) == "OK"
        writer.close()
        await writer.wait_closed()
    assert not bank.is_open("A")


async def test_a_trickled_front_request_gets_an_error_by_its_deadline(sock_dir):
    async with processor_at(sock_dir / "hw") as (processor, _bank):
        front = RelayFrontServer(CommandRepeater(processor.path), "127.0.0.1", 0,
                                 quiet_gap=1.0, request_timeout=0.5)
        await front.start()
        try:
            assert front.port
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            answer = asyncio.ensure_future(reader.read())
            sent = 0
            try:
                for _ in range(1000):
                    if answer.done():
                        break
                    writer.write(b"G")
                    sent += 1
                    with contextlib.suppress(TimeoutError):  # the trickle's pace
                        await asyncio.wait_for(asyncio.shield(answer), 0.05)
                reply = await asyncio.wait_for(answer, TIMEOUT)
            finally:
                writer.transport.abort()
            assert decode_crc_reply(reply) == (
                "ERROR 003 : invalid command: request not complete in time")
            assert sent < 1000
            reply, _ = await ask_like_pychron(front.port, b"GetValveState B\r\n")
            assert decode_crc_reply(reply) == "OK"
        finally:
            await front.stop()


async def test_the_processor_stops_reading_from_a_repeater_that_does_not_read(sock_dir):
    async with processor_at(sock_dir / "hw") as (processor, _bank):
        _reader, writer = await asyncio.open_unix_connection(processor.path)
        frame = encode_relay_request(RelayRequest("test", "x" * 200, None))
        offered = 0
        try:
            while offered < 256 * 1024 * 1024:
                writer.write(frame * 256)
                offered += 256
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break  # the processor stopped reading
            else:
                pytest.fail("the processor kept reading from a peer that never reads")
            # It answered only what fits in the socket buffers, not everything offered.
            assert processor.requests < offered
        finally:
            writer.transport.abort()


def test_relative_socket_paths_go_to_a_private_runtime_directory(tmp_path, monkeypatch):
    node_file = tmp_path / "relay.yaml"
    node_file.write_text(
        "node: relay\n"
        "devices:\n"
        "  - {kind: valve_bank, name: valves, persist: false, backend: {kind: sim},\n"
        "     valves: [{name: A}]}\n"
        "services:\n"
        "  - {kind: relay_processor, name: processor, path: hw-el}\n"
        "  - {kind: relay_front_server, name: front, port: 0, path: hw-el}\n")
    state = Path(tempfile.mkdtemp(prefix="lbs", dir="/tmp"))
    try:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        node = build_node(node_file, state_dir=state)
        processor, front = node.services
        assert processor.path == front.repeater.path == str(state / "run" / "hw-el")
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(state / "xdg"))
        node = build_node(node_file, state_dir=state)
        assert node.services[0].path == str(state / "xdg" / "labbridge" / "hw-el")
        assert not node.services[0].path.startswith(tempfile.gettempdir() + "/hw")
    finally:
        shutil.rmtree(state, ignore_errors=True)


async def test_the_processor_creates_its_directory_private(sock_dir):
    run = sock_dir / "state" / "run"
    async with processor_at(run / "hw") as (processor, _bank):
        st = os.stat(run)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert stat.S_ISSOCK(os.stat(processor.path).st_mode)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o720])
async def test_a_directory_others_can_write_is_refused(sock_dir, mode):
    shared = sock_dir / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    bank = bank_from_vector(SAMPLE)
    processor = RelayProcessor(str(shared / "hw"), {"Extractionline":
                                                    Dispatcher([ValveCommands([bank])])})
    with pytest.raises(UnsafeSocketDirectory, match=f"writable by others.*chmod 700 {shared}"):
        await processor.start()
    assert not (shared / "hw").exists()
    # The repeater will not talk to a socket there either (it could be a squatter's).
    repeater = CommandRepeater(str(shared / "hw"))
    reply = await repeater.get_response("GetValveState B", "127.0.0.1")
    assert reply.startswith("ERROR 011") and "writable by others" in reply
    await repeater.close()


def test_a_directory_of_another_user_is_refused(sock_dir):
    other = sock_dir / "other"
    other.mkdir(mode=0o700)
    os.chown(other, 12345, 12345)  # the tests run as root on CI; otherwise skip below
    if os.stat(other).st_uid != 12345:
        pytest.skip("cannot chown here")
    with pytest.raises(UnsafeSocketDirectory, match="belongs to uid 12345, not to us"):
        check_private_dir(other)
    link = sock_dir / "link"
    link.symlink_to(sock_dir)
    with pytest.raises(UnsafeSocketDirectory, match="symbolic link"):
        check_private_dir(link)


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_a_legacy_cfg_port_out_of_range_names_file_and_line(tmp_path, port):
    (tmp_path / "system.cfg").write_text(
        f"# a legacy RemoteHardwareServer\n[General]\nclass = TCPServer\nport = {port}\n")
    node_file = tmp_path / "rhs.yaml"
    node_file.write_text("node: rhs\nservices:\n"
                         "  - {kind: relay_front_server, legacy_cfg: system.cfg}\n")
    with pytest.raises(ConfigError) as info:
        build_node(node_file)
    text = str(info.value)
    assert f"{tmp_path / 'system.cfg'}:4" in text and port in text and "0-65535" in text
