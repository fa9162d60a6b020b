"""Furnace node: thermal model on a fast clock, furPi command set, watchdog, robustness."""

from __future__ import annotations

import asyncio
import json
import math
import re

import pytest

from labbridge.devices.base import Change
from labbridge.devices.furnace import (
    Furnace,
    FurnaceModel,
    FurnaceParams,
    PIDGains,
    WatchdogConfig,
)
from labbridge.devices.valves import ValveBank
from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.furnace import FurnaceCommands
from tests.access_helpers import gate_for
from tests.hardware.helpers import FakeClock, example_node, tcp_port
from tests.pychron.server_helpers import ask_like_pychron, ask_udp

CALLER = Caller("10.0.0.9", "plain")


def _hold_window(model: FurnaceModel, start: float, length: float, target: float,
                 dt: float = 1.0) -> tuple[float, float]:
    """Run from ``start`` for ``length`` simulated seconds; (min, max) temperature seen."""
    model.step(start - model.t)
    lo = hi = model.temperature
    t_end = model.t + length
    while model.t < t_end:
        model.step(dt)
        lo, hi = min(lo, model.temperature), max(hi, model.temperature)
    return lo, hi


@pytest.mark.parametrize("ramp_rate", [0.0, 20.0])
def test_reaches_600_within_the_predicted_time_and_holds(ramp_rate):
    model = FurnaceModel(ramp_rate=ramp_rate, seed=7)
    assert model.temperature == pytest.approx(22.0)
    model.set_setpoint(600.0)
    predicted = model.predicted_settle_time(600.0)
    assert math.isfinite(predicted)
    # Find when it first gets within 2 C, on a 1 s fast clock.
    first = None
    while model.t < predicted:
        model.step(1.0)
        if first is None and abs(model.temperature - 600.0) <= 2.0:
            first = model.t
    assert first is not None, f"not within 2 C by the predicted {predicted:.0f} s"
    # The prediction is not vacuous: the furnace gets there in its last half, not at once.
    assert first > 0.5 * predicted
    # From the predicted time on, it stays at 600 +- 2 C for the next 30 simulated minutes.
    lo, hi = _hold_window(model, predicted, 1800.0, 600.0)
    assert 598.0 <= lo and hi <= 602.0, (lo, hi)
    # The reading is noisy but centred: mean of 200 readings within 0.1 C of the setpoint.
    readings = []
    for _ in range(200):
        model.step(0.5)
        readings.append(model.pv)
    assert abs(sum(readings) / len(readings) - 600.0) < 0.2
    assert max(readings) != min(readings)  # noise is present
    # Holding 600 C takes about the output the losses predict.
    assert abs(model.output - model.steady_output(600.0)) < 3.0


def test_heater_lag_and_losses_are_first_order():
    params = FurnaceParams(noise=0.0, resolution=0.0)
    model = FurnaceModel(params, PIDGains(100.0, 0.0, 0.0))
    model.set_setpoint(1000.0)  # saturates the output at 100 % at once
    model.step(params.heater_lag)
    assert model.output == 100.0
    # One lag time constant: the element delivers 1 - 1/e of full power.
    assert model.power / params.max_power == pytest.approx(1 - math.exp(-1), abs=0.01)
    # Heat-up rate right after the lag is power over heat capacity (losses still small).
    t0 = model.temperature
    model.step(1.0)
    rate = model.temperature - t0
    assert rate == pytest.approx(model.power / params.heat_capacity, rel=0.05)
    # Unreachable setpoint (losses above max power) predicts "never".
    assert FurnaceModel(FurnaceParams(max_power=100.0)).predicted_settle_time(1500.0) == \
        math.inf


def test_pid_gains_parse_and_reject():
    assert PIDGains.parse("1.5,0.01,3") == PIDGains(1.5, 0.01, 3.0)
    for bad in ("1,2", "a,b,c", "1,2,-3", "1,nan,2", ""):
        with pytest.raises(ValueError):
            PIDGains.parse(bad)


def test_setpoint_above_the_limit_is_refused():
    model = FurnaceModel()
    with pytest.raises(ValueError):
        model.set_setpoint(5000.0)
    with pytest.raises(ValueError):
        model.set_setpoint(float("nan"))


def _furnace(clock: FakeClock, **kw) -> tuple[Furnace, Dispatcher]:
    furnace = Furnace("furnace", FurnaceModel(seed=3), clock=clock, **kw)
    return furnace, Dispatcher([FurnaceCommands(furnace)], gate_for("10.0.0.0/8"))


async def _ask(disp: Dispatcher, text: str) -> str:
    result = disp.dispatch(text, CALLER)
    return result if isinstance(result, str) else await result


