"""Build a valve node in-process and talk to it the way real Pychron clients do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import SwitchKind, ValveBank, ValveConfig
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.server import PychronCommandServer, ServerSettings
from labbridge.links.pychron.valves import ValveCommands

KINDS = {"valve": SwitchKind.VALVE, "switch": SwitchKind.SWITCH, "manual": SwitchKind.MANUAL}


def bank_from_vector(switches: list[dict[str, Any]], **kw: Any) -> ValveBank:
    configs = [ValveConfig(name=s["name"], kind=KINDS[s["kind"]],
                           initially_open=bool(s["state"]),
                           initially_locked=bool(s.get("software_lock")))
               for s in switches]
    bank = ValveBank("valves", configs, SimValveBackend(), **kw)
    for s in switches:
        if s.get("owner"):
            bank.set_owner(s["name"], s["owner"])
    return bank


@contextlib.asynccontextmanager
async def running_server(cmds: ValveCommands, *, udp: bool = False,
                         settings: ServerSettings | None = None,
                         ) -> AsyncIterator[PychronCommandServer]:
    for bank in cmds.banks:
        await bank.start()
    server = PychronCommandServer(Dispatcher([cmds]), "127.0.0.1", 0, udp=udp,
                                  settings=settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        for bank in cmds.banks:
            await bank.stop()


async def ask_like_pychron(port: int, data: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """One request on a new TCP connection, reply read until the server closes.

    Returns (reply bytes, closed_by_server)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def ask_udp(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, d: bytes, addr: Any) -> None:
            if not got.done():
                got.set_result(d)

    transport, _ = await loop.create_datagram_endpoint(P, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(data)
        return await asyncio.wait_for(got, timeout)
    finally:
        transport.close()
