"""Hostile clients against the other listening faces of the demo lab: the notifier and the
dashboard server (ZeroMQ PUB and REP), the PyMoDAQ server, the hexrotcomm mock controller
(one client at a time) and the web dashboard (HTTP and WebSocket). Each test ends with the
checks of :mod:`tests.hostile.harness`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio

from labbridge.links.hexrotcomm.controller import HexrotController
from labbridge.protocol.hexrotcomm.devices import device_spec
from labbridge.protocol.hexrotcomm.framing import WireProfile
from labbridge.protocol.hexrotcomm.structs import Command, Generation
from labbridge.protocol.pymodaq.codec import make_codec
from labbridge.protocol.pymodaq.messages import ClientType, Hello, Role
from labbridge.protocol.pymodaq.messages import Generation as PGeneration
from tests.hostile.harness import (
    DEADLINE,
    Attack,
    ask_plain,
    check_health,
    demo_config,
    serve,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: ZMTP 3.0 greeting of a NULL-mechanism client (rfc.zeromq.org/spec/23): signature, version,
#: mechanism, as-server, filler.
ZMTP_GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16
                 + b"\x00" + b"\x00" * 31)


def zmtp_ready(socket_type: bytes) -> bytes:
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return b"\x04" + bytes([len(body)]) + body


def zmtp_long_frame(declared: int, sent: int) -> bytes:
    """A message frame declaring ``declared`` bytes (long form), with ``sent`` of them."""
    return b"\x02" + struct.pack(">Q", declared) + b"x" * sent


# -- ZeroMQ: notifier and dashboard -------------------------------------------------------------
DASHBOARD_VALUES = """\
devices:
  - name: Ion Gauge
    device: gauges
    values:
      - {name: pressure, func_name: pressure IG, period: 1, enabled: true, units: torr}
