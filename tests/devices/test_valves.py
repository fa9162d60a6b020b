"""ValveBank semantics against tests/vectors/pychron.json (spec pychron.md sections 5, 6)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.base import Change
from labbridge.devices.valves import (
    REFUSED_SIGNAL,
    ActuationResult,
    Outcome,
    SwitchKind,
    ValveBank,
    ValveConfig,
    parse_names,
)
from tests.conftest import load_vectors

VEC = load_vectors("pychron.json")
KINDS = {"valve": SwitchKind.VALVE, "switch": SwitchKind.SWITCH, "manual": SwitchKind.MANUAL}


def configs(switches: list[dict[str, Any]]) -> list[ValveConfig]:
    return [ValveConfig(name=s["name"], kind=KINDS[s["kind"]], initially_open=s["state"],
                        initially_locked=bool(s.get("software_lock")))
            for s in switches]


def vector_bank(**kw: Any) -> ValveBank:
    """The bank of ``replies.bank``: A closed, B open, C closed and locked."""
    backend = kw.pop("backend", None) or SimValveBackend()
    return ValveBank("valves", configs(VEC["replies"]["bank"]["switches"]), backend, **kw)


def recorder(bank: ValveBank) -> list[Change]:
    seen: list[Change] = []
    bank.subscribe(seen.append)
    return seen


# -- the vector rows, one bank per row ------------------------------------------------------
_REPLY_TO_OUTCOME = {"OK": Outcome.ACTUATED, "ok": Outcome.LOCKED}


def _valve_rows() -> list[tuple[str, str]]:
    rows = []
    for case in VEC["replies"]["cases"]:
        req = case["request"]
        if req.startswith("{") or req != req.lstrip():
            continue  # JSON and whitespace forms are the protocol layer's business
        reply = case.get("labbridge_reply", case["reply"])
        cmd = req.rstrip("\r\n").partition(" ")[0]
        if cmd in ("Open", "Close", "GetValveState", "GetIndicatorState", "GetValveLockState",
                   "GetStateChecksum", "GetValveStates", "GetValveLockStates"):
            rows.append((req, reply))
    return rows


VALVE_ROWS = _valve_rows()


def test_vector_rows_cover_the_vocabulary() -> None:
    cmds = {r.partition(" ")[0] for r, _ in VALVE_ROWS}
    assert {"Open", "Close", "GetValveState", "GetIndicatorState", "GetValveLockState",
            "GetStateChecksum", "GetValveStates", "GetValveLockStates"} <= cmds
    assert len(VALVE_ROWS) >= 20


@pytest.mark.parametrize(("request_", "reply"), VALVE_ROWS, ids=[r for r, _ in VALVE_ROWS])
async def test_vector_row(request_: str, reply: str) -> None:
    """Each ``replies.cases`` row, expressed in the bank's API (every row from a fresh bank)."""
    bank = vector_bank()
    await bank.start()
    try:
        # The real server strips terminators only at the ends (two commands in one segment
        # stay one argument; a doubled space makes the name " A").
        cmd, _, arg = request_.rstrip("\r\n").partition(" ")
        if cmd in ("Open", "Close"):
            res = await (bank.open(arg) if cmd == "Open" else bank.close(arg))
            assert res.name == arg and res.action == cmd.lower()
            if reply.startswith("ERROR 004"):
                assert res.outcome is Outcome.UNKNOWN
            elif reply.startswith("ERROR 015"):
                assert res.outcome is Outcome.REFUSED and res.reason
            else:
                assert res.outcome is _REPLY_TO_OUTCOME[reply]
        elif cmd in ("GetValveState", "GetIndicatorState"):
            if reply.startswith("ERROR 005"):
                with pytest.raises(KeyError):
                    bank.is_open(arg)
                with pytest.raises(KeyError):
                    await bank.indicator_state(arg)
            else:
                expected = reply == "OK"
                assert bank.is_open(arg) is expected
                assert await bank.indicator_state(arg) is expected
        elif cmd == "GetValveLockState":
            if reply == "No Response":
                with pytest.raises(KeyError):
                    bank.is_locked(arg)
            else:
                assert bank.is_locked(arg) is (reply == "OK")
        elif cmd == "GetStateChecksum":
            # A single comma-less argument is iterated per character by the real server.
            keys = arg.split(",") if "," in arg else list(arg)
            text = "".join(bank.state_str(k) for k in keys if k in bank.names)
            assert str(zlib.crc32(text.encode())) == reply
        elif cmd in ("GetValveStates", "GetValveLockStates"):
            flag = bank.is_open if cmd == "GetValveStates" else bank.is_locked
            body = ",".join(f"{n}{int(flag(n))}" for n in bank.names)
            assert reply.startswith(body) and len(reply) == len(body) + 4
        else:  # pragma: no cover - guarded by _valve_rows
            raise AssertionError(cmd)
    finally:
        await bank.stop()


