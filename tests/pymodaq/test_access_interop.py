"""Access on the PyMoDAQ link with the real G3 peer (pymodaq_utils 5.3.7, pymodaq_data 5.3.0,
serializall 0.0.1; spec pymodaq.md §10): from an operator's address it works as before; from an
observer's it is refused, and what the real reader gets is an error, not the clean EOF on which
it spins for ever (PyMoDAQ@5.0.0 src/pymodaq/utils/tcp_ip/mysocket.py and pymodaq_utils 5.3.7
mysocket.py: ``Socket.check_received_length`` never tests ``recv() == b""``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pymodaq_data  # noqa: F401  (the dev extra: missing means failing, not skipping)
import pymodaq_utils  # noqa: F401  (the dev extra: missing means failing, not skipping)
import pytest
import serializall  # noqa: F401  (the dev extra: missing means failing, not skipping)

from labbridge.node.node import build_node
from tests.pymodaq import pmd_peer as pmd
from tests.pymodaq import real_settings_xml as real
from tests.pymodaq.test_access import OBSERVER, OPERATOR, Audit
from tests.pymodaq.test_interop import _settings

pytestmark = pytest.mark.interop

NODE = """\
node: pmd-lab
security:
  addresses:
    admin: [127.0.0.1]
    operator: [127.0.0.2]
    observer: [127.0.0.3]
services:
  - {kind: pymodaq_server, name: pmd, port: 0, actuator: remote_stage,
     detector: remote_camera, timeout: 10}
"""


@pytest.fixture
async def node(tmp_path):
    path = tmp_path / "lab.yaml"
    path.write_text(NODE)
    node = build_node(path, state_dir=tmp_path / "state")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def port_of(node) -> int:
    return next(int(ep.port) for ep in node.endpoints() if ep.service == "pmd")


async def test_their_actuator_from_an_operator_address_works(node):
    audit = Audit(node.ctx.gate)
    actuator = node.ctx.devices["remote_stage"]
    log: list = []
    peer = asyncio.ensure_future(asyncio.to_thread(pmd.actuator_client, port_of(node), log,
                                                   OPERATOR))
    try:
        await actuator.wait_connected(10)
        await asyncio.wait_for(_settings(actuator), 10)  # its Infos (units) came
        assert await actuator.move_abs(12.5) == 12.5
        assert await actuator.get_position() == 12.5
    finally:
        actuator.disconnect()
        await asyncio.wait_for(peer, 15)
    reg = await audit.wait(outcome="done", verb="register")
    assert (reg.target, reg.who, reg.via, reg.transport, reg.role) == (
        "remote_stage", OPERATOR, "pmd", "tcp", "operator")
    assert log[:2] == ["move_abs", ("DataActuator", 12.5, "mm")]


class _EofCounting:
    """The real socket, counting the empty reads the real reader would loop on."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.empty_reads = 0

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        if not data:
            self.empty_reads += 1
            if self.empty_reads > 1000:  # the real reader would spin here for ever
                raise AssertionError("clean EOF: the real PyMoDAQ reader spins on it")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _their_grabber_refused(port: int) -> str:
    """The real client's steps (TCPClient.init_connection then poll_connection): connect,
    send its type and Infos, then read the next command with the real Socket/DeSerializer."""
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=pmd.TIMEOUT,
                                       source_address=(OBSERVER, 0))
    except ConnectionResetError:
        return "reset"  # loaded machine: the reset came before connect() returned
    counting = _EofCounting(raw)
    sock = pmd._PmdSocket(counting)  # the real class, no EOF shim
    try:
        try:
            sock.check_sended_with_serializer("GRABBER")
            sock.check_sended_with_serializer("Infos")
            sock.check_sended_with_serializer(real.INFOS_GRABBER)
        except ConnectionError:
            # post_init raised out of init_connection, which catches only
            # ConnectionRefusedError: the real client never starts polling.
            return "reset"
        try:
            pmd.DeSerializer(sock).string_deserialization()
        except ConnectionResetError:
            return "reset"
        return "read a command"
    finally:
        raw.close()


async def test_their_grabber_from_an_observer_address_is_refused(node):
    audit = Audit(node.ctx.gate)
    detector = node.ctx.devices["remote_camera"]
    how = await asyncio.wait_for(asyncio.to_thread(_their_grabber_refused, port_of(node)), 30)
    assert how == "reset"
    refused = await audit.wait(outcome="refused", address=OBSERVER)
    assert refused.reason == "connect needs the operator role; 127.0.0.3 is observer"
    assert not detector.connected and detector.settings == {}
