"""Hostile clients against the Pychron-family faces of the demo lab: the valve and furnace
command servers (TCP and UDP), the Qtegra server, the legacy relay's front server and its
processor's Unix socket. Each test ends with the checks of :mod:`tests.hostile.harness`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from labbridge.protocol.pychron.braced import encode_braced
from labbridge.protocol.pychron.relay import RelayRequest, decode_crc_reply, encode_relay_request
from tests.conftest import REPO
from tests.hostile.harness import (
    Attack,
    ask_plain,
    check_health,
    demo_config,
    serve,
    udp_flood,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def _text_attack(attack: Attack, host: str, port: int, *, braced: bool) -> None:
    """What every Pychron-style text port gets."""
    await attack.trickle(host, port, b"{0400}Open " if braced else b"GetValveStates",
                         byte=b"A" if braced else b"S")
    await attack.hog(host, port)
    for _ in range(3):  # the largest frame/request there is, then silence
        await attack.connect(host, port, b"{FFFF}" + b"x" * 65000)
        await attack.connect(host, port, b"Open " + b"A" * (2 << 20))
    if braced:
        await attack.never_read(host, port, encode_braced("GetValveStates"))
    for _ in range(50):  # one-shot requests whose reply is never read
        await attack.connect(host, port, b"GetValveStates\r", read=False)
    await attack.half_closed(host, port, b"{0010}Op")
    await attack.half_closed(host, port, b"GetVal")


async def test_valve_command_server_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("valve-controller"), workdir, "valves") as node:
        host, port = node.endpoint("tcp", "command-server")
        _, udp_port = node.endpoint("udp", "command-server")

        async def state() -> tuple[str, str]:
            return (await ask_plain(host, port, "GetValveStates"),
                    await ask_plain(host, port, "GetValveLockStates"))

        async def good() -> None:
            states, _locks = await state()
            assert states.startswith("A0,")

        before = await state()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await _text_attack(attack, host, port, braced=True)
            await udp_flood(host, udp_port, [b"GetValveStates", b"\xff" * 1400, b"Open Z",
                                             b"{0400}Open "])
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()


async def test_furnace_command_server_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("furnace-controller"), workdir, "furnace") as node:
        host, port = node.endpoint("tcp", "command-server")

        async def state() -> str:
            return await ask_plain(host, port, "GetSetpoint")

        async def good() -> None:
            assert float(await ask_plain(host, port, "GetTemperature")) > -300

        before = await state()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await _text_attack(attack, host, port, braced=True)
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()


async def test_qtegra_server_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("spectrometer"), workdir, "qtegra") as node:
        host, port = node.endpoint("tcp", "qtegra")

        async def state() -> tuple[str, str]:
            return (await ask_plain(host, port, "GetMagnetDAC"),
                    await ask_plain(host, port, "GetIntegrationTime"))

        async def good() -> None:
            assert (await ask_plain(host, port, "GetMagnetDAC")) == "5"

        before = await state()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await _text_attack(attack, host, port, braced=False)
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()


def _relay_config() -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "examples" / "legacy-relay.yaml").read_text())
    for svc in cfg["services"]:
        if svc["kind"] == "relay_front_server":
            svc["port"] = 0
    return cfg


async def test_relay_front_server_survives_hostile_clients(workdir: Path) -> None:
    with serve(_relay_config(), workdir, "relay") as node:
        host, port = node.endpoint("tcp", "front")
        _, udp_port = node.endpoint("udp", "front")

        async def state() -> str:
            return decode_crc_reply((await ask_plain(host, port, "GetValveStates")).encode())

        async def good() -> None:
            assert decode_crc_reply((await ask_plain(host, port, "PychronReady")).encode()) \
                == "OK"

        before = await state()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await _text_attack(attack, host, port, braced=False)
            await udp_flood(host, udp_port, [b"GetValveStates", b"\x00" * 1400, b"Open Z"])
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()


async def test_relay_processor_socket_survives_hostile_clients(workdir: Path) -> None:
    with serve(_relay_config(), workdir, "relay") as node:
        host, port = node.endpoint("tcp", "front")
        path = node.path("processor")
        assert path.startswith(str(workdir))  # a private directory, not a fixed /tmp name

        async def state() -> str:
            return decode_crc_reply((await ask_plain(host, port, "GetValveStates")).encode())

        async def good() -> None:
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                writer.write(encode_relay_request(
                    RelayRequest("Extractionline", "GetValveState B", "127.0.0.1")))
                head = await reader.readexactly(4)
                body = await reader.readexactly(int(head, 16) - 4)
                assert decode_crc_reply(head + body) == "False"
            finally:
                writer.close()
            assert (await state()).startswith("A0,")  # and through the front server

        before = await state()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await attack.trickle(path, head=b"00FFExtractionline|", byte=b"x", unix=True)
            await attack.hog(path, n=100, unix=True)
            for _ in range(3):
                await attack.connect(path, None, b"FFFF" + b"x" * 65000, unix=True)
            await attack.never_read(path, None, encode_relay_request(
                RelayRequest("test", "x" * 200, None)), unix=True)
            await attack.half_closed(path, None, b"0020Extr", unix=True)
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()