def test_bank_table_matches_vector_description() -> None:
    bank = vector_bank()
    assert bank.names == ["A", "B", "C"]
    assert bank.states() == {"A": False, "B": True, "C": False}
    assert bank.locks() == {"A": False, "B": False, "C": True}
    assert bank.owners() == {"A": "", "B": "", "C": ""}


# -- scenarios ------------------------------------------------------------------------------
def _scenarios(word: str) -> list[dict[str, Any]]:
    return [s for s in VEC["replies"]["scenarios"] if word in s["scenario"]]


async def test_scenario_interlock() -> None:
    (sc,) = _scenarios("interlock")
    assert sc["reply"].startswith("ERROR 015")
    sw = VEC["replies"]["bank"]["switches"]
    cfgs = configs(sw)
    cfgs[0].interlocks = ("B",)
    backend = SimValveBackend()
    bank = ValveBank("valves", cfgs, backend)
    seen = recorder(bank)
    res = await bank.open("A", requester="10.0.0.7")
    assert res == ActuationResult(Outcome.REFUSED, "A", "open", "interlock: B is open")
    assert backend.calls == [] and not bank.is_open("A")
    # The refusal is announced (a dashboard shows it as an alarm event).
    assert [(c.signal, c.value) for c in seen] == [
        (REFUSED_SIGNAL, {"valve": "A", "action": "open", "reason": "interlock: B is open",
                          "requester": "10.0.0.7"})]
    with pytest.raises(ValueError, match="reserved"):
        ValveBank("v", [ValveConfig(REFUSED_SIGNAL)], SimValveBackend())
    # Closing is never blocked by an interlock; with B closed, A may open.
    assert (await bank.close("B")).outcome is Outcome.ACTUATED
    assert (await bank.open("A")).outcome is Outcome.ACTUATED
    assert bank.is_open("A")


async def test_positive_interlock() -> None:
    cfgs = [ValveConfig("A", positive_interlocks=("B", "C")), ValveConfig("B"),
            ValveConfig("C", initially_open=True)]
    bank = ValveBank("valves", cfgs, SimValveBackend())
    res = await bank.open("A")
    assert res.outcome is Outcome.REFUSED and res.reason == "positive interlock: B is closed"
    await bank.open("B")
    assert (await bank.open("A")).outcome is Outcome.ACTUATED


async def test_scenario_ownership() -> None:
    rows = {s["request"]: s["reply"] for s in _scenarios("check_master_owner on")}
    bank = vector_bank(check_ownership=True)
    bank.set_owner("A", "10.0.0.9")
    res = await bank.open("A", requester="129.128.12.141")
    assert rows["Open A"].startswith("ERROR 015")
    assert res.outcome is Outcome.REFUSED and res.reason == "owned by 10.0.0.9"
    res = await bank.open("A")  # no requester: refused too
    assert res.outcome is Outcome.REFUSED
    assert rows["Open B"] == "OK"
    assert (await bank.open("B", requester="129.128.12.141")).outcome is Outcome.ACTUATED
    assert bank.owners() == {"A": "10.0.0.9", "B": "", "C": ""}
    # The owner itself may actuate (labbridge passes the peer IP as a string, spec 5).
    assert (await bank.open("A", requester="10.0.0.9")).outcome is Outcome.ACTUATED


