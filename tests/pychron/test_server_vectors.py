"""The RemoteCommandServer against the golden reply vectors, row by row, over real TCP."""

from __future__ import annotations

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.valves import SwitchKind, ValveBank, ValveConfig
from labbridge.links.pychron.valves import ValveCommands
from tests.conftest import load_vectors
from tests.pychron.server_helpers import ask_like_pychron, bank_from_vector, running_server

V = load_vectors("pychron.json")["replies"]


@pytest.mark.parametrize("case", V["cases"], ids=lambda c: repr(c["request"])[:40])
async def test_reply_vector(case):
    bank = bank_from_vector(V["bank"]["switches"])
    async with running_server(ValveCommands([bank])) as server:
        reply, closed = await ask_like_pychron(server.port, bytes.fromhex(case["request_hex"]))
    want = case.get("labbridge_reply_hex", case["reply_hex"])
    assert reply == bytes.fromhex(want), (reply, case)
    assert closed
    assert case.get("labbridge_connection", case["connection"]) == "closed_after_reply"


async def test_two_commands_in_one_segment_actuate_nothing():
    # Open A (closed) and Close B (open): running either command, or both, would show.
    bank = bank_from_vector(V["bank"]["switches"])
    async with running_server(ValveCommands([bank])) as server:
        reply, closed = await ask_like_pychron(server.port, b"Open A\rClose B\r")
    assert reply == b"ERROR 004 : invalid arguments: Open A\rClose B"
    assert closed
    assert bank.is_open("A") is False
    assert bank.is_open("B") is True


def _scenario_bank(scenario: str) -> ValveBank:
    sw = V["bank"]["switches"]
    if scenario.startswith("A has software interlock B"):
        cfgs = [ValveConfig("A", interlocks=("B",)), ValveConfig("B", initially_open=True),
                ValveConfig("C", initially_locked=True)]
        return ValveBank("valves", cfgs, SimValveBackend())
    if "check_master_owner on" in scenario:
        bank = bank_from_vector(sw, check_ownership=True)
        bank.set_owner("A", "10.0.0.9")
        return bank
    if "disabled" in scenario:
        cfgs = [ValveConfig(s["name"], kind=SwitchKind.VALVE, initially_open=s["state"],
                            initially_locked=s["software_lock"]) for s in sw]
        cfgs.append(ValveConfig("D", enabled=False))
        return ValveBank("valves", cfgs, SimValveBackend())
    raise AssertionError(scenario)


@pytest.mark.parametrize("case", V["scenarios"], ids=lambda c: f"{c['scenario'][:30]}-{c['request']}")
async def test_reply_scenarios(case):
    bank = _scenario_bank(case["scenario"])
    async with running_server(ValveCommands([bank])) as server:
        reply, closed = await ask_like_pychron(server.port, case["request"].encode())
    assert reply.decode() == case["reply"]
    assert closed
