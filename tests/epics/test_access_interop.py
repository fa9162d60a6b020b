"""Roles over EPICS with real clients: a node whose security section makes 127.0.0.1 (where
pyepics and p4p connect from) an observer, 127.0.0.2 an operator, and everyone else nobody.

Clients: pyepics 3.5.10 (libca) in a subprocess (its CA context reads its address list once
per process, and the session's context belongs to the other test node), p4p 4.3.0 (pvxs) in
the test process, and caproto 1.3.0, a third-party Channel Access implementation whose
sans-I/O circuit runs here over a socket bound to a chosen loopback address, claiming a host
and user name of our choice in its HOST_NAME / CLIENT_NAME messages.

Expected EPICS behaviour, from EPICS itself:

* with ``asCheckClientIP`` set, RSRV names a client by its socket's address and ignores its
  HOST_NAME message (base R7.0.8.1 modules/database/src/ioc/rsrv/caservertask.c
  ``create_tcp_client``, camessage.c ``host_name_action``); QSRV always uses the peer
  address (pvxs 1.5.2 ioc/credentials.cpp);
* a put without write access: ``ECA_NOWTACCESS`` "Write access denied" (base
  modules/ca/src/client/caerr.h; camessage.c ``write_notify_action`` replies with it), and
  pvxs "Put not permitted" (ioc/iocsource.cpp ``doFieldPreProcessing``);
* access rights in CA_PROTO_ACCESS_RIGHTS: bit 0 read, bit 1 write (base caproto.h
  ``CA_PROTO_ACCESS_RIGHT_READ`` / ``_WRITE``).
"""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.epics.conftest import Lab, serve_node

pytestmark = pytest.mark.interop
TIMEOUT = 10.0
PREFIX = "LBS"
OBSERVER, OPERATOR, STRANGER = "127.0.0.1", "127.0.0.2", "127.0.0.3"

NODE: dict[str, Any] = {
    "node": "guarded-lab",
    "security": {"addresses": {"observer": [OBSERVER], "operator": [OPERATOR]}},
    "devices": [
        {"kind": "valve_bank", "name": "valves", "persist": False,
         "backend": {"kind": "sim", "delay": 0.01},
         "valves": [{"name": "A", "address": 0}, {"name": "B", "address": 1,
                                                   "interlock": ["C"]},
                    {"name": "C", "address": 2}]},
        {"kind": "camera", "name": "camera", "width": 8, "height": 4, "seed": 1},
    ],
    "services": [
        {"kind": "pychron_command_server", "name": "command-server", "port": 0},
        {"kind": "epics_ioc", "name": "epics", "prefix": PREFIX, "ca_port": 0,
         "pva_port": 0, "pva_udp_port": 0},
    ],
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with serve_node(NODE, tmp_path_factory.mktemp("guarded-lab")) as lab:
        yield lab


def audit(lab: Lab) -> list[str]:
    """The node log's audit lines (the gate writes them before the client's put ends)."""
    assert lab.log is not None
    return [line.split("labbridge.audit: ", 1)[1]
            for line in lab.log.read_text(errors="replace").splitlines()
            if "labbridge.audit: " in line]


class CaprotoClient:
    """A Channel Access client (caproto's sans-I/O circuit) on a socket bound to ``source``,
    claiming ``host`` and ``user`` as its names."""

    def __init__(self, lab: Lab, source: str, host: str, user: str) -> None:
        import caproto

        self.ca = caproto
        port = int(lab.epics["ca_port"])
        self.sock = socket.socket()
        self.sock.settimeout(TIMEOUT)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.circuit = caproto.VirtualCircuit(caproto.CLIENT, ("127.0.0.1", port), priority=0)
        self.pending: collections.deque[Any] = collections.deque()
        self.send(caproto.VersionRequest(priority=0, version=13),
                  caproto.HostNameRequest(host), caproto.ClientNameRequest(user))

    def send(self, *commands: Any) -> None:
        self.sock.sendall(b"".join(bytes(b) for b in self.circuit.send(*commands)))

    def until(self, pred: Callable[[Any], bool]) -> Any:
        """The next command from the IOC that matches (the ones before it are dropped)."""
        while True:
            while self.pending:
                cmd = self.pending.popleft()
                if pred(cmd):
                    return cmd
            data = self.sock.recv(65536)
            assert data, "the IOC closed the circuit"
            commands, _ = self.circuit.recv(data)
            for cmd in commands:
                self.circuit.process_command(cmd)
                self.pending.append(cmd)

    def channel(self, name: str) -> tuple[Any, int]:
        """Create a channel; returns it and the access rights the IOC granted."""
        ca = self.ca
        chan = ca.ClientChannel(name, self.circuit)
        self.send(chan.create())
        rights = self.until(lambda c: isinstance(c, ca.AccessRightsResponse))
        self.until(lambda c: isinstance(c, ca.CreateChanResponse))
        return chan, int(rights.access_rights)

    def put(self, name: str, value: int) -> Any:
        """caput with callback; returns the IOC's status for it."""
        ca = self.ca
        chan, _ = self.channel(name)
        self.send(chan.write([value], data_type=ca.ChannelType.ENUM, notify=True))
        reply = self.until(lambda c: isinstance(c, ca.WriteNotifyResponse | ca.ErrorResponse))
        return reply.status

    def close(self) -> None:
        self.sock.close()


def pyepics(lab: Lab, script: str) -> dict[str, Any]:
    """Run a pyepics script in a subprocess on this node's address list; its last line of
    output is a JSON object."""
    code = "import json, epics\n" + textwrap.dedent(script)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, **lab.env()})
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def valves(lab: Lab) -> str:
    return lab.pychron("GetValveStates")  # an observer's read over another link