async def test_ownership_ignored_when_check_off() -> None:
    bank = vector_bank()
    bank.set_owner("A", "10.0.0.9")
    assert (await bank.open("A", requester="1.2.3.4")).outcome is Outcome.ACTUATED


async def test_scenario_disabled_valve() -> None:
    (sc,) = _scenarios("disabled")
    assert sc["reply"] == "ERROR 004 : invalid arguments: Open D"
    cfgs = [*configs(VEC["replies"]["bank"]["switches"]), ValveConfig("D", enabled=False)]
    backend = SimValveBackend()
    bank = ValveBank("valves", cfgs, backend)
    assert not bank.has("D") and bank.has("A") and not bank.has("Z")
    assert (await bank.open("D")).outcome is Outcome.UNKNOWN
    assert (await bank.close("D")).outcome is Outcome.UNKNOWN
    assert backend.calls == []
    assert "D" in bank.names  # still listed for the words; just not actuable


async def test_empty_name_is_refused_like_the_real_server() -> None:
    res = await vector_bank().open("")
    assert res.outcome is Outcome.REFUSED and res.name == ""


# -- checksum and words vectors -------------------------------------------------------------
@pytest.mark.parametrize("case", VEC["state_checksum"]["cases"],
                         ids=[c["name"] for c in VEC["state_checksum"]["cases"]])
def test_state_checksum_inputs(case: dict[str, Any]) -> None:
    bank = ValveBank("valves", configs(case["switches"]), SimValveBackend())
    text = "".join(bank.state_str(k) for k in case["keys"] if k in bank.names)
    assert text == case["concatenated"]
    assert zlib.crc32(text.encode()) == case["crc32"]


def test_state_str_forms() -> None:
    bank = ValveBank("v", [ValveConfig("A", initially_open=True),
                           ValveConfig("M", kind=SwitchKind.MANUAL, initially_locked=True),
                           ValveConfig("S", kind=SwitchKind.SWITCH, initially_locked=True)],
                     SimValveBackend())
    assert bank.state_str("A") == "VALVE-ATrueFalse"
    assert bank.state_str("M") == "MANUAL_SWITCH-MFalse"
    assert bank.state_str("S") == "SWITCH-SFalseTrue"
    with pytest.raises(KeyError):
        bank.state_str("Z")


def _word_bank(desc: str) -> ValveBank:
    if desc == "sample_bank":
        return vector_bank()
    if desc.startswith("26 valves"):
        cfgs = [ValveConfig(chr(65 + i), initially_open=i % 2 == 0, initially_locked=i % 5 == 0)
                for i in range(26)]
        return ValveBank("v", cfgs, SimValveBackend())
    assert desc.startswith("multi-letter")
    return ValveBank("v", [ValveConfig("Roughing"), ValveConfig("Turbo", initially_open=True),
                           ValveConfig("Ion", initially_open=True, initially_locked=True)],
                     SimValveBackend())


@pytest.mark.parametrize("case", VEC["words"]["state_and_lock_words"],
                         ids=lambda c: f"{c['command']}-{c['bank'][:12]}")
def test_word_bodies_from_bank(case: dict[str, Any]) -> None:
    bank = _word_bank(case["bank"])
    flag = bank.is_open if case["command"] == "GetValveStates" else bank.is_locked
    assert ",".join(f"{n}{int(flag(n))}" for n in bank.names) == case["body"]


# -- actuation details ----------------------------------------------------------------------
async def test_actuation_in_same_state_still_drives_the_output() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    seen = recorder(bank)
    assert (await bank.open("B")).outcome is Outcome.ACTUATED
    assert (await bank.close("A")).outcome is Outcome.ACTUATED
    assert backend.calls == [("B", True), ("A", False)]
    assert seen == []  # nothing changed: no event


