"""Acknowledged means durable (issue 13, docs/adr/0110): a valve change is written and fsynced
before its reply goes out, so killing the node right after the reply loses nothing."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.state_file import StateNotSaved
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.crc import append_crc16
from tests.cli_helpers import port_of, serving
from tests.pychron.server_helpers import ask_like_pychron, running_server

TIMEOUT = 10.0

NODE = """\
node: durable-valves
devices:
  - kind: valve_bank
    name: valves
    backend: {kind: sim}
    valves: [{name: A}, {name: B}, {name: C}, {name: D}]
services:
  - {kind: pychron_command_server, name: command-server, port: 0}
"""


def ask_then_kill(port: int, pid: int, request: bytes) -> bytes:
    """Send one plain request, read the reply, SIGKILL the node the moment it is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        reply = sock.recv(1024)
        os.kill(pid, signal.SIGKILL)  # no orderly shutdown, no final flush
    return reply


def ask(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(1024):
            chunks.append(chunk)
    return b"".join(chunks)


def test_an_acknowledged_change_survives_sigkill_right_after_the_reply(tmp_path):
    config = tmp_path / "valves.yaml"
    config.write_text(NODE)
    opened: list[str] = []
    for valve, lock in (("A", False), ("C", False), ("D", True)):
        with serving(config, tmp_path) as (proc, info):
            port = port_of(info)
            request = f"Lock {valve}\r" if lock else f"Open {valve}\r"
            assert ask_then_kill(port, proc.pid, request.encode()) == b"OK"
            assert proc.wait(TIMEOUT) == -signal.SIGKILL
        if not lock:
            opened.append(valve)
        with serving(config, tmp_path) as (_proc, info):
            port = port_of(info)
            word = ",".join(f"{n}{int(n in opened)}" for n in "ABCD")
            assert ask(port, b"GetValveStates\r") == append_crc16(word).encode()
            if lock:
                assert ask(port, b"GetValveLockStates\r") == append_crc16("A0,B0,C0,D1").encode()


async def test_open_returns_only_once_the_file_holds_the_change(tmp_path: Path):
    path = tmp_path / "valves.json"
    bank = ValveBank("valves", [ValveConfig("A"), ValveConfig("B")], SimValveBackend(),
                     state_file=path)
    await bank.start()
    try:
        for target in (True, False, True):
            result = await (bank.open("A") if target else bank.close("A"))
            assert result.ok
            # No wait_saved(): the file already holds the change when open/close returns.
            assert json.loads(path.read_text())["valves"]["A"]["state"] is target
    finally:
        await bank.stop()


async def test_a_change_that_cannot_be_saved_is_not_acknowledged(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory should be")
    bank = ValveBank("valves", [ValveConfig("A")], SimValveBackend(),
                     state_file=blocker / "valves.json")
    async with running_server(ValveCommands([bank])) as server:
        assert server.port
        with pytest.raises(StateNotSaved, match="not-a-directory"):
            await bank.close("A")
        reply, closed = await ask_like_pychron(server.port, b"Open A\r")
        assert closed
        assert reply.startswith(b"ERROR 002 : func call problem: err= change made but not "
                                b"saved: state file ")
        assert b"not written" in reply
        # The node log says so in one line (what failed and why), never with a traceback.
        lines = [r for r in caplog.records if r.name == "labbridge.links.pychron.dispatch"]
        assert [r.getMessage()[:len("Open A failed: change made but not saved")]
                for r in lines] == ["Open A failed: change made but not saved"]
        assert not [r for r in caplog.records if r.exc_info]
        reply, _ = await ask_like_pychron(server.port, b"Lock A\r")
        assert reply.startswith(b"ERROR 002")
        # Both changes were made (in memory) but not acknowledged; once the directory is
        # usable again, the next change saves everything and is acknowledged.
        assert bank.is_open("A") and bank.is_locked("A")
        blocker.unlink()
        reply, _ = await ask_like_pychron(server.port, b"Unlock A\r")
        assert reply == b"OK"
        saved = json.loads((blocker / "valves.json").read_text())
        assert saved["valves"]["A"] == {"state": True, "locked": False}
