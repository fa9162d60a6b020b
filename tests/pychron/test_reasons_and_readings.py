"""Issue 15 item 7: a refusal reaches labbridge's own client with its reason where the protocol
form allows (JSON requests), the real forms stay byte-exact; ``Open`` without a valve is a
missing-argument error for labbridge's clients; furnace readings are rounded to the
controller's resolution by the model (``22.65``, never ``22.650000000000002``), so every link,
the bus and the web get the rounded reading."""

from __future__ import annotations

import re

import pytest

from labbridge.devices.backends.sim import SimValveBackend
from labbridge.devices.furnace import Furnace, FurnaceModel, FurnaceParams
from labbridge.devices.valves import ValveBank, ValveConfig
from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.dispatch import Caller, Dispatcher
from labbridge.links.pychron.furnace import FurnaceCommands
from labbridge.links.pychron.remote import ActuationError, RemoteValves
from labbridge.links.pychron.valves import ValveCommands
from labbridge.protocol.pychron.braced import BracedFramer, encode_braced
from tests.hardware.helpers import FakeClock
from tests.pychron.server_helpers import ask_like_pychron, ask_udp, running_server

REFUSAL = "ERROR 015 : Valve A failed to actuate open"


def interlocked_bank() -> ValveBank:
    """A may not open while B is open; B is open."""
    return ValveBank("valves", [ValveConfig("A", interlocks=("B",)),
                                ValveConfig("B", initially_open=True)], SimValveBackend())


async def ask_braced(port: int, payload: str) -> str:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_braced(payload))
        framer = BracedFramer()
        while True:
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, "server closed without a braced reply"
            framer.receive_data(chunk)
            items = list(framer.drain())
            if items:
                assert isinstance(items[0], str)
                return items[0]
    finally:
        writer.close()


async def test_refusal_reason_only_in_the_json_form():
    async with running_server(ValveCommands([interlocked_bank()]), udp=True) as server:
        # The real forms: byte for byte what a real pyValve answers (vectors scenarios).
        assert await ask_like_pychron(server.port, b"Open A\r") == (REFUSAL.encode(), True)
        assert await ask_udp(server.udp_port, b"Open A") == REFUSAL.encode()
        assert await ask_braced(server.port, "Open A") == REFUSAL
        # JSON (no real refusal text to copy): the reason follows the real message.
        json_open = b'{"command": "Open", "value": "A"}'
        reply, _ = await ask_like_pychron(server.port, json_open)
        assert reply.decode() == f"{REFUSAL} (interlock: B is open)"
        assert await ask_braced(server.port, json_open.decode()) == \
            f"{REFUSAL} (interlock: B is open)"


async def test_open_without_a_valve():
    async with running_server(ValveCommands([interlocked_bank()])) as server:
        # Real plain reply, kept byte for byte (vectors replies.cases "Open").
        assert await ask_like_pychron(server.port, b"Open") == (
            b"ERROR 015 : Valve  failed to actuate open", True)
        # JSON: the missing-argument error, with or without an empty value.
        for request in (b'{"command": "Open"}', b'{"command": "Open", "value": ""}'):
            reply, _ = await ask_like_pychron(server.port, request)
            assert reply == b"ERROR 004 : invalid arguments: Open", request


@pytest.mark.parametrize("framing", ["braced", "json", "plain"])
async def test_remote_valves_report_the_reason(framing):
    bank = interlocked_bank()
    async with running_server(ValveCommands([bank])) as server:
        async with PychronClient("127.0.0.1", server.port, framing=framing) as client:
            valves = RemoteValves(client)
            with pytest.raises(ActuationError) as info:
                await valves.open("A")
            if framing == "plain":  # a real Pychron server gives no reason: none is invented
                assert str(info.value) == f"open A: {REFUSAL}"
            else:
                assert str(info.value) == f"open A: {REFUSAL} (interlock: B is open)"
            # Success still confirmed through the indicator, in every form.
            act = await valves.close("B")
            assert act.state is False and act.reply == "OK"
            assert (await valves.open("A")).state is True
        assert bank.is_open("A") and not bank.is_open("B")


async def test_remote_valves_refuse_an_empty_name_before_sending():
    sent: list[str] = []

    class Recording(PychronClient):
        async def _ask_once(self, request, timeout):
            sent.append(request)
            return await super()._ask_once(request, timeout)

    # Nothing listens on this client's port: reaching the network would raise Unreachable.
    client = Recording("127.0.0.1", 9, timeout=0.5)
    valves = RemoteValves(client)
    for name in ("", " A"):
        with pytest.raises(ActuationError, match="a valve name is required"):
            await valves.open(name)
    assert sent == []
    await client.close()


# -- furnace readings -----------------------------------------------------------------------
@pytest.mark.parametrize(("resolution", "pattern"), [
    (0.01, r"-?\d+(\.\d{1,2})?"), (0.1, r"-?\d+(\.\d)?"), (0.25, r"-?\d+\.(0|25|5|75)"),
    (0.5, r"-?\d+\.[05]"), (1.0, r"-?\d+\.0"), (10.0, r"-?\d+0\.0"),
    (0.001, r"-?\d+(\.\d{1,3})?")])
def test_the_model_reads_as_many_decimals_as_its_resolution(resolution, pattern):
    model = FurnaceModel(FurnaceParams(resolution=resolution, noise=0.7), seed=5)
    model.set_setpoint(600)
    seen = set()
    for _ in range(400):
        model.step(0.5)
        assert re.fullmatch(pattern, repr(model.pv)), (resolution, model.pv)
        seen.add(model.pv)
    assert len(seen) > 10  # it moved, so many values were rounded


async def test_furnace_readings_are_rounded_to_the_resolution():
    clock = FakeClock()
    furnace = Furnace("furnace", FurnaceModel(FurnaceParams(resolution=0.01), seed=3),
                      clock=clock)
    published: list[float] = []
    furnace.subscribe(lambda ch: published.append(ch.value) if ch.signal == "temperature"
                      else None)
    disp = Dispatcher([FurnaceCommands(furnace)])
    caller = Caller("127.0.0.1")

    async def ask(text: str) -> str:
        result = disp.dispatch(text, caller)
        return result if isinstance(result, str) else await result

    assert await ask("SetSetpoint 600") == "OK"
    number = re.compile(r"^-?\d+(\.\d{1,2})?$")
    for _ in range(300):
        clock.advance(0.7)
        for command in ("GetTemperature", "GetProcessValue"):
            reply = await ask(command)
            assert number.match(reply), (command, reply)
        summary = await ask('{"command": "GetFurnaceSummary"}')
        response = re.search(r'"response": ([^,}]+)', summary)
        assert response and number.match(response.group(1)), summary
        assert number.match(repr(furnace.temperature)), furnace.temperature
    assert len(published) > 50  # what the bus and the web get
    assert all(number.match(repr(v)) for v in published), published