async def test_locked_valve_is_never_actuated() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    assert (await bank.open("C")).outcome is Outcome.LOCKED
    assert (await bank.close("C")).outcome is Outcome.LOCKED
    assert backend.calls == [] and not bank.is_open("C")
    bank.unlock("C")
    assert (await bank.open("C")).outcome is Outcome.ACTUATED
    bank.lock("C")
    assert (await bank.close("C")).outcome is Outcome.LOCKED and bank.is_open("C")


async def test_one_event_per_change() -> None:
    bank = vector_bank()
    seen = recorder(bank)
    await bank.open("A")
    bank.lock("A")
    bank.lock("A")  # no change, no event
    bank.set_owner("A", "10.0.0.9")
    bank.set_owner("A", "10.0.0.9")
    bank.unlock("A")
    await bank.close("A")
    assert [(c.device, c.signal, c.value) for c in seen] == [
        ("valves", "A", {"state": 1, "locked": 0, "owner": ""}),
        ("valves", "A", {"state": 1, "locked": 1, "owner": ""}),
        ("valves", "A", {"state": 1, "locked": 1, "owner": "10.0.0.9"}),
        ("valves", "A", {"state": 1, "locked": 0, "owner": "10.0.0.9"}),
        ("valves", "A", {"state": 0, "locked": 0, "owner": "10.0.0.9"}),
    ]
    assert bank.snapshot()["A"] == {"state": 0, "locked": 0, "owner": "10.0.0.9"}
    assert bank.snapshot()["C"] == {"state": 0, "locked": 1, "owner": ""}


async def test_inverted_logic_applied_in_the_bank() -> None:
    backend = SimValveBackend()
    bank = ValveBank("v", [ValveConfig("A", address="7", inverted_logic=True)], backend)
    assert (await bank.open("A")).outcome is Outcome.ACTUATED
    assert backend.outputs == {"7": False} and bank.is_open("A")
    backend.force("7", True)  # hardware now says closed
    assert await bank.indicator_state("A") is False
    assert not bank.is_open("A")


async def test_manual_switch_has_no_actuator() -> None:
    backend = SimValveBackend()
    bank = ValveBank("v", [ValveConfig("M", kind=SwitchKind.MANUAL)], backend)
    assert (await bank.open("M")).outcome is Outcome.ACTUATED
    assert bank.is_open("M") and backend.calls == []


async def test_settling_time_then_read_back() -> None:
    log: list[tuple[str, Any]] = []

    class Traced(SimValveBackend):
        async def set_output(self, address: str, level: bool) -> None:
            log.append(("set", address))
            await super().set_output(address, level)

        async def read_output(self, address: str) -> bool | None:
            log.append(("read", address))
            return await super().read_output(address)

    async def fake_sleep(t: float) -> None:
        log.append(("sleep", t))

    bank = ValveBank("v", [ValveConfig("A", settling_time=0.75), ValveConfig("B")], Traced(),
                     sleep=fake_sleep)
    assert (await bank.open("A")).outcome is Outcome.ACTUATED
    assert log == [("set", "A"), ("sleep", 0.75), ("read", "A")]
    log.clear()
    await bank.open("B")  # no settling time: no sleep at all
    assert log == [("set", "B"), ("read", "B")]


async def test_read_back_disagreement_is_refused_and_memory_follows() -> None:
    backend = SimValveBackend()
    bank = ValveBank("v", [ValveConfig("A"), ValveConfig("B", initially_open=True)], backend)
    seen = recorder(bank)
    backend.stick("A", False)
    res = await bank.open("A")
    assert res.outcome is Outcome.REFUSED
    assert res.reason == "read-back disagrees: A is closed"
    assert not bank.is_open("A")
    # no valve change; only the refusal event
    assert [(c.signal, c.value) for c in seen] == [
        (REFUSED_SIGNAL, {"valve": "A", "action": "open", "requester": "",
                          "reason": "read-back disagrees: A is closed"})]
    seen.clear()
    backend.stick("B", False)  # B is open in memory, but the hardware drops it
    res = await bank.open("B")
    assert res.outcome is Outcome.REFUSED and not bank.is_open("B")
    assert [c.value["state"] for c in seen if c.signal == "B"] == [0]


