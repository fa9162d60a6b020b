"""The access model without sockets: roles by address, identities, UDP, secrets, the gate."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from labbridge.access import (
    DONE,
    FAILED,
    REFUSED,
    AccessDenied,
    Action,
    Gate,
    Identity,
    Policy,
    Principal,
    Role,
    check_hash_format,
    hash_secret,
    verify_secret,
)


def nets(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


LAB = Policy(addresses={Role.ADMIN: nets("127.0.0.1/32"),
                        Role.OPERATOR: nets("192.168.1.10/32"),
                        Role.OBSERVER: nets("192.168.1.0/24")},
             udp_writers=nets("192.168.1.10/32"), configured=True,
             identities={"alice": Identity("alice", Role.OPERATOR)})


def test_default_policy_trusts_this_machine_only():
    p = Policy.default()
    assert p.role_of(Principal("127.0.0.1")) is Role.ADMIN
    assert p.role_of(Principal("127.5.6.7")) is Role.ADMIN
    assert p.role_of(Principal("::1")) is Role.ADMIN
    assert p.role_of(Principal("::ffff:127.0.0.1")) is Role.ADMIN  # IPv4-mapped
    assert p.role_of(Principal("local", transport="local")) is Role.ADMIN
    assert p.role_of(Principal("192.168.1.10")) is Role.NOBODY
    assert p.role_of(Principal("not-an-address")) is Role.NOBODY
    assert not p.configured


def test_highest_matching_role_wins_and_empty_means_nobody():
    assert LAB.role_of(Principal("192.168.1.10")) is Role.OPERATOR
    assert LAB.role_of(Principal("192.168.1.77")) is Role.OBSERVER
    assert LAB.role_of(Principal("10.0.0.1")) is Role.NOBODY
    empty = Policy(addresses={Role.OPERATOR: ()}, configured=True)
    assert empty.role_of(Principal("127.0.0.1")) is Role.NOBODY


def test_udp_is_read_only_except_for_listed_writers():
    assert LAB.role_of(Principal("192.168.1.10", transport="udp")) is Role.OPERATOR
    admin_udp = Principal("127.0.0.1", transport="udp")
    assert LAB.role_of(admin_udp) is Role.OBSERVER  # admin by address, but not a UDP writer
    assert LAB.role_of(Principal("192.168.1.77", transport="udp")) is Role.OBSERVER


def test_identity_role_wins_and_unknown_identity_is_nobody():
    assert LAB.role_of(Principal("10.0.0.1", identity="alice")) is Role.OPERATOR
    assert LAB.role_of(Principal("127.0.0.1", identity="mallory")) is Role.NOBODY


def test_passwords_and_tokens_hash_and_verify():
    h = hash_secret("correct horse")
    assert h.startswith("scrypt$") and check_hash_format(h) is None
    assert verify_secret("correct horse", h)
    assert not verify_secret("Correct horse", h)
    t = hash_secret("tok-123", kind="token")
    assert t.startswith("sha256$") and verify_secret("tok-123", t)
    assert not verify_secret("tok-124", t)
    assert check_hash_format("hunter2") is not None
    assert not verify_secret("hunter2", "hunter2")  # a plain text "hash" never matches
    p = Policy(identities={"bob": Identity("bob", Role.ADMIN, password=h, token=t)})
    assert p.check_password("bob", "correct horse").name == "bob"
    assert p.check_password("bob", "wrong") is None
    assert p.check_password("nobody-here", "correct horse") is None
    assert p.check_token("tok-123").name == "bob"
    assert p.check_token("nope") is None


def test_gate_refuses_audits_and_runs(caplog):
    gate = Gate(LAB, node="valves")
    events = []
    gate.add_sink(events.append)
    observer = Principal("192.168.1.77", "command-server")
    with caplog.at_level(logging.INFO, logger="labbridge.audit"):
        with pytest.raises(AccessDenied) as info:
            gate.check(observer, Action(Role.OPERATOR, "Open", "A"))
        assert "Open needs the operator role; 192.168.1.77 is observer" == str(info.value)
        assert gate.check(observer, Action(Role.OBSERVER, "GetValveState", "A")) is Role.OBSERVER
        operator = Principal("192.168.1.10", "command-server")
        assert gate.call(operator, Action(Role.OPERATOR, "Open", "A"), lambda: 42) == 42
        with pytest.raises(RuntimeError):
            gate.call(operator, Action(Role.OPERATOR, "Open", "B"), _boom)
    assert [(e.outcome, e.verb, e.target, e.who) for e in events] == [
        (REFUSED, "Open", "A", "192.168.1.77"),
        (DONE, "Open", "A", "192.168.1.10"),
        (FAILED, "Open", "B", "192.168.1.10"),
    ]
    assert events[2].reason == "hardware on fire"
    assert gate.refusals == 1 and gate.changes == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "labbridge.audit"]
    assert lines[0].startswith("refused: Open A by 192.168.1.77 as observer via command-server")
    assert len(lines) == 3  # the read was checked but not audited


def test_a_broken_sink_does_not_break_the_request():
    gate = Gate(LAB)
    gate.add_sink(lambda e: 1 / 0)
    assert gate.call(Principal("127.0.0.1"), Action(Role.ADMIN, "Lock", "A"), lambda: "ok") == "ok"


def test_udp_refusal_says_how_to_fix_it():
    gate = Gate(LAB, node="valves")
    with pytest.raises(AccessDenied) as info:
        gate.check(Principal("127.0.0.1", transport="udp"), Action(Role.ADMIN, "Lock", "A"))
    assert "UDP is read-only" in info.value.reason
    assert "security.udp_writers" in info.value.reason


def _boom() -> None:
    raise RuntimeError("hardware on fire")


def test_repeated_refusals_are_audited_once_a_minute_with_their_count():
    now = [1000.0]
    gate = Gate(LAB, node="valves", clock=lambda: now[0])
    events = []
    gate.add_sink(events.append)
    stranger = Principal("10.9.9.9", "mock")
    for _ in range(50):
        with pytest.raises(AccessDenied):
            gate.check(stranger, Action(Role.OPERATOR, "move", "rotator"))
    assert gate.refusals == 50 and gate.quieted == 49 and len(events) == 1
    # Another verb, or another peer, is a new kind of refusal: audited at once.
    with pytest.raises(AccessDenied):
        gate.check(stranger, Action(Role.OPERATOR, "stop", "rotator"))
    with pytest.raises(AccessDenied):
        gate.check(Principal("10.9.9.8", "mock"), Action(Role.OPERATOR, "move", "rotator"))
    assert len(events) == 3
    now[0] += Gate.QUIET + 1
    with pytest.raises(AccessDenied):
        gate.check(stranger, Action(Role.OPERATOR, "move", "rotator"))
    assert len(events) == 4 and events[-1].reason.endswith("(and 49 more like it before)")


def test_the_quiet_table_is_bounded():
    gate = Gate(LAB, clock=lambda: 0.0)
    for i in range(Gate.QUIET_KEYS + 500):
        gate.refuse(Principal(f"10.1.{i // 250}.{i % 250}"), Action(Role.OBSERVER, "read"), "x")
    assert len(gate._quiet) == Gate.QUIET_KEYS


def test_web_visitors_without_a_login_are_observers_at_most():
    # Loopback is admin for protocols, but a browser on this machine may be driven by any
    # page it shows: without a login it only watches.
    assert Policy.default().role_of(Principal("127.0.0.1", transport="web")) is Role.OBSERVER
    assert LAB.role_of(Principal("10.0.0.1", transport="web")) is Role.NOBODY
    assert LAB.role_of(Principal("10.0.0.1", transport="web", identity="alice")) is (
        Role.OPERATOR)


def test_security_events_are_audited():
    gate = Gate(LAB, node="web")
    events = []
    gate.add_sink(events.append)
    gate.audit(Principal("10.0.0.1", "web", "web", "alice"), "login", "session")
    assert [(e.verb, e.outcome, e.who, e.role) for e in events] == [
        ("login", DONE, "alice@10.0.0.1", "operator")]


def test_roles_are_remembered_but_never_mixed_up():
    p = Policy(addresses={Role.OPERATOR: nets("192.168.1.10/32")}, configured=True)
    for _ in range(3):
        assert p.role_of(Principal("192.168.1.10")) is Role.OPERATOR
        assert p.role_of(Principal("192.168.1.10", transport="udp")) is Role.OBSERVER
        assert p.role_of(Principal("192.168.1.11")) is Role.NOBODY
    for i in range(5000):  # the memory stays bounded
        p.role_of(Principal(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"))
    assert len(p._cache) <= 4096