def test_the_access_file_lists_the_roles_addresses(guarded: Lab) -> None:
    e = guarded.epics
    assert e["access_notes"] == []
    text = open(e["access_file"]).read()
    assert f"HAG(LB_OBSERVER) {{ {OBSERVER}, {OPERATOR} }}" in text
    assert f"HAG(LB_OPERATOR) {{ {OPERATOR} }}" in text


def test_an_observer_caput_fails_and_changes_nothing(guarded: Lab) -> None:
    before = valves(guarded)
    got = pyepics(guarded, f"""
        pv = epics.PV("{PREFIX}:valves:A")
        assert pv.wait_for_connection({TIMEOUT})
        out = {{"read": pv.read_access, "write": pv.write_access,
                "before": pv.get(timeout={TIMEOUT})}}
        try:
            epics.caput("{PREFIX}:valves:A", 1, wait=True, timeout={TIMEOUT})
            out["error"] = None
        except epics.ca.CASeverityException as exc:
            out["error"] = str(exc)
        out["after"] = epics.caget("{PREFIX}:valves:A", timeout={TIMEOUT})
        print(json.dumps(out))
    """)
    assert got["read"] is True and got["write"] is False  # the channel is read-only for it
    assert got["error"] is not None and "Write access denied" in got["error"]
    assert got["before"] == got["after"] == 0
    assert valves(guarded) == before and before.startswith("A0")


def test_an_observer_pvput_fails_and_changes_nothing(guarded: Lab) -> None:
    before = valves(guarded)
    ctx = guarded.pva()
    try:
        with pytest.raises(Exception, match="Put not permitted"):
            ctx.put(guarded.pv("valves:A"), 1, timeout=TIMEOUT)
        assert int(ctx.get(guarded.pv("valves:A"), timeout=TIMEOUT).raw.value.index) == 0
        # Reads stay allowed, the camera's NTNDArray (its own p4p server) included.
        img = ctx.get(guarded.pv("camera:IMAGE"), timeout=TIMEOUT)
        assert img.shape == (1, 1) or img.shape == (4, 8)
    finally:
        ctx.close()
    assert valves(guarded) == before


def test_a_claimed_host_name_is_not_believed(guarded: Lab) -> None:
    """The observer's machine claims to be the operator's: still read-only, no write."""
    client = CaprotoClient(guarded, OBSERVER, host=OPERATOR, user="root")
    try:
        _, rights = client.channel(guarded.pv("valves:A"))
        assert rights == 1  # read, not write
        status = client.put(guarded.pv("valves:A"), 1)
        assert status.name == "ECA_NOWTACCESS"
    finally:
        client.close()
    assert valves(guarded).startswith("A0")


def test_an_operator_write_works_and_the_audit_names_its_socket_address(guarded: Lab) -> None:
    """The operator's machine claims the observer's name and a user name: neither counts."""
    client = CaprotoClient(guarded, OPERATOR, host=OBSERVER, user="observer")
    try:
        _, rights = client.channel(guarded.pv("valves:A"))
        assert rights == 3  # read and write
        assert client.put(guarded.pv("valves:A"), 1).name == "ECA_NORMAL"
        assert valves(guarded).startswith("A1")  # the device moved
        assert f"done: put {PREFIX}:valves:A (value 1) by {OPERATOR} as operator via " \
               "epics/epics" in audit(guarded)
        assert client.put(guarded.pv("valves:A"), 0).name == "ECA_NORMAL"
        assert valves(guarded).startswith("A0")
    finally:
        client.close()


def test_a_device_refusal_after_the_gate_is_audited_with_the_address(guarded: Lab) -> None:
    client = CaprotoClient(guarded, OPERATOR, host="operator-pc", user="op")
    try:
        assert client.put(guarded.pv("valves:C"), 1).name == "ECA_NORMAL"
        # CA carries no processing status (ADR 0151): the put ends normally, the value stays.
        client.put(guarded.pv("valves:B"), 1)
        assert "B0" in valves(guarded)
        line = f"failed: put {PREFIX}:valves:B (value 1) by {OPERATOR} as operator via " \
               "epics/epics: open B refused: interlock: C is open"
        assert line in audit(guarded)
        assert client.put(guarded.pv("valves:C"), 0).name == "ECA_NORMAL"
    finally:
        client.close()
    got = pyepics(guarded, f"""
        print(json.dumps({{"last": epics.caget("{PREFIX}:valves:LAST_ERROR", as_string=True,
                                               timeout={TIMEOUT})}}))
    """)
    assert got["last"] == "open B refused: interlock: C is open"


def test_a_client_with_no_role_cannot_even_read(guarded: Lab) -> None:
    client = CaprotoClient(guarded, STRANGER, host=OPERATOR, user="root")
    try:
        chan, rights = client.channel(guarded.pv("valves:A"))
        assert rights == 0
        ca = client.ca
        client.send(chan.read(data_type=ca.ChannelType.ENUM, notify=True))
        reply = client.until(lambda c: isinstance(c, ca.ReadNotifyResponse | ca.ErrorResponse))
        assert reply.status.name == "ECA_NORDACCESS"
        assert client.put(guarded.pv("valves:A"), 1).name == "ECA_NOWTACCESS"
    finally:
        client.close()
    assert valves(guarded).startswith("A0")
