"""examples/valve-controller.yaml driven exactly like a Pychron client drives pyValve:
a new TCP connection per command, ``\\r`` terminator, reply read to EOF -- and over UDP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from labbridge.node.node import Node, build_node
from labbridge.protocol.pychron.crc import append_crc16, state_checksum
from tests.conftest import REPO
from tests.pychron.server_helpers import ask_like_pychron, ask_udp


@contextlib.asynccontextmanager
async def valve_node(tmp_path) -> AsyncIterator[tuple[Node, int]]:
    node = build_node(REPO / "examples" / "valve-controller.yaml", host="127.0.0.1", port=0,
                      state_dir=tmp_path)
    await node.start()
    try:
        ep = next(e for e in node.endpoints() if e.protocol == "tcp")
        assert ep.port
        yield node, ep.port
    finally:
        await node.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_pychron_client_session(tmp_path, transport):
    async with valve_node(tmp_path) as (_node, port):
        async def ask(text: str) -> str:
            if transport == "udp":
                return (await ask_udp(port, text.encode())).decode()
            reply, closed = await ask_like_pychron(port, text.encode() + b"\r")
            assert closed
            return reply.decode()

        assert await ask("Open A") == "OK"
        assert await ask("GetValveState A") == "OK"
        assert await ask("GetValveStates") == append_crc16("A1,B0,C0,D0,E0,F0")
        assert await ask("GetValveState Z") == "ERROR 005 : Z is not a registered valve name"
        names = sorted("ABCDEF")
        expected = state_checksum(
            f"VALVE-{n}{n == 'A'}False" for n in names)
        assert await ask(f"GetStateChecksum {','.join(names)}") == str(expected)
        assert await ask("Close A") == "OK"
        assert await ask("GetIndicatorState A") == "False"
        assert float(await ask("GetPressure gauges,IG")) > 0
        assert await ask("GetPressure gauges,XX") == "ERROR 016 : gauges XX not available"


async def test_state_and_locks_survive_a_restart(tmp_path):
    async with valve_node(tmp_path) as (_, port):
        await ask_like_pychron(port, b"Open C\r")
        await ask_like_pychron(port, b"Lock D\r")
    async with valve_node(tmp_path) as (_, port):
        reply, _ = await ask_like_pychron(port, b"GetValveStates\r")
        assert reply.decode() == append_crc16("A0,B0,C1,D0,E0,F0")
        reply, _ = await ask_like_pychron(port, b"GetValveLockStates\r")
        assert reply.decode() == append_crc16("A0,B0,C0,D1,E0,F0")
