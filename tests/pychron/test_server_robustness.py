"""Bad input never crashes, hangs or changes a valve; the server keeps serving."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.server import ServerSettings
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.braced import encode_braced
from labbridge.protocol.pychron.crc import append_crc16
from tests.pychron.server_helpers import ask_like_pychron, running_server

INITIAL = append_crc16("A0,B1,C0")


def make_bank(delay: float = 0.0) -> ValveBank:
    return ValveBank("valves", [ValveConfig("A"), ValveConfig("B", initially_open=True),
                                ValveConfig("C")], SimValveBackend(delay=delay))


async def states(port: int) -> str:
    reply, _ = await ask_like_pychron(port, b"GetValveStates\r")
    return reply.decode()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(reader.read(65536), 5):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("payload", [
    b"\x00\x01\x02\xff\xfe garbage\r",
    b"\xff\xfe\xfd\r",
    "Öffne A\r".encode("latin-1"),
    b"Open \xffA\r",
    b"\r\n\r\n",
    b"{\"command\": [1, 2, {\"x\": \"}\"}]}",
    b"{0x0E}Open A\r\n",
])
async def test_garbage_gets_an_error_and_changes_nothing(payload):
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        reply, closed = await ask_like_pychron(server.port, payload)
        assert closed
        if payload.strip():
            assert reply.startswith(b"ERROR"), reply
        assert await states(server.port) == INITIAL


async def test_braced_garbage_gets_error_frames_and_connection_goes_on():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"{000F}Open A\r\n")  # the seed's miscounted example
        line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert line == encode_braced("ERROR 900 : length mismatch: header declares 15 bytes "
                                     "(0x000F), frame is 14 bytes (0x000E)")
        writer.write(b"{0005}\r\n{000A}\xff\xfe\r\n{0016}GetValveStates\r\n")
        for expected in (b"ERROR 901", b"ERROR 903", INITIAL.encode()):
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            assert expected in line, line
        writer.close()
        await writer.wait_closed()
        assert bank.is_open("A") is False


async def test_one_mib_without_terminator_is_refused():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"Open " + b"A" * (1 << 20))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        reply = await read_all(reader)
        assert reply.startswith(b"ERROR 003 : invalid command: request too long")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        # Braced: a header declaring a frame larger than allowed, then bytes.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"{FFFF}" + b"A" * (1 << 20))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        reply = await read_all(reader)
        assert b"ERROR 901" in reply
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert await states(server.port) == INITIAL


async def test_peer_vanishing_mid_frame_and_mass_connect_drop():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        # Truncated messages (a whole plain request ended by the peer's FIN is a request:
        # F-RAW requests end at half-close, spec 3.2).
        for partial in (b"{0010}Open", b"{0010}Open A\r", b"{\"command\": \"Open\", ", b"{00",
                        b"Ope"):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(partial)
            await writer.drain()
            writer.transport.abort()
        for i in range(1000):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if i % 2:
                writer.write(b"{0010}Clo")
            writer.transport.abort()
        assert await states(server.port) == INITIAL
        # Every dropped connection has been forgotten.
        for _ in range(200):
            if server.connections == 0:
                break
            await asyncio.sleep(0.01)
        assert server.connections == 0
    assert bank.is_open("A") is False and bank.is_open("B") is True


async def test_unterminated_plain_request_is_answered_after_a_quiet_gap():
    bank = make_bank()
    async with running_server(ValveCommands([bank])) as server:
        reply, closed = await ask_like_pychron(server.port, b"GetValveState B")
        assert (reply, closed) == (b"OK", True)


async def test_partial_braced_frame_times_out_with_error_902():
    bank = make_bank()
    settings = ServerSettings(frame_timeout=0.2)
    async with running_server(ValveCommands([bank]), settings=settings) as server:
        reply, closed = await ask_like_pychron(server.port, b"{0010}Ope")
        assert reply == encode_braced("ERROR 902 : frame timeout") and closed


async def test_slow_actuation_never_blocks_other_clients():
    bank = make_bank(delay=30.0)  # an actuation that takes far longer than the test
    async with running_server(ValveCommands([bank])) as server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"Open A\r")
        await writer.drain()
        # While A is still actuating, another client is served.
        reply, _ = await ask_like_pychron(server.port, b"GetValveState B\r")
        assert reply == b"OK"
        assert await states(server.port) == INITIAL
        writer.transport.abort()


async def test_braced_pipelining_keeps_request_order_across_slow_and_fast():
    bank = make_bank(delay=0.05)
    async with running_server(ValveCommands([bank])) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(encode_braced("Open A") + encode_braced("GetValveState A")
                     + encode_braced("GetValveState Z") + encode_braced("Close A")
                     + encode_braced("GetValveState A"))
        got = [await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) for _ in range(5)]
        writer.close()
        await writer.wait_closed()
    assert [g[6:-2] for g in got] == [
        b"OK", b"OK", b"ERROR 005 : Z is not a registered valve name", b"OK", b"False"]


async def test_allow_list_refuses_other_networks():
    import ipaddress

    bank = make_bank()
    settings = ServerSettings(allow=[ipaddress.ip_network("10.0.0.0/8")])
    async with running_server(ValveCommands([bank]), settings=settings, udp=True) as server:
        reply, closed = await ask_like_pychron(server.port, b"Open A\r")
        assert reply == b"ERROR 013 : Not an approved ip address 127.0.0.1" and closed
        from tests.pychron.server_helpers import ask_udp

        assert await ask_udp(server.udp_port, b"Open A") == (
            b"ERROR 013 : Not an approved ip address 127.0.0.1")
    assert bank.is_open("A") is False