async def test_commands_plain_and_json_on_a_fast_clock():
    clock = FakeClock()
    furnace, disp = _furnace(clock, di_channels={"h2o": True})
    assert await _ask(disp, "SetSetpoint 600") == "OK"
    assert await _ask(disp, '{"command": "GetSetpoint"}') == "600.0"
    predicted = furnace.model.predicted_settle_time(600.0)
    clock.advance(predicted)  # the next poll runs the model up to the clock
    temp = float(await _ask(disp, "GetTemperature"))
    assert abs(temp - 600.0) <= 2.0
    assert abs(float(await _ask(disp, "GetProcessValue")) - 600.0) <= 2.0
    out = float(await _ask(disp, '{"command": "GetPercentOutput"}'))
    assert 0.0 < out < 100.0
    summary = json.loads(await _ask(disp, "GetFurnaceSummary"))
    assert set(summary) == {"setpoint", "response", "output"}
    assert summary["setpoint"] == 600.0 and abs(summary["response"] - 600.0) <= 2.0
    summary = json.loads(await _ask(
        disp, '{"command": "GetFurnaceSummary", "h2o_channel": "h2o"}'))
    assert summary["h2o_state"] is True
    assert await _ask(disp, '{"command": "SetSetpoint", "setpoint": 450}') == "OK"
    assert await _ask(disp, "GetSetpoint") == "450.0"
    assert await _ask(disp, '{"command": "SetPID", "pid": "2,0.02,1"}') == "OK"
    assert await _ask(disp, "GetPID") == "2,0.02,1"
    assert await _ask(disp, "SetPID 3,0.03,0") == "OK"
    assert furnace.model.gains == PIDGains(3.0, 0.03, 0.0)
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", await _ask(disp, '{"command": "GetVersion"}'))
    beat = (await _ask(disp, "GetHeartBeat")).split(",")
    assert len(beat) == 2 and float(beat[0]) >= float(beat[1])
    assert await _ask(disp, "GetDIState h2o") == "OK"
    assert await _ask(disp, '{"command": "GetDIState", "name": "h2o"}') == "OK"
    furnace.set_di("h2o", False)
    assert await _ask(disp, "GetDIState h2o") == "False"
    assert await _ask(disp, "SetFrameRate 5") == "No Response"
    assert await _ask(disp, "DumpSample 1") == "OK"
    assert await _ask(disp, "DumpComplete") == "False"
    clock.advance(10.0)
    assert await _ask(disp, "DumpComplete") == "OK"


async def test_bad_arguments_get_error_replies():
    _furnace_dev, disp = _furnace(FakeClock())
    assert await _ask(disp, "SetSetpoint hot") == "ERROR 004 : invalid arguments: SetSetpoint hot"
    assert await _ask(disp, "SetSetpoint") == "ERROR 004 : invalid arguments: SetSetpoint"
    assert await _ask(disp, "SetSetpoint 9000") == "ERROR 106 : failed to reach setpoint 9000.0"
    assert await _ask(disp, "SetPID 1,2") == "ERROR 004 : invalid arguments: SetPID 1,2"
    assert await _ask(disp, "GetDIState nope") == "ERROR 008 : device nope not connected"
    assert await _ask(disp, "GetChannelState Z") == "ERROR 005 : Z is not a registered valve name"
    assert await _ask(disp, "Heat") == "ERROR 003 : invalid command: Heat"
    assert (await _ask(disp, '{"command": 5}')).startswith("ERROR 003")


async def test_watchdog_fires_after_the_configured_silence():
    clock = FakeClock()
    furnace, disp = _furnace(clock, watchdog=WatchdogConfig(timeout=30.0, safe_setpoint=0.0))
    changes: list[Change] = []
    furnace.subscribe(changes.append)
    # Not armed before any client has spoken.
    clock.advance(100.0)
    furnace.poll()
    assert not furnace.tripped
    assert await _ask(disp, "SetSetpoint 600") == "OK"
    clock.advance(29.9)
    furnace.poll()
    assert not furnace.tripped and furnace.setpoint == 600.0
    # A client request re-arms it.
    assert await _ask(disp, "GetTemperature")
    clock.advance(29.9)
    furnace.poll()
    assert not furnace.tripped
    clock.advance(0.2)
    furnace.poll()
    assert furnace.tripped and furnace.trips == 1
    assert furnace.setpoint == 0.0
    events = [c for c in changes if c.signal == "watchdog"]
    assert len(events) == 1
    assert events[0].value["previous_setpoint"] == 600.0
    assert events[0].value["setpoint"] == 0.0
    assert events[0].value["silence"] >= 30.0
    # Fires once per silence, not on every tick.
    clock.advance(100.0)
    furnace.poll()
    assert furnace.trips == 1
    # A client comes back: re-armed; silence again: fires again.
    assert await _ask(disp, "SetSetpoint 300") == "OK"
    clock.advance(31.0)
    furnace.poll()
    assert furnace.trips == 2 and furnace.setpoint == 0.0