async def test_backend_without_read_back_trusts_the_command() -> None:
    backend = SimValveBackend(readback=False)
    bank = ValveBank("v", [ValveConfig("A")], backend)
    backend.stick("A", False)
    assert (await bank.open("A")).outcome is Outcome.ACTUATED and bank.is_open("A")
    assert await bank.indicator_state("A") is True


async def test_hardware_fault_is_refused_with_reason() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    backend.fail_next("A", "relay board on fire")
    res = await bank.open("A")
    assert res.outcome is Outcome.REFUSED and res.reason == "hardware: relay board on fire"
    assert not bank.is_open("A")
    assert (await bank.open("A")).outcome is Outcome.ACTUATED  # fault was one-shot


async def test_read_back_fault_is_refused() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    backend.fail_next_read("A", "no echo")
    res = await bank.open("A")
    assert res.outcome is Outcome.REFUSED and "no echo" in res.reason


async def test_hanging_backend_times_out_and_is_refused() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend, timeout=0.05)
    gate = backend.block("A")  # never released while the bank waits
    res = await bank.open("A")
    assert res.outcome is Outcome.REFUSED and "timeout" in res.reason
    assert not bank.is_open("A")
    gate.set()
    backend.unblock("A")
    assert (await bank.open("A")).outcome is Outcome.ACTUATED


async def test_indicator_state_reads_hardware_when_query_state() -> None:
    backend = SimValveBackend()
    bank = ValveBank("v", [ValveConfig("A"), ValveConfig("Q", query_state=False)], backend)
    seen = recorder(bank)
    backend.force("A", True)
    backend.force("Q", True)
    assert await bank.indicator_state("A") is True and bank.is_open("A")
    assert await bank.indicator_state("Q") is False  # memory, hardware not asked
    assert [c.signal for c in seen] == ["A"]
    backend.fail_next_read("A")
    assert await bank.indicator_state("A") is True  # unreadable: last known state
    with pytest.raises(KeyError):
        await bank.indicator_state("Z")


# -- concurrency ----------------------------------------------------------------------------
async def _wait(aw: Any) -> Any:
    return await asyncio.wait_for(aw, 5)


async def test_two_actuations_of_one_valve_serialise() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    backend.block("A")
    t1 = asyncio.create_task(bank.open("A"))
    assert await _wait(backend.waiting.get()) == "A"
    t2 = asyncio.create_task(bank.close("A"))
    for _ in range(10):  # give t2 every chance to (wrongly) enter the backend
        await asyncio.sleep(0)
    assert backend.waiting.empty() and backend.max_in_flight == 1
    backend.unblock("A")
    r1, r2 = await _wait(asyncio.gather(t1, t2))
    assert (r1.outcome, r2.outcome) == (Outcome.ACTUATED, Outcome.ACTUATED)
    assert backend.calls == [("A", True), ("A", False)] and not bank.is_open("A")


async def test_two_valves_actuate_in_parallel() -> None:
    backend = SimValveBackend()
    bank = vector_bank(backend=backend)
    backend.block("A")
    backend.block("B")
    tasks = [asyncio.create_task(bank.open("A")), asyncio.create_task(bank.close("B"))]
    got = {await _wait(backend.waiting.get()), await _wait(backend.waiting.get())}
    assert got == {"A", "B"} and backend.max_in_flight == 2
    backend.unblock("A")
    backend.unblock("B")
    results = await _wait(asyncio.gather(*tasks))
    assert [r.outcome for r in results] == [Outcome.ACTUATED, Outcome.ACTUATED]


