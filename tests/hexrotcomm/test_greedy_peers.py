"""Greedy and silent peers of the hexrotcomm servers (issue 13), on real sockets.

Each test runs a node with ``labbridge serve`` in a subprocess, attacks one of its listening
endpoints, and checks at the end that the node is alive, serves a new well-behaved peer within
a deadline, grew its RSS by a bounded amount, does not spin the CPU, and that no device state
changed.

* A CSC that sends commands and never reads the replies: the generation-D mock stops reading
  from it while its write buffer is above the high-water mark (backpressure), instead of
  buffering the replies without bound.
* A connection that sends nothing holds the single slot of a one-client server: a new peer
  replaces it once it has been idle for ``replace_idle_after`` (generation D: the mock's CSC
  slot; generation A: the CSC side's telemetry and command slots, where the real controller
  connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from typing import Any

import pytest
import yaml

from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm.client import CommandTelemetryClient
from labbridge.links.hexrotcomm.common import LinkFault
from labbridge.links.hexrotcomm.mock_server import MockControllerClient
from labbridge.protocol.hexrotcomm import ROTATOR, WireProfile
from tests.conftest import REPO
from tests.hexrotcomm.helpers import T
from tests.hexrotcomm.node_proc import NodeProc
from tests.hexrotcomm.test_serve import _free_port_pair

EXAMPLE = REPO / "examples" / "rotator-mock.yaml"
PROFILE_D = WireProfile.make(ROTATOR, "D")
IDLE = 1.0  # replace_idle_after in the node files (s)
DEADLINE = 20.0  # a new well-behaved peer is served within this (s)
RSS_BOUND = 24 * 1024 * 1024  # bytes a node may grow by under attack
# commandStreamStructure_t (ts_hexrotpxicom@v0.2.6 commandStructure.h): CSC, counter,
# SET_STATE (0x8000), CLEAR_ERROR (6): accepted in STANDBY and changes nothing.
_CMD = struct.Struct("<III6d")


def _mock_node(tmp_path) -> NodeProc:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["services"][0]["replace_idle_after"] = IDLE
    return NodeProc(tmp_path, cfg, "--port", "0")


def _served_within(port: int, deadline: float) -> tuple[Any, Any]:
    """Connect a real CSC client (retrying like an operator would) until CONFIG and TELEMETRY
    arrive; return them."""
    async def attempt() -> tuple[Any, Any]:
        client = CommandTelemetryClient(PROFILE_D, "127.0.0.1", port, connect_timeout=2.0,
                                        config_timeout=2.0)
        try:
            await client.connect()
            return client.config, client.telemetry
        finally:
            await client.close()

    end = time.monotonic() + deadline
    while True:
        try:
            return asyncio.run(attempt())
        except LinkFault:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)  # the retry interval of a reconnecting client, not a sync


def _not_spinning(cpu0: float, t0: float, cpu1: float, t1: float) -> None:
    """Less than half a core over the window (plus 5 clock ticks of /proc granularity)."""
    assert cpu1 - cpu0 <= 0.5 * (t1 - t0) + 0.05, (cpu1 - cpu0, t1 - t0)


def _check_unchanged(config: Any, telemetry: Any) -> None:
    assert telemetry.state == 0.0 and telemetry.enabled_substate == 0.0  # STANDBY
    assert telemetry.current_pos == 0.0 and config.drives_enabled is False
    assert config.velocity_limit == 3.5 and config.upper_pos_limit == 90.0


def test_csc_that_never_reads_replies_is_paused_not_buffered(tmp_path):
    node = _mock_node(tmp_path)
    greedy = socket.socket()
    stop = threading.Event()
    sent = [0]
    try:
        port = node.ready()["services"][0]["port"]
        rss0 = node.rss()
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing anyway
        greedy.connect(("127.0.0.1", port))
        chunk = b"".join(_CMD.pack(2, i, 0x8000, 6.0, 0, 0, 0, 0, 0) for i in range(1024))

        def flood() -> None:  # up to 64 MiB of commands (~90 MiB of replies)
            while not stop.is_set() and sent[0] < 64 * 1024 * 1024:
                try:
                    greedy.sendall(chunk)
                except OSError:
                    return
                sent[0] += len(chunk)

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        node.wait_line("does not read its replies; reading paused")
        cpu0, t0 = node.cpu_seconds(), time.monotonic()
        # The node answered what it read, then stopped reading: the sender is stuck on full
        # socket buffers, and the node's memory holds at most a high-water mark of replies.
        sender.join(2.0)
        assert sender.is_alive() and sent[0] < 64 * 1024 * 1024
        rss1 = node.rss()
        assert rss1 - rss0 < RSS_BOUND, (rss0, rss1, sent[0])
        config, telemetry = _served_within(port, DEADLINE)  # replaces the stuck CSC
        cpu1, t1 = node.cpu_seconds(), time.monotonic()
        node.wait_line("replacing it with")
        _not_spinning(cpu0, t0, cpu1, t1)  # while the peer was stuck
        _check_unchanged(config, telemetry)
        assert node.rss() - rss0 < RSS_BOUND
        assert node.alive
    finally:
        stop.set()
        greedy.close()
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])


def test_silent_connection_does_not_lock_out_the_csc(tmp_path):
    node = _mock_node(tmp_path)
    silent = socket.socket()
    try:
        port = node.ready()["services"][0]["port"]
        rss0 = node.rss()
        silent.connect(("127.0.0.1", port))  # sends nothing, reads nothing
        cpu0, t0 = node.cpu_seconds(), time.monotonic()
        config, telemetry = _served_within(port, DEADLINE)
        cpu1, t1 = node.cpu_seconds(), time.monotonic()
        line = node.wait_line("replacing it with")
        assert f"limit {IDLE:.1f} s" in line
        _not_spinning(cpu0, t0, cpu1, t1)
        _check_unchanged(config, telemetry)
        # The silent peer was disconnected: it reads the frames sent before, then EOF.
        silent.settimeout(DEADLINE)
        while silent.recv(65536):
            pass
        assert node.rss() - rss0 < RSS_BOUND
        assert node.alive
    finally:
        silent.close()
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])


@pytest.mark.parametrize("which", ["telemetry", "command", "both"])
def test_gen_a_silent_connections_do_not_lock_out_the_controller(tmp_path, which):
    p = _free_port_pair()
    cfg = {"node": "csc-a", "devices": [{
        "kind": "hexrot_controller", "name": "rot", "device": "rotator", "generation": "A",
        "host": "127.0.0.1", "port": p, "replace_idle_after": IDLE}]}
    node = NodeProc(tmp_path, cfg)
    squatters: list[socket.socket] = []
    try:
        node.ready()
        node.wait_line("Command listening")
        rss0 = node.rss()
        ports = {"telemetry": [p], "command": [p + 1], "both": [p, p + 1]}[which]
        for port in ports:
            s = socket.socket()
            s.connect(("127.0.0.1", port))
            squatters.append(s)
        node.wait_line("connected")  # the squatters hold the slots
        mock = RotatorMockController("rot", "A")
        cpu0, t0 = node.cpu_seconds(), time.monotonic()

        def eof(sock: socket.socket) -> bytes:
            sock.settimeout(DEADLINE)
            return sock.recv(65536)

        async def controller() -> None:
            client = MockControllerClient(mock, "127.0.0.1", p)  # retries every 0.1 s
            await client.start()
            try:
                async with asyncio.timeout(DEADLINE):
                    # Every squatter is replaced (EOF) while the controller keeps retrying...
                    for sq in squatters:
                        assert await asyncio.to_thread(eof, sq) == b""
                    await client.telemetry_connected.wait()
                    await client.command_connected.wait()
                    # ...and then the controller's connections are served, not refused: the
                    # node logs one replacement per squatter and no refusal after the last one.
                    await asyncio.to_thread(node.wait_line, "replacing it with", DEADLINE,
                                            len(squatters))
                    assert node.count("replacing it with") == len(squatters)
                    last_replace = max(i for i, ln in enumerate(node.lines)
                                       if "replacing it with" in ln)
                    assert not any("rejecting connection" in ln
                                   for ln in node.lines[last_replace + 1:])
                    assert client.connected and client.command_connections >= 1
            finally:
                await client.close()

        asyncio.run(controller())
        cpu1, t1 = node.cpu_seconds(), time.monotonic()
        _not_spinning(cpu0, t0, cpu1, t1)
        assert mock.commands_received == 0 and mock.state.name == "OFFLINE"
        assert node.rss() - rss0 < RSS_BOUND
        assert node.alive
    finally:
        for s in squatters:
            s.close()
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])


async def test_gen_a_controller_that_never_takes_commands_is_dropped_not_buffered():
    """The CSC side writes commands with backpressure and a deadline: a controller that does
    not read them is disconnected after ``write_timeout`` instead of holding a send for ever
    or growing the buffer."""
    from labbridge.links.hexrotcomm.server_a import CommandTelemetryServer

    srv = CommandTelemetryServer(WireProfile.make(ROTATOR, "A"), "127.0.0.1", 0,
                                 write_timeout=0.5)
    await srv.start()
    tel_w = cmd_w = None
    try:
        _tel_r, tel_w = await asyncio.open_connection("127.0.0.1", srv.port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", srv.command_port))
        cmd_r, cmd_w = await asyncio.open_connection(sock=sock)
        await asyncio.wait_for(srv.wait_connected(), T)
        sent = 0
        with pytest.raises(ConnectionError, match=r"did not read the command within 0\.5 s"):
            async with asyncio.timeout(60):
                while True:
                    await srv.send(0x8000, [6.0])
                    sent += 1
                    assert srv.command_server.writer.transport.get_write_buffer_size() \
                        <= 256 * 1024
        assert sent > 0
        with contextlib.suppress(ConnectionResetError):  # aborted by the server: EOF or RST
            while await asyncio.wait_for(cmd_r.read(65536), T):
                pass
        assert cmd_r.at_eof() or cmd_r.exception() is not None
        assert not srv.connected
    finally:
        for w in (tel_w, cmd_w):
            if w is not None:
                w.close()
        await srv.close()
