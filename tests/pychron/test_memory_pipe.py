"""The in-memory pipe carries a real server protocol without sockets."""

from __future__ import annotations

import asyncio

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.dispatch import Dispatcher
from labbridge.links.pychron.server import CommandConnection, ServerSettings
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.braced import encode_braced
from labbridge.transport.memory import connect_pipe
from tests.access_helpers import gate_for


async def test_braced_and_plain_requests_through_memory():
    bank = ValveBank("valves", [ValveConfig("A"), ValveConfig("B", initially_open=True)],
                     SimValveBackend())
    dispatcher = Dispatcher([ValveCommands([bank])], gate_for("10.0.0.0/8"))
    settings = ServerSettings(linger=0.05)

    reader, writer = await connect_pipe(CommandConnection(dispatcher, settings))
    writer.write(encode_braced("Open A") + encode_braced("GetValveState A"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == encode_braced("OK")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == encode_braced("OK")
    writer.close()

    reader, writer = await connect_pipe(CommandConnection(dispatcher, settings),
                                        client_addr=("10.1.2.3", 5000))
    writer.write(b"GetValveState B\r")
    assert await asyncio.wait_for(reader.read(), 5) == b"OK"  # reply, then the server closes
    writer.close()
    for _ in range(3):  # let the closing callbacks run
        await asyncio.sleep(0)
    assert bank.is_open("A")
