"""Flags (Read/Set/Ping with auto-clear, spec pychron.md section 7) and gauge controllers."""

from __future__ import annotations

import asyncio
import math

import pytest

from labbridge.devices.backends import BackendError
from labbridge.devices.backends.sim import SimGaugeBackend, gauge_type_for
from labbridge.devices.base import Change
from labbridge.devices.flags import Flag
from labbridge.devices.gauges import GaugeController


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_flag_set_read_owner_and_events() -> None:
    flag = Flag("AFlag")
    seen: list[Change] = []
    flag.subscribe(seen.append)
    assert flag.read() == 0 and flag.owner == ""
    assert flag.set(1, "10.0.0.9") is True
    assert flag.read() == 1 and flag.owner == "10.0.0.9"
    flag.set(True, "10.0.0.9")  # same value, same owner: no event
    flag.set(2.5)
    assert flag.read() == 2.5 and flag.owner == ""
    flag.set(0.0)
    assert flag.read() == 0 and isinstance(flag.read(), int)
    assert [(c.signal, c.value) for c in seen] == [
        ("value", 1), ("owner", "10.0.0.9"), ("value", 2.5), ("owner", ""), ("value", 0)]
    assert flag.snapshot() == {"value": 0, "owner": ""}
    with pytest.raises(ValueError):
        flag.set(math.nan)
    with pytest.raises(TypeError):
        flag.set("1")  # type: ignore[arg-type]


def test_flag_auto_clears_without_ping() -> None:
    clock = FakeClock()
    flag = Flag("AFlag", auto_clear=60.0, clock=clock, wallclock=lambda: 1.7e9)
    flag.set(1, "10.0.0.9")
    clock.t += 59.0
    assert not flag.check_expiry() and flag.read() == 1
    assert flag.ping("10.0.0.9") == 1.7e9 and flag.last_ping == 1.7e9
    clock.t += 59.0  # 118 s after the set, 59 s after the ping
    assert not flag.check_expiry() and flag.read() == 1
    clock.t += 1.0
    assert flag.check_expiry()
    assert flag.read() == 0 and flag.owner == ""
    assert not flag.check_expiry()  # already clear


def test_flag_without_auto_clear() -> None:
    clock = FakeClock()
    flag = Flag("F", auto_clear=0, clock=clock)
    flag.set(1)
    clock.t += 1e6
    assert not flag.check_expiry() and flag.read() == 1


async def test_flag_watcher_task_clears_it() -> None:
    clock = FakeClock()
    flag = Flag("AFlag", auto_clear=60.0, check_period=0.001, clock=clock)
    cleared: asyncio.Future[Change] = asyncio.get_running_loop().create_future()

    def on_change(c: Change) -> None:
        if c.signal == "value" and c.value == 0 and not cleared.done():
            cleared.set_result(c)

    flag.subscribe(on_change)
    await flag.start()
    try:
        flag.set(1, "runner")
        clock.t += 61.0
        change = await asyncio.wait_for(cleared, 5)
        assert change.device == "AFlag" and flag.read() == 0
    finally:
        await flag.stop()
    await flag.stop()  # idempotent


def test_gauge_type_guess() -> None:
    assert gauge_type_for("IG") == "ion" and gauge_type_for("ig2") == "ion"
    assert gauge_type_for("CG1") == "convectron"


async def test_gauge_pressures_are_plausible_and_emitted() -> None:
    backend = SimGaugeBackend({"IG": "ion", "CG1": "convectron", "CG2": "convectron"}, seed=4)
    ctrl = GaugeController("gauges", ["IG", "CG1", "CG2"], backend)
    seen: list[Change] = []
    ctrl.subscribe(seen.append)
    await ctrl.start()
    try:
        ig = [await ctrl.pressure("IG") for _ in range(50)]
        cg = [await ctrl.pressure("CG1") for _ in range(50)]
        assert all(5e-9 < p < 2e-8 for p in ig) and len(set(ig)) > 1
        assert all(5e-4 < p < 2e-3 for p in cg)
        assert len(seen) == 100 and seen[-1].signal == "CG1" and seen[-1].value == cg[-1]
        assert ctrl.last("CG1") == cg[-1] and ctrl.last("CG2") is None
        assert ctrl.snapshot() == {"IG": ig[-1], "CG1": cg[-1], "CG2": None}
        backend.scale("IG", 100.0)
        assert 5e-7 < await ctrl.pressure("IG") < 2e-6
        with pytest.raises(KeyError):
            await ctrl.pressure("CG9")
        with pytest.raises(KeyError):
            ctrl.last("CG9")
        assert ctrl.describe()["gauges"] == ["IG", "CG1", "CG2"]
    finally:
        await ctrl.stop()


