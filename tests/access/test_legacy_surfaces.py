"""Roles by source address on the protocols that carry no credentials: Pychron (plain, braced,
JSON, UDP), the legacy relay and Qtegra, on real loopback sockets.

Linux routes all of 127.0.0.0/8 to loopback, so a client bound to 127.0.0.2, .3 or .4 is a
distinct peer address: the node file below makes .2 an operator, .3 an observer and gives .4
nothing; 127.0.0.1 (the test's own default) is admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import textwrap
from collections.abc import AsyncIterator

import pytest

from labbridge.node.node import Node, build_node
from labbridge.protocol.pychron.braced import encode_braced

ADMIN, OPERATOR, OBSERVER, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"

NODE = """\
node: secured
security:
  addresses:
    admin: [127.0.0.1]
    operator: [127.0.0.2]
    observer: [127.0.0.3]
  udp_writers: []
devices:
  - kind: valve_bank
    name: valves
    backend: {{kind: sim, delay: 0.0}}
    persist: false
    valves:
      - {{name: A, address: 0}}
      - {{name: B, address: 1}}
  - kind: mass_spectrometer
    name: argus
    magnet_dac: 5.0
    detectors: {{H1: 0.1, AX: 0.0}}
    peaks: [{{name: Ar40, dac: 5.0, intensity: 5.0}}]
services:
  - kind: pychron_command_server
    name: command-server
    port: 0
    udp: true
    devices: [valves]
  - kind: qtegra_server
    name: qtegra
    device: argus
    port: 0
    udp: true
  - kind: relay_processor
    name: processor
    path: {sock}
    handlers: {{Extractionline: [valves]}}
  - kind: relay_front_server
    name: front
    port: 0
    udp: true
    path: {sock}
"""


@contextlib.asynccontextmanager
async def secured_node(tmp_path) -> AsyncIterator[tuple[Node, dict[str, int]]]:
    path = tmp_path / "secured.yaml"
    path.write_text(NODE.format(sock=tmp_path / "relay.sock"))
    node = build_node(path, state_dir=tmp_path / "state")
    await node.start()
    try:
        ports: dict[str, int] = {}
        for ep in node.endpoints():
            if ep.role == "listen" and ep.port:
                ports[f"{ep.service}/{ep.protocol}"] = ep.port
        yield node, ports
    finally:
        await node.stop()


async def ask_tcp(port: int, data: bytes, source: str, timeout: float = 5.0) -> bytes:
    """One request on a new connection from ``source``; the reply read to EOF."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def ask_braced(port: int, texts: list[str], source: str) -> list[str]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5)
    try:
        out = []
        for text in texts:
            writer.write(encode_braced(text))
            frame = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
            out.append(frame[6:-2].decode())
        return out
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def ask_udp(port: int, data: bytes, source: str) -> bytes:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, d: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(d)

    tr, _ = await loop.create_datagram_endpoint(P, local_addr=(source, 0),
                                                remote_addr=("127.0.0.1", port))
    try:
        tr.sendto(data)
        return await asyncio.wait_for(got, 5)
    finally:
        tr.close()


def valve_open(node: Node, name: str) -> bool:
    return node.ctx.devices["valves"].is_open(name)


async def test_pychron_plain_tcp_roles(tmp_path, caplog):
    async with secured_node(tmp_path) as (node, ports):
        port = ports["command-server/tcp"]
        # The observer reads, but Open is refused with the real table's ERROR 012 and nothing
        # moves; the stranger gets ERROR 013 even for a read.
        assert await ask_tcp(port, b"GetValveState A\r", OBSERVER) == b"False"
        with caplog.at_level(logging.INFO, logger="labbridge.audit"):
            reply = await ask_tcp(port, b"Open A\r", OBSERVER)
        assert reply.startswith(b"ERROR 012 : Access restricted to the operator role (Open)")
        assert b"127.0.0.3 (observer)" in reply
        assert not valve_open(node, "A")
        assert await ask_tcp(port, b"GetValveState A\r", STRANGER) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.4")
        assert await ask_tcp(port, b"Open A\r", STRANGER) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.4")
        assert not valve_open(node, "A")
        # A real Pychron client (one plain request per connection, \r, no credentials) from
        # the operator's address works.
        assert await ask_tcp(port, b"Open A\r", OPERATOR) == b"OK"
        assert valve_open(node, "A")
        # Locks are for admins.
        assert (await ask_tcp(port, b"Lock B\r", OPERATOR)).startswith(b"ERROR 012")
        assert not node.ctx.devices["valves"].is_locked("B")
        assert await ask_tcp(port, b"Lock B\r", ADMIN) == b"OK"
        assert node.ctx.devices["valves"].is_locked("B")
    events = [(e.outcome, e.verb, e.target, e.address) for e in node.ctx.gate.recent]
    assert ("refused", "Open", "A", OBSERVER) in events
    assert ("refused", "GetValveState", "", STRANGER) in events
    assert ("done", "Open", "A", OPERATOR) in events
    assert ("refused", "Lock", "B", OPERATOR) in events
    assert ("done", "Lock", "B", ADMIN) in events
    assert not any(e[1] == "GetValveState" and e[3] == OBSERVER for e in events)  # reads
    assert any("refused: Open A by 127.0.0.3 as observer" in r.getMessage()
               for r in caplog.records)


