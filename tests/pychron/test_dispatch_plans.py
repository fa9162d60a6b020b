"""The dispatcher keeps each request text's parse and access action (a hot-path cache): the
gate must still judge every request by who sends it, every state change must still be
audited, and a bad argument must still be refused each time."""

from __future__ import annotations

from typing import Any

from labbridge.access import Role
from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.valves import ValveCommands
from tests.access_helpers import gate_for


async def _ask(d: Dispatcher, text: str, caller: Caller) -> str:
    reply: Any = d.dispatch(text, caller)
    return reply if isinstance(reply, str) else await reply


def _dispatcher() -> Dispatcher:
    bank = ValveBank("valves", [ValveConfig("A")], SimValveBackend())
    return Dispatcher([ValveCommands([bank])], gate_for("10.0.0.0/8", role=Role.OBSERVER))


async def test_same_text_is_judged_per_caller_every_time() -> None:
    d = _dispatcher()
    admin, observer, stranger = Caller("127.0.0.1"), Caller("10.1.2.3"), Caller("192.0.2.7")
    for _ in range(3):
        assert await _ask(d, "GetValveState A", admin) == "False"
        assert await _ask(d, "GetValveState A", observer) == "False"
        assert (await _ask(d, "GetValveState A", stranger)).startswith("ERROR 013")
        assert (await _ask(d, "Lock A", observer)).startswith("ERROR 012")
    assert d.gate.refusals >= 1


async def test_state_changes_are_audited_each_time() -> None:
    d = _dispatcher()
    admin = Caller("127.0.0.1")
    before = d.gate.changes
    for _ in range(3):
        assert await _ask(d, "Lock A", admin) == "OK"
        assert await _ask(d, "Unlock A", admin) == "OK"
    assert d.gate.changes == before + 6
    assert [(e.verb, e.outcome) for e in list(d.gate.recent)[-2:]] == [("Lock", "done"), ("Unlock", "done")]


async def test_bad_and_unknown_requests_answered_each_time() -> None:
    d = _dispatcher()
    admin = Caller("127.0.0.1")
    for _ in range(3):
        assert (await _ask(d, "GetValveState Z", admin)).startswith("ERROR")
        assert (await _ask(d, "NoSuchCommand", admin)).startswith("ERROR 003")
        assert await _ask(d, '{"command": "GetValveState", "value": "A"}', admin) == "False"