async def test_gauge_backend_timeout_is_an_error() -> None:
    class Hung(SimGaugeBackend):
        async def read_pressure(self, gauge: str) -> float:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    ctrl = GaugeController("gauges", ["IG"], Hung({"IG": "ion"}), timeout=0.01)
    with pytest.raises(BackendError, match="IG"):
        await ctrl.pressure("IG")


async def test_gauge_polling_task() -> None:
    backend = SimGaugeBackend({"IG": "ion", "CG1": "convectron"})
    ctrl = GaugeController("gauges", ["IG", "CG1"], backend, poll_period=0.001)
    got: asyncio.Queue[str] = asyncio.Queue()
    ctrl.subscribe(lambda c: got.put_nowait(c.signal))
    await ctrl.start()
    try:
        assert {await asyncio.wait_for(got.get(), 5) for _ in range(2)} == {"IG", "CG1"}
    finally:
        await ctrl.stop()


def test_gauge_config_errors() -> None:
    with pytest.raises(ValueError):
        GaugeController("g", [], SimGaugeBackend())
    with pytest.raises(ValueError):
        GaugeController("g", ["IG", "IG"], SimGaugeBackend())
    with pytest.raises(ValueError):
        SimGaugeBackend({"X": "pirani"})
    with pytest.raises(ValueError):
        SimGaugeBackend({"IG": "ion"}).set_base("IG", 0.0)


async def test_sim_gauge_follows_a_valve() -> None:
    from labbridge.devices.backends.sim import SimValveBackend
    from labbridge.devices.valves import ValveBank, ValveConfig

    bank = ValveBank("v", [ValveConfig("A"), ValveConfig("B"),
                           ValveConfig("P", initially_open=True)], SimValveBackend())
    gauges = SimGaugeBackend({"IG": "ion"}, noise=0.0)
    unfollow = gauges.follow(bank, "A", "IG", 1000.0)
    await bank.open("B")  # another valve: no effect
    assert gauges.base("IG") == pytest.approx(1e-8)
    await bank.open("A")
    await bank.open("A")  # no change event, no second step
    assert gauges.base("IG") == pytest.approx(1e-5)
    bank.lock("A")  # lock change, state unchanged
    assert gauges.base("IG") == pytest.approx(1e-5)
    bank.unlock("A")
    await bank.close("A")
    assert gauges.base("IG") == pytest.approx(1e-8)
    unfollow()
    await bank.open("A")
    assert gauges.base("IG") == pytest.approx(1e-8)
    gauges.follow(bank, "P", "IG", 0.01)  # P starts open: closing it is the first step
    await bank.close("P")
    assert gauges.base("IG") == pytest.approx(1e-6)



class _OneStepBackend(SimGaugeBackend):
    """Answers after one turn of the event loop (a real backend always suspends)."""

    async def read_pressure(self, gauge: str) -> float:
        await asyncio.sleep(0)
        return await super().read_pressure(gauge)


async def test_a_cancelled_pressure_read_stays_cancelled() -> None:
    """A read cancelled while in progress raises CancelledError, whatever the moment.
    Python 3.11's ``asyncio.wait_for`` returned the reading instead when the cancellation
    arrived just as the backend answered, so a DashboardServer polling the gauge never
    stopped: its ``stop()`` awaited the poll task for ever (the hang of
    tests/web/test_browser.py::test_trends_load_the_recorders_history_on_page_load)."""
    ctrl = GaugeController("g", ["IG"], _OneStepBackend({"IG": "ion"}))
    await ctrl.start()
    in_progress = 0
    try:
        for turns in range(6):  # cancel after 0..5 turns of the loop: every phase of a read
            task = asyncio.create_task(ctrl.pressure("IG"))
            for _ in range(turns):
                await asyncio.sleep(0)
            if task.cancel():  # the read had not finished: it must end cancelled
                in_progress += 1
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                assert await task > 0
    finally:
        await ctrl.stop()
    assert in_progress >= 2