async def test_watchdog_runs_in_the_devices_own_tick_loop():
    """Started device, real event loop, tiny timeout: the tick loop trips it by itself."""
    furnace = Furnace("furnace", FurnaceModel(seed=1), tick=0.01,
                      watchdog=WatchdogConfig(timeout=0.05, safe_setpoint=10.0))
    tripped = asyncio.Event()
    furnace.subscribe(lambda c: tripped.set() if c.signal == "watchdog" else None)
    await furnace.start()
    try:
        furnace.set_setpoint(500.0)
        furnace.heard()
        await asyncio.wait_for(tripped.wait(), 5.0)
        assert furnace.setpoint == 10.0
    finally:
        await furnace.stop()


async def test_furnace_node_over_tcp_and_udp(tmp_path):
    async with example_node("furnace-controller.yaml", tmp_path) as node:
        port = tcp_port(node)

        async def ask(text: str) -> str:
            reply, closed = await ask_like_pychron(port, text.encode() + b"\r")
            assert closed
            return reply.decode()

        assert await ask("SetSetpoint 600") == "OK"
        assert await ask('{"command": "GetSetpoint"}') == "600.0"
        assert set(json.loads(await ask("GetFurnaceSummary"))) == {"setpoint", "response",
                                                                     "output"}
        # The furnace's valves on the same server.
        assert await ask("Open A") == "OK"
        assert await ask("GetChannelState A") == "OK"
        assert await ask('{"command": "GetIndicatorState", "name": "A", "action": "open"}') \
            == "OK"
        assert await ask("Close A") == "OK"
        assert await ask("GetChannelState A") == "False"
        assert (await ask_udp(port, b"GetSetpoint")).decode() == "600.0"
        assert float(await ask("GetTemperature")) > -50.0


async def test_furnace_node_rejects_garbage_and_keeps_serving(tmp_path):
    async with example_node("furnace-controller.yaml", tmp_path) as node:
        port = tcp_port(node)
        for junk in (b"\x00\xff\xfe garbage\r", b"{not json}\r", b"}}}}\r", b"\r\n",
                     b"SetSetpoint 1e999\r"):
            reply, closed = await ask_like_pychron(port, junk)
            assert closed
            assert reply.startswith(b"ERROR 00"), (junk, reply)
        reply, _ = await ask_like_pychron(port, b"x" * 70000)
        assert reply.startswith(b"ERROR 003")
        reply, _ = await ask_like_pychron(port, b"GetVersion\r")
        assert reply == b"1.0"


async def test_slow_valve_on_the_furnace_node_never_blocks_another_client(tmp_path):
    async with example_node("furnace-controller.yaml", tmp_path) as node:
        port = tcp_port(node)
        bank = next(d for d in node.devices if isinstance(d, ValveBank))
        backend = bank.backend  # type: ignore[attr-defined]
        backend.block("0")  # valve A
        slow = asyncio.ensure_future(ask_like_pychron(port, b"Open A\r"))
        assert await asyncio.wait_for(backend.waiting.get(), 5.0) == "0"
        reply, _ = await ask_like_pychron(port, b"GetSetpoint\r")
        assert reply == b"22.0"
        assert not slow.done()
        backend.unblock("0")
        reply, _ = await asyncio.wait_for(slow, 5.0)
        assert reply == b"OK"


async def test_remote_furnace_client(tmp_path):
    from labbridge.links.pychron.client import ErrorReply
    from labbridge.links.pychron.clients import RemoteFurnace

    async with example_node("furnace-controller.yaml", tmp_path) as node:
        port = tcp_port(node)
        for framing in ("braced", "plain", "json"):
            async with RemoteFurnace.connect("127.0.0.1", port, framing=framing) as furnace:
                await furnace.set_setpoint(350)
                assert await furnace.setpoint() == 350.0
                summary = await furnace.summary(h2o_channel="h2o")
                assert summary["setpoint"] == 350.0 and summary["h2o_state"] is True
                await furnace.set_pid(4, 0.04, 0)
                assert await furnace.version() == "1.0"
                assert await furnace.di_state("door_closed") is True
                assert await furnace.channel_state("A") is False
                assert 0.0 <= await furnace.percent_output() <= 100.0
                assert await furnace.temperature() > -50
                with pytest.raises(ErrorReply):
                    await furnace.set_setpoint(99999)


def test_blocking_remote_furnace(tmp_path):
    from labbridge.links.pychron.clients import Blocking, RemoteFurnace

    async def main() -> None:
        async with example_node("furnace-controller.yaml", tmp_path) as node:
            port = tcp_port(node)

            def script() -> float:
                with Blocking(RemoteFurnace.connect, "127.0.0.1", port) as furnace:
                    furnace.set_setpoint(123.5)
                    return float(furnace.setpoint())

            assert await asyncio.get_running_loop().run_in_executor(None, script) == 123.5

    asyncio.run(main())


def test_bad_furnace_config_names_file_line_and_field(tmp_path):
    from labbridge.node.config import ConfigError
    from labbridge.node.node import build_node

    bad = tmp_path / "bad.yaml"
    bad.write_text("node: f\ndevices:\n  - kind: furnace\n    name: furnace\n"
                   "    watchdog: {timeout: -1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:5: devices\[0\].watchdog.timeout"):
        build_node(bad)