"""


def _valves_with_dashboard(workdir: Path) -> dict[str, Any]:
    cfg = demo_config("valve-controller")
    (workdir / "dashboard-values.yaml").write_text(DASHBOARD_VALUES)
    cfg["services"].append({"kind": "dashboard_server", "name": "dashboard",
                            "config": str(workdir / "dashboard-values.yaml"),
                            "host": "127.0.0.1", "port": 0, "rep_port": 0})
    return cfg


async def _zmq_good(ctx: zmq.asyncio.Context, pub: tuple[str, int],
                    rep: tuple[str, int]) -> None:
    """A REQ ping is answered ``echo``; a new SUB gets the next heartbeat."""
    req = ctx.socket(zmq.REQ)
    sub = ctx.socket(zmq.SUB)
    try:
        req.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.LINGER, 0)
        req.connect(f"tcp://{rep[0]}:{rep[1]}")
        await req.send(b"ping")
        assert await asyncio.wait_for(req.recv(), DEADLINE) == b"echo"
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://{pub[0]}:{pub[1]}")
        while True:  # the first message that mentions a heartbeat
            frames = await asyncio.wait_for(sub.recv_multipart(), DEADLINE)
            if any(b"heartbeat" in f for f in frames):
                return
    finally:
        req.close()
        sub.close()


async def _zmq_attack(attack: Attack, ctx: zmq.asyncio.Context, pub: tuple[str, int],
                      rep: tuple[str, int]) -> None:
    for host, port, kind in ((*pub, b"SUB"), (*rep, b"REQ")):
        await attack.trickle(host, port, ZMTP_GREETING[:10], byte=b"\x00", seconds=1.0)
        await attack.hog(host, port)
        for _ in range(2):  # declares 250 MiB, sends 64 KiB of it
            await attack.connect(host, port, ZMTP_GREETING + zmtp_ready(kind)
                                 + zmtp_long_frame(250 << 20, 65536))
        await attack.half_closed(host, port, ZMTP_GREETING[:20])
    # One 2 MiB subscription (raw ZMTP: pyzmq 27.3 / libzmq 4.3.5 crash the *subscriber*
    # process on a SUBSCRIBE option that large), many small ones, a REQ with a 2 MiB request.
    subscription = b"\x01" + b"x" * (2 << 20)
    await attack.connect(*pub, ZMTP_GREETING + zmtp_ready(b"SUB")
                         + zmtp_long_frame(len(subscription), 0) + subscription)
    many = ctx.socket(zmq.SUB)
    many.setsockopt(zmq.LINGER, 0)
    many.connect(f"tcp://{pub[0]}:{pub[1]}")
    for i in range(20000):
        many.setsockopt(zmq.SUBSCRIBE, b"topic-%06d" % i)
    lazy = ctx.socket(zmq.SUB)  # subscribes to everything, never reads
    lazy.setsockopt(zmq.LINGER, 0)
    lazy.setsockopt(zmq.SUBSCRIBE, b"")
    lazy.connect(f"tcp://{pub[0]}:{pub[1]}")
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(f"tcp://{rep[0]}:{rep[1]}")
    await req.send(b"x" * (2 << 20))
    for s in (many, lazy, req):
        attack.later(s.close)


@pytest.mark.parametrize("service", ["notifier", "dashboard"])
async def test_zmq_publisher_and_replier_survive_hostile_clients(workdir: Path,
                                                                 service: str) -> None:
    with serve(_valves_with_dashboard(workdir), workdir, "valves") as node:
        pub = node.endpoint("zmq-pub", service)
        rep = node.endpoint("zmq-rep", service)
        host, port = node.endpoint("tcp", "command-server")
        ctx = zmq.asyncio.Context()

        async def state() -> str:
            return await ask_plain(host, port, "GetValveStates")

        before = await state()
        await _zmq_good(ctx, pub, rep)
        rss = node.rss_kib()
        attack = Attack()
        try:
            await _zmq_attack(attack, ctx, pub, rep)
            await check_health(node, attack, rss, lambda: _zmq_good(ctx, pub, rep), state,
                               before)
        finally:
            await attack.close()
            ctx.term()


# -- PyMoDAQ server -------------------------------------------------------------------------------
def _g1(msg: object) -> bytes:
    return make_codec(PGeneration.G1, Role.CLIENT).send(msg)


async def test_pymodaq_server_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("pymodaq-main"), workdir, "pymodaq") as node:
        host, port = node.endpoint("tcp", "pymodaq-server")
        hello = _g1(Hello(ClientType.GRABBER))

        async def good() -> None:
            """A new GRABBER is taken (kept connected), not refused (closed)."""
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(hello)
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reader.read(1), 2.0)
            finally:
                writer.transport.abort()

        async def state() -> None:
            return None  # the server has no device state of its own

        rss = node.rss_kib()
        attack = Attack()
        try:
            await attack.trickle(host, port, hello[:6], byte=b"B")
            await attack.hog(host, port)
            for _ in range(3):  # a frame declaring 250 MiB after a valid client type
                await attack.connect(host, port, hello + struct.pack(">I", 250 << 20)
                                     + b"x" * 65536)
            await attack.half_closed(host, port, hello[:5])
            await check_health(node, attack, rss, good, state, None)
        finally:
            await attack.close()


# -- hexrotcomm mock controller (one client) ------------------------------------------------------
PROFILE = WireProfile.make(device_spec("rotator", Generation.D), Generation.D)
#: Seconds a silent client holds the mock before a newcomer may replace it (the one-client
#: server's ``replace_idle_after`` as the hexrot node configures it).
HEXROT_SILENCE = 5.0
#: Added to it: a loaded node may read the flood late, so the attacker's silence starts late.
SILENCE_MARGIN = 2.0


async def test_hexrot_mock_controller_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("rotator"), workdir, "rotator") as node:
        host, port = node.endpoint("tcp", "rotator-controller")

        async def snapshot() -> dict[str, Any]:
            ctrl = HexrotController("rotator", PROFILE, host, port, autoconnect=False,
                                    connect_timeout=DEADLINE, config_timeout=DEADLINE)
            try:
                await ctrl.connect()
                snap = ctrl.snapshot()
                return {k: snap.get(k) for k in ("state", "position", "enabled_substate")}
            finally:
                await ctrl.disconnect()

        async def good() -> None:
            assert (await snapshot())["state"] is not None

        before = await snapshot()
        rss = node.rss_kib()
        attack = Attack()
        try:
            # The first connection takes the only slot, floods unknown commands (each
            # answered NO_ACK) and never reads a reply or telemetry; then it falls silent.
            flood = b"".join(PROFILE.encode_command(Command(2, i, 9999)) for i in range(1000))
            await attack.never_read(host, port, flood)
            await attack.trickle(host, port, PROFILE.encode_command(Command(2, 0, 9999))[:30],
                                 byte=b"\x00", n=20)
            await attack.connect(host, port, b"\xff" * (1 << 20))  # garbage, 1 MiB
            with contextlib.suppress(TimeoutError):  # the silence itself is the attack
                await asyncio.wait_for(asyncio.Event().wait(), HEXROT_SILENCE + SILENCE_MARGIN)
            await check_health(node, attack, rss, good, snapshot, before)
        finally:
            await attack.close()


# -- web dashboard ----------------------------------------------------------------------------------
WS_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")


def _web_config(valves: Any) -> dict[str, Any]:
    vhost, vport = valves.endpoint("tcp", "command-server")
    phost, pport = valves.endpoint("zmq-pub", "notifier")
    return {"node": "dashboard", "services": [{
        "kind": "web_dashboard", "name": "web", "host": "127.0.0.1", "port": 0,
        "title": "hostile", "subscribe": [f"tcp://{phost}:{pport}"],
        "command_servers": [{"node": "valve-controller", "url": f"{vhost}:{vport}"}],
        "control": True}]}


async def test_web_dashboard_survives_hostile_clients(workdir: Path) -> None:
    with serve(demo_config("valve-controller"), workdir, "valves") as valves, \
            serve(_web_config(valves), workdir, "web") as node:
        host, port = node.endpoint("http", "web")
        vhost, vport = valves.endpoint("tcp", "command-server")
        base = f"http://{host}:{port}"

        async def state() -> str:
            return await ask_plain(vhost, vport, "GetValveStates")

        async def good() -> None:
            timeout = aiohttp.ClientTimeout(total=DEADLINE)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"{base}/api/nodes") as resp:
                    assert resp.status == 200
                async with session.ws_connect(f"{base}/ws") as ws:
                    msg = await ws.receive(timeout=DEADLINE)
                    assert msg.type is aiohttp.WSMsgType.TEXT and "hello" in msg.data

        before = await state()
        await good()
        rss = node.rss_kib()
        attack = Attack()
        try:
            await attack.trickle(host, port, b"GET / HTTP/1.1\r\nHost: x\r\n", byte=b"X")
            await attack.hog(host, port)
            for _ in range(70):  # more pages than max_clients, none of which ever reads
                await attack.connect(host, port, WS_HANDSHAKE, read=False)
            for _ in range(3):
                await attack.connect(host, port,
                                     b"POST /api/control/valve HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Type: application/json\r\n"
                                     b"Content-Length: 10000000000\r\n\r\n" + b"{" * 65536)
                await attack.connect(host, port, WS_HANDSHAKE + b"\x82\x7f"
                                     + struct.pack(">Q", 1 << 62) + b"x" * 65536)
            await attack.never_read(host, port, b"GET /api/config HTTP/1.1\r\nHost: x\r\n\r\n")
            await attack.half_closed(host, port, b"GET / HTTP/1.1\r\nHo")
            await check_health(node, attack, rss, good, state, before)
        finally:
            await attack.close()