async def test_interlocked_valves_share_one_lock() -> None:
    """Opening A (interlock B) and opening B at once must not both pass the check."""
    backend = SimValveBackend()
    cfgs = [ValveConfig("A", interlocks=("B",)), ValveConfig("B", interlocks=("A",)),
            ValveConfig("C")]
    bank = ValveBank("v", cfgs, backend)
    backend.block("A")
    ta = asyncio.create_task(bank.open("A"))
    await _wait(backend.waiting.get())
    tb = asyncio.create_task(bank.open("B"))
    tc = asyncio.create_task(bank.open("C"))
    assert (await _wait(tc)).outcome is Outcome.ACTUATED  # unrelated valve is not held up
    assert not tb.done() and backend.waiting.empty()
    backend.unblock("A")
    ra, rb = await _wait(asyncio.gather(ta, tb))
    assert ra.outcome is Outcome.ACTUATED
    assert rb.outcome is Outcome.REFUSED and rb.reason == "interlock: A is open"


# -- persistence ----------------------------------------------------------------------------
async def test_states_and_locks_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "valves.json"
    bank = vector_bank(state_file=path)
    await bank.start()
    await bank.open("A")
    bank.lock("B")
    bank.unlock("C")
    bank.set_owner("A", "10.0.0.9")
    await bank.wait_saved()
    saved = json.loads(path.read_text())
    assert saved["valves"]["A"] == {"state": True, "locked": False}
    await bank.stop()
    assert os.listdir(tmp_path) == ["valves.json"]  # no temp files left

    # A fresh node: all-default config, a simulator that does not know its outputs.
    cfgs = [ValveConfig(n) for n in ("A", "B", "C")]
    again = ValveBank("valves", cfgs, SimValveBackend(), state_file=path)
    await again.start()
    try:
        assert again.states() == {"A": True, "B": True, "C": False}
        assert again.locks() == {"A": False, "B": True, "C": False}
        assert again.owners() == {"A": "", "B": "", "C": ""}  # owners are not persisted
    finally:
        await again.stop()


async def test_hardware_read_back_wins_over_file_for_state(tmp_path: Path) -> None:
    path = tmp_path / "valves.json"
    path.write_text(json.dumps({"version": 1, "valves": {
        "A": {"state": True, "locked": True}, "B": {"state": False, "locked": False}}}))
    backend = SimValveBackend(initial={"A": False, "B": True})
    bank = ValveBank("valves", [ValveConfig("A"), ValveConfig("B"), ValveConfig("C")], backend,
                     state_file=path)
    await bank.start()
    try:
        assert bank.states() == {"A": False, "B": True, "C": False}
        assert bank.locks() == {"A": True, "B": False, "C": False}
    finally:
        await bank.stop()
    assert json.loads(path.read_text())["valves"]["B"] == {"state": True, "locked": False}


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]",
                                     b'{"valves": 3}', b'{"valves": {"A": 1, "Q": {}}}', b""])
