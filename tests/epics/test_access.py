"""Who may read and write the node's PVs, without an IOC: the EPICS access security file made
from the node's policy, and the node's gate on every write (``EpicsIoc._write``).

The real IOC with real clients is in test_access_interop.py. What the file must look like to
EPICS is taken from EPICS base R7.0.8.1: the ACF grammar and rule levels from
modules/libcom/src/as/asLib.y and asLibRoutines.c (``asComputePvt``: a rule applies to a
field when the field's ASL <= the rule's level; ``asHagAddHost``: with ``asCheckClientIP`` a
HAG entry is resolved to a dotted IPv4 address), and the file is loaded by EPICS's own parser
(``asInitMem``) in a subprocess.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import textwrap

from labbridge.access import LOOPBACK, REFUSED, Gate, Policy, Role
from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.camera import Camera, SimCameraBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.epics.acf import MAX_LISTED, access_file, group_name, role_hosts
from labbridge.links.epics.ioc import (
    EpicsIoc,
    IocSettings,
    _client_address,
    _ImageChannels,
    _peer_host,
)
from tests.access_helpers import gate_for


def policy(**roles: list[str]) -> Policy:
    return Policy(addresses={Role.parse(r): tuple(ipaddress.ip_network(n) for n in nets)
                             for r, nets in roles.items()}, configured=True)


def hags(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        if line.startswith("HAG("):
            name = line[4:line.index(")")]
            out[name] = [h.strip() for h in line[line.index("{") + 1:line.rindex("}")]
                         .split(",")]
    return out


def test_default_policy_lists_loopback_as_127_0_0_0_24() -> None:
    f = access_file(Policy.default(), {group_name(Role.OPERATOR): (Role.OPERATOR, None)})
    h = hags(f.text)
    # Admin on loopback, nobody else: every listed role is the same 254 local addresses.
    assert h["LB_OBSERVER"] == h["LB_OPERATOR"] == h["LB_ADMIN"]
    assert h["LB_ADMIN"][0] == "127.0.0.1" and h["LB_ADMIN"][-1] == "127.0.0.254"
    assert len(h["LB_ADMIN"]) == 254
    assert f.notes == []  # ::1 is left out without a word: CA is IPv4 only


def test_rules_read_for_observers_write_val_for_operators_locks_follow_the_lock_pv() -> None:
    p = policy(observer=["192.168.1.0/24"], operator=["192.168.1.10/32"],
               admin=["127.0.0.1/32"])
    f = access_file(p, {"LB_OPERATOR": (Role.OPERATOR, None),
                        "LB_OPERATOR_LOCK0": (Role.OPERATOR, "LAB:valves:A_LOCK")})
    h = hags(f.text)
    assert h["LB_OPERATOR"] == ["192.168.1.10", "127.0.0.1"]
    assert h["LB_ADMIN"] == ["127.0.0.1"]
    assert len(h["LB_OBSERVER"]) == 254 + 1  # the /24's hosts, and the admin's 127.0.0.1
    body = f.text[f.text.index("ASG(DEFAULT)"):]
    assert body.split("ASG(LB_OPERATOR)")[0].strip() == textwrap.dedent("""\
        ASG(DEFAULT) {
            RULE(1, READ) {
                HAG(LB_OBSERVER)
            }
        }""")  # read-only records: nobody writes any of their fields
    assert textwrap.dedent("""\
        ASG(LB_OPERATOR_LOCK0) {
            INPA("LAB:valves:A_LOCK")
            RULE(1, READ) {
                HAG(LB_OBSERVER)
            }
            RULE(0, WRITE, TRAPWRITE) {
                HAG(LB_OPERATOR)
                CALC("A=0")
            }
        }""") in f.text
    assert f.notes == []


def test_networks_too_large_to_list_open_that_rule_and_say_so() -> None:
    p = policy(observer=["10.1.0.0/16"], operator=["10.1.2.3/32"])
    f = access_file(p, {"LB_OPERATOR": (Role.OPERATOR, None)})
    assert "RULE(1, READ)\n" in f.text  # everyone may read: EPICS cannot list a /16
    assert "HAG(LB_OPERATOR)" in f.text  # writes are still listed
    assert f.hosts[Role.OBSERVER] is None and f.hosts[Role.OPERATOR] == ["10.1.2.3"]
    assert len(f.notes) == 1 and "10.1.0.0/16" in f.notes[0] and "gate" in f.notes[0]
    big = policy(operator=["10.2.0.0/20"])
    f2 = access_file(big, {"LB_OPERATOR": (Role.OPERATOR, None)})
    assert "RULE(0, WRITE, TRAPWRITE)\n" in f2.text and f2.hosts[Role.OPERATOR] is None
    # The limit: a /22 (1024 addresses) is still listed.
    assert MAX_LISTED == 1024
    assert len(role_hosts(policy(observer=["10.3.0.0/22"]))[Role.OBSERVER] or []) == 1022


def test_nobody_gets_no_rule_and_ipv6_is_left_out_with_a_note() -> None:
    f = access_file(policy(observer=["fd00::/64"]), {"LB_OPERATOR": (Role.OPERATOR, None)})
    assert "RULE" not in f.text and "HAG(" not in f.text  # no access at all over EPICS
    assert any("IPv6" in n for n in f.notes)


def test_the_generated_file_is_accepted_by_epics_base() -> None:
    """EPICS's own ACF parser (libCom ``asInitMem``) loads the file, with asCheckClientIP on,
    in a subprocess (EPICS base must not be loaded into the test process)."""
    import epicscorelibs  # noqa: F401  (the dev extra: missing means failing, not skipping)
    p = policy(observer=["192.168.1.0/24"], operator=["192.168.1.10/32"],
               admin=["127.0.0.0/8"])
    text = access_file(p, {"LB_OPERATOR": (Role.OPERATOR, None),
                           "LB_OPERATOR_LOCK0": (Role.OPERATOR, "LAB:valves:A_LOCK")}).text
    script = textwrap.dedent("""
        import ctypes, sys
        from epicscorelibs.ioc import Com
        ctypes.c_int.in_dll(Com, "asCheckClientIP").value = 1
        Com.asInitMem.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        Com.asInitMem.restype = ctypes.c_long
        status = Com.asInitMem(sys.stdin.read().encode(), None)
        Com.asDumpHag.argtypes = [ctypes.c_char_p]
        sys.stdout.flush()
        Com.asDumpHag(b"LB_OPERATOR")
        print("status", status, "active", ctypes.c_int.in_dll(Com, "asActive").value,
              flush=True)
    """)
    out = subprocess.run([sys.executable, "-c", script], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "status 0 active 1" in out.stdout, out.stdout + out.stderr
    assert "192.168.1.10" in out.stdout and "127.0.0.1" in out.stdout


def test_peer_addresses_as_epics_reports_them() -> None:
    assert _client_address("192.168.1.10") == "192.168.1.10"
    assert _client_address("[::1]") == "::1"
    assert _client_address(None) == "unknown"
    assert _peer_host("127.0.0.1:5075") == "127.0.0.1"
    assert _peer_host("[::1]:5075") == "[::1]"


# -- the gate in _write ------------------------------------------------------------------------
def lab_ioc(gate: Gate) -> tuple[EpicsIoc, ValveBank]:
    bank = ValveBank("valves", [ValveConfig("A", "0"), ValveConfig("B", "1")],
                     SimValveBackend(), check_ownership=True)
    return EpicsIoc("epics", [bank], IocSettings(prefix="LAB"), gate=gate), bank


async def test_an_observer_write_is_refused_by_the_gate_and_audited() -> None:
    gate = gate_for("10.0.0.9/32", role=Role.OBSERVER)
    ioc, bank = lab_ioc(gate)
    rec = ioc.records["valves:A"]
    reason = await ioc._write(rec, 1, "10.0.0.9")
    assert reason == "put needs the operator role; 10.0.0.9 is observer"
    assert not bank.is_open("A")
    ev = gate.recent[-1]
    assert (ev.outcome, ev.address, ev.target, ev.transport, ev.via, ev.role) == \
        (REFUSED, "10.0.0.9", "LAB:valves:A", "epics", "epics", "observer")
    assert ev.detail == "value 1"


async def test_an_operator_write_reaches_the_device_as_its_address() -> None:
    gate = gate_for("10.0.0.7/31", role=Role.OPERATOR)
    ioc, bank = lab_ioc(gate)
    await bank.start()
    try:
        # The requester the bank's ownership check compares is the client's address, as
        # the Pychron link passes its peer's.
        bank.set_owner("A", "10.0.0.7")
        assert await ioc._write(ioc.records["valves:A"], 1, "10.0.0.6") == \
            "open A refused: owned by 10.0.0.7"
        assert await ioc._write(ioc.records["valves:A"], 1, "10.0.0.7") is None
        assert bank.is_open("A")
        ev = gate.recent[-1]
        assert (ev.outcome, ev.who, ev.role) == ("done", "10.0.0.7", "operator")
        # A device refusal after the gate let it through is audited as failed.
        bank.lock("B")
        reason = await ioc._write(ioc.records["valves:B"], 1, "10.0.0.7")
        assert reason == "open B refused: software locked"
        assert (gate.recent[-1].outcome, gate.recent[-1].reason) == ("failed", reason)
    finally:
        await bank.stop()


async def test_a_write_with_no_client_or_an_unknown_address_is_refused() -> None:
    gate = Gate(Policy(addresses={Role.ADMIN: LOOPBACK}, configured=True), node="lab")
    ioc, bank = lab_ioc(gate)
    reason = await ioc._write(ioc.records["valves:A"], 1, None)
    assert reason is not None and "cannot tell which client" in reason
    assert gate.recent[-1].outcome == REFUSED
    # A host EPICS reports that is not an address (a claimed name) has no role.
    assert await ioc._write(ioc.records["valves:A"], 1, "operator-pc") == \
        "operator-pc has no access to node lab"
    assert not bank.is_open("A")


async def test_the_ntndarray_server_makes_channels_only_for_clients_with_a_role() -> None:
    """The camera's image has its own p4p server (no EPICS access security): its channel
    handler asks the gate, from a pvxs thread; a refusal is audited on the loop."""
    gate = gate_for("10.0.0.5/32", role=Role.OBSERVER)
    cam = Camera("camera", SimCameraBackend(4, 2, seed=1))
    ioc = EpicsIoc("epics", [cam], IocSettings(prefix="LAB"), gate=gate)
    ioc._loop = asyncio.get_running_loop()
    image = object()
    handler = _ImageChannels({"LAB:camera:IMAGE": image}, ioc._may_read)
    assert handler.testChannel("LAB:camera:IMAGE") and not handler.testChannel("LAB:x")
    assert await asyncio.to_thread(handler.makeChannel, "LAB:camera:IMAGE",
                                   "10.0.0.5:40000") is image
    assert await asyncio.to_thread(handler.makeChannel, "LAB:camera:IMAGE",
                                   "10.0.0.6:40000") is None
    await asyncio.sleep(0)  # one turn of the loop runs the audit handed over by the thread
    ev = gate.recent[-1]
    assert (ev.outcome, ev.address, ev.verb, ev.target) == \
        (REFUSED, "10.0.0.6", "get", "LAB:camera:IMAGE")
    # The client's retries (about one a second) are refused without an audit line each.
    refusals = gate.refusals
    for _ in range(3):
        assert await asyncio.to_thread(handler.makeChannel, "LAB:camera:IMAGE",
                                       "10.0.0.6:40001") is None
    await asyncio.sleep(0)
    assert gate.refusals == refusals