async def test_pychron_braced_and_json_roles(tmp_path):
    async with secured_node(tmp_path) as (node, ports):
        port = ports["command-server/tcp"]
        replies = await ask_braced(port, ["GetValveState A", "Open A", "Close A"], OBSERVER)
        assert replies[0] == "False"
        assert replies[1].startswith("ERROR 012") and replies[2].startswith("ERROR 012")
        assert not valve_open(node, "A")
        assert await ask_braced(port, ["Open A"], STRANGER) == [
            "ERROR 013 : Not an approved ip address 127.0.0.4"]
        req = json.dumps({"command": "Open", "value": "A"}).encode()
        assert (await ask_tcp(port, req, OBSERVER)).startswith(b"ERROR 012")
        assert not valve_open(node, "A")
        assert await ask_tcp(port, req, OPERATOR) == b"OK"
        assert valve_open(node, "A")
        assert await ask_braced(port, ["Close A"], OPERATOR) == ["OK"]


async def test_pychron_udp_is_read_only_unless_listed(tmp_path):
    async with secured_node(tmp_path) as (node, ports):
        port = ports["command-server/udp"]
        assert await ask_udp(port, b"GetValveState A", OBSERVER) == b"False"
        for who in (OPERATOR, ADMIN):  # udp_writers: [] -> nobody may write over UDP
            reply = await ask_udp(port, b"Open A", who)
            assert reply.startswith(b"ERROR 012"), reply
            assert b"over UDP, which is read-only here" in reply
        assert await ask_udp(port, b"GetValveState A", STRANGER) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.4")
        assert not valve_open(node, "A")


async def test_relay_judges_the_original_sender(tmp_path):
    async with secured_node(tmp_path) as (node, ports):
        tcp, udp = ports["front/tcp"], ports["front/udp"]
        reply = await ask_tcp(tcp, b"Open A\r", OBSERVER)
        assert b"ERROR 012" in reply
        reply = await ask_tcp(tcp, b"Open A\r", STRANGER)
        assert b"ERROR 013 : Not an approved ip address 127.0.0.4" in reply
        reply = await ask_udp(udp, b"Open A", OPERATOR)
        assert b"ERROR 012" in reply and b"UDP" in reply
        assert not valve_open(node, "A")
        reply = await ask_tcp(tcp, b"Open A\r", OPERATOR)
        assert b"OK" in reply and b"ERROR" not in reply
        assert valve_open(node, "A")
    assert ("done", "Open", "A", OPERATOR, "processor") in [
        (e.outcome, e.verb, e.target, e.address, e.via) for e in node.ctx.gate.recent]


async def test_qtegra_roles(tmp_path):
    async with secured_node(tmp_path) as (node, ports):
        tcp, udp = ports["qtegra/tcp"], ports["qtegra/udp"]
        spec = node.ctx.devices["argus"]
        before = spec.integration_time
        assert float(await ask_tcp(tcp, b"GetIntegrationTime\r", OBSERVER)) == (
            pytest.approx(before))
        reply = await ask_tcp(tcp, b"SetIntegrationTime 2.5\r", OBSERVER)
        assert reply.startswith(
            b"Error: access denied: SetIntegrationTime needs the operator role")
        reply = await ask_tcp(tcp, b"GetIntegrationTime\r", STRANGER)
        assert reply.startswith(b"Error: access denied: 127.0.0.4 has no access")
        reply = await ask_udp(udp, b"SetIntegrationTime 2.5", OPERATOR)
        assert b"UDP is read-only" in reply
        assert spec.integration_time == before
        assert await ask_tcp(tcp, b"SetIntegrationTime 2.5\r", OPERATOR) == b"OK"
        assert spec.integration_time == pytest.approx(2.5)


async def test_allow_list_empty_means_nobody(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(textwrap.dedent("""\
        node: closed
        devices:
          - {kind: valve_bank, name: valves, persist: false, backend: {kind: sim, delay: 0},
             valves: [{name: A, address: 0}]}
        services:
          - {kind: pychron_command_server, port: 0, allow: []}
        """))
    node = build_node(path, state_dir=tmp_path / "s")
    await node.start()
    try:
        port = next(e.port for e in node.endpoints() if e.protocol == "tcp")
        # Even this machine, admin by the default policy, is filtered out by `allow: []`.
        assert await ask_tcp(port, b"GetValveState A\r", ADMIN) == (
            b"ERROR 013 : Not an approved ip address 127.0.0.1")
    finally:
        await node.stop()
    assert node.ctx.gate.refusals == 1