async def test_corrupt_state_file_starts_from_defaults(tmp_path: Path, content: bytes,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "valves.json"
    path.write_bytes(content)
    bank = vector_bank(state_file=path)
    with caplog.at_level(logging.WARNING):
        await bank.start()
    try:
        assert bank.states() == {"A": False, "B": True, "C": False}
        assert bank.locks() == {"A": False, "B": False, "C": True}
        assert any(r.levelno == logging.WARNING for r in caplog.records)
        await bank.open("A")
    finally:
        await bank.stop()
    assert json.loads(path.read_text())["valves"]["A"]["state"] is True  # file repaired


async def test_stop_flushes_every_change(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "valves.json"
    bank = vector_bank(state_file=path)
    await bank.start()
    for _ in range(20):  # a burst of changes coalesces; the last one must land
        bank.lock("A")
        bank.unlock("A")
    bank.lock("A")
    await bank.stop()
    assert json.loads(path.read_text())["valves"]["A"]["locked"] is True


# -- configuration errors and description ---------------------------------------------------
def test_config_errors() -> None:
    with pytest.raises(ValueError, match="unknown valve 'Q'"):
        ValveBank("v", [ValveConfig("A", interlocks=("Q",))], SimValveBackend())
    with pytest.raises(ValueError, match="duplicate"):
        ValveBank("v", [ValveConfig("A"), ValveConfig("A")], SimValveBackend())
    with pytest.raises(ValueError, match="itself"):
        ValveBank("v", [ValveConfig("A", interlocks=("A",))], SimValveBackend())
    with pytest.raises(ValueError, match="settling_time"):
        ValveBank("v", [ValveConfig("A", settling_time=-1)], SimValveBackend())


def test_describe_lists_valves_with_layout() -> None:
    bank = ValveBank("v", [ValveConfig("A", description="inlet", layout={"x": 1.0, "y": 2.0}),
                           ValveConfig("M", kind=SwitchKind.MANUAL, address="9")],
                     SimValveBackend())
    d = bank.describe()
    assert d["kind"] == "valve_bank" and d["name"] == "v" and d["backend"]["kind"] == "sim"
    assert d["valves"][0]["layout"] == {"x": 1.0, "y": 2.0}
    assert d["valves"][0]["description"] == "inlet"
    assert d["valves"][1]["kind"] == "MANUAL_SWITCH" and "layout" not in d["valves"][1]
    assert d["valves"][1]["address"] == "9"


def test_parse_names() -> None:
    assert parse_names("B, C") == ("B", "C")
    assert parse_names("B") == ("B",)
    assert parse_names(["B", "C"]) == ("B", "C")
    assert parse_names("") == ()


# -- a blocking driver runs off the loop ----------------------------------------------------
async def test_blocking_driver_does_not_block_the_loop() -> None:
    import threading

    from labbridge.devices.backends import BlockingValveBackend

    release = threading.Event()
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()

    class SlowBoard(BlockingValveBackend):
        def __init__(self) -> None:
            super().__init__()
            self.levels: dict[str, bool] = {}

        def set_output_blocking(self, address: str, level: bool) -> None:
            loop.call_soon_threadsafe(entered.set)
            if not release.wait(10):  # a driver stuck in a serial read
                raise AssertionError("never released")
            self.levels[address] = level

        def read_output_blocking(self, address: str) -> bool | None:
            return self.levels.get(address)

    board = SlowBoard()
    bank = ValveBank("v", [ValveConfig("A")], board, timeout=20)
    task = asyncio.create_task(bank.open("A"))
    await asyncio.wait_for(entered.wait(), 5)
    # The loop is free while the driver blocks: other work proceeds.
    flag_done = loop.create_future()
    loop.call_soon(flag_done.set_result, "loop alive")
    assert await asyncio.wait_for(flag_done, 5) == "loop alive"
    assert not task.done()
    release.set()
    assert (await asyncio.wait_for(task, 5)).outcome is Outcome.ACTUATED
    assert board.levels == {"A": True}
    await board.stop()


async def test_a_cancelled_caller_does_not_split_an_actuation(tmp_path: Path) -> None:
    """The caller of open() goes away while the hardware moves (its client disconnected):
    the actuation still ends, memory and state file agree with the hardware, and stop()
    waits for it."""
    backend = SimValveBackend(readback=False)  # a relay board: no read-back to resync from
    state = tmp_path / "valves.json"
    bank = ValveBank("valves", [ValveConfig(name="A", address="0")], backend, state_file=state)
    await bank.start()
    gate = backend.block("0")
    caller = asyncio.ensure_future(bank.open("A", "10.0.0.9"))
    assert await asyncio.wait_for(backend.waiting.get(), 5) == "0"  # inside the hardware
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()  # the relay finishes switching after the caller has gone
    await bank.stop()  # waits for the actuation, then flushes
    assert backend.outputs["0"] is True
    assert bank.is_open("A")
    assert json.loads(state.read_text())["valves"]["A"]["state"] in (1, True)
