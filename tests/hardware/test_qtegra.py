"""Spectrometer node: Qtegra RemoteControlServer wire, peak physics, counting statistics."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import numpy as np
import pytest

from labbridge.devices.spectrometer import Peak, Spectrometer
from labbridge.links.pychron.client import ErrorReply
from labbridge.links.pychron.clients import Blocking, QtegraSpectrometer
from labbridge.links.pychron.qtegra import QtegraCommands, QtegraServer
from tests.hardware.helpers import FakeClock, example_node, tcp_port
from tests.pychron.server_helpers import ask_like_pychron, ask_udp


def _spec(clock: FakeClock, **kw) -> Spectrometer:
    kw.setdefault("seed", 11)
    return Spectrometer("argus", [Peak("Ar40", 5.0, 5.0), Peak("Ar36", 4.5, 0.017)],
                        clock=clock, magnet_dac=4.0, **kw)


def _ask(cmds: QtegraCommands, text: str) -> str:
    reply = cmds.handle(text)
    assert isinstance(reply, str)
    return reply


def _parse(reply: str) -> dict[str, float]:
    items = reply.split(",")
    return {items[i]: float(items[i + 1]) for i in range(0, len(items), 2)}


def _settle_and_scan(clock: FakeClock, spec: Spectrometer) -> None:
    """Let the magnet arrive, then let one whole integration complete after that."""
    while spec.magnet_moving:
        clock.advance(0.01)
    clock.advance(spec.next_scan_at() - clock() + 1e-9)
    clock.advance(spec.integration_time)


def test_scanning_the_magnet_shows_the_peak_at_its_configured_position():
    clock = FakeClock()
    spec = _spec(clock)
    cmds = QtegraCommands(spec)
    assert _ask(cmds, "SetIntegrationTime 0.131072") == "OK"
    dacs = np.arange(4.85, 5.05 + 1e-9, 0.0025)
    ax, h1 = [], []
    for dac in dacs:
        assert _ask(cmds, f"SetMagnetDAC {dac:.4f}") == "OK"
        assert _ask(cmds, "GetMagnetMoving") == "True"
        _settle_and_scan(clock, spec)
        assert _ask(cmds, "GetMagnetMoving") == "False"
        assert float(_ask(cmds, "GetMagnetDAC")) == pytest.approx(dac, abs=1e-4)
        data = _parse(_ask(cmds, "GetData"))
        assert list(data) == ["H2", "H1", "AX", "L1", "L2", "CDD"]
        ax.append(data["AX"])
        h1.append(data["H1"])

    def centre(values: list[float]) -> float:
        v = np.array(values)
        top = v >= v.max() / 2
        return float((dacs[top] * v[top]).sum() / v[top].sum())

    assert max(ax) == pytest.approx(5.0, rel=0.01)       # the configured intensity
    assert centre(ax) == pytest.approx(5.0, abs=0.003)    # Ar40 configured at DAC 5.0 on AX
    assert centre(h1) == pytest.approx(4.9, abs=0.003)    # H1 sits 0.1 DAC higher
    assert min(ax) < 0.01                                 # off-peak: baseline only


@pytest.mark.parametrize("seed", [3, 4])
def test_doubling_integration_time_lowers_relative_noise_by_sqrt2(seed):
    clock = FakeClock()
    spec = _spec(clock, seed=seed)
    spec.set_magnet_dac(5.0)
    _settle_and_scan(clock, spec)
    cmds = QtegraCommands(spec)

    def rel_noise(tau: float, n: int = 400) -> float:
        assert _ask(cmds, f"SetIntegrationTime {tau}") == "OK"
        values = []
        for _ in range(n):
            clock.advance(tau)
            values.append(_parse(_ask(cmds, "GetData"))["AX"])
        v = np.array(values)
        return float(v.std(ddof=1) / v.mean())

    r1, r2 = rel_noise(1.048576), rel_noise(2.097152)
    ratio = r1 / r2
    # Expected sqrt(2) = 1.414; with 400 samples each the ratio's spread is about 5 %.
    assert 1.2 < ratio < 1.65, ratio
    # And the size is the physics: Poisson counting plus Johnson noise at 5 V for 1 s.
    ions = 5.0 / 1e11 / 1.602176634e-19
    expected = math.hypot(1 / math.sqrt(ions), 2e-5 / 5.0)
    assert r1 == pytest.approx(expected, rel=0.25)


def test_new_data_only_after_each_integration_period():
    clock = FakeClock()
    spec = _spec(clock)
    cmds = QtegraCommands(spec)
    assert _ask(cmds, "SetIntegrationTime 1.0") == "OK"
    assert _ask(cmds, "GetData") == ""           # no scan has completed yet
    clock.advance(0.99)
    assert _ask(cmds, "GetData") == ""
    clock.advance(0.02)
    first = _ask(cmds, "GetData")
    assert first and spec.scans == 1
    clock.advance(0.5)
    assert _ask(cmds, "GetData") == first        # same scan until the period completes
    clock.advance(0.5)
    second = _ask(cmds, "GetData")
    assert second != first and spec.scans == 2
    clock.advance(5.0)                            # several periods: one new scan, the latest
    _ask(cmds, "GetData")
    assert spec.scans == 3


def test_commands_and_qtegra_error_forms():
    clock = FakeClock()
    spec = _spec(clock)
    cmds = QtegraCommands(spec)
    assert _ask(cmds, "Reset") == "Error: Invalid Command"
    assert _ask(cmds, "") == "Error: Invalid Command"
    assert _ask(cmds, "getdata") == "Error: Invalid Command"  # case-sensitive
    assert _ask(cmds, "SetIntegrationTime abc") == \
        "Error: could not set IntegrationTime to abc"
    assert _ask(cmds, "SetMagnetDAC 20") == "Error: could not set MagnetDAC to 20.0"
    assert _ask(cmds, "SetMagnetDAC") == "Error: Invalid Command"
    assert _ask(cmds, "GetIntegrationTime\r\n") == "1.048576"
    assert _ask(cmds, "SetDeflection AX,12.5") == "OK"
    assert _ask(cmds, "GetDeflection AX") == "12.5"
    assert _ask(cmds, "GetDeflections AX,H1") == "12.5,0"
    assert _ask(cmds, "GetDeflection XX") == "Error: Invalid Command"
    assert _ask(cmds, "SetGain H1,1.02") == "OK"
    assert _ask(cmds, "GetGain H1") == "1.02"
    assert _ask(cmds, "GetParameter Trap Current Readback") == "200"
    assert _ask(cmds, "SetParameter Trap Current Readback,250") == "OK"
    assert _ask(cmds, "GetParameter Trap Current Readback") == "250"
    assert _ask(cmds, "SetParameter No Such Thing,1") == \
        "Error: could not set No Such Thing to 1.0"
    assert _ask(cmds, "GetHighVoltage") == "4500"
    assert _ask(cmds, "GetHV") == "4.5"
    assert _ask(cmds, "BlankBeam True") == "OK"
    assert _ask(cmds, "GetParameter Y-Symmetry Set") == "-50"
    assert _ask(cmds, "BlankBeam False") == "OK"
    assert _ask(cmds, "GetParameter Y-Symmetry Set") == "0"
    assert _ask(cmds, "BlankBeam maybe") == "Error: Invalid Command"
    assert _ask(cmds, "ProtectDetector CDD,On") == "OK"
    assert spec.protected["CDD"] is True
    assert _ask(cmds, "Open Valve1") == "OK"
    assert _ask(cmds, "GetValveState Valve1") == "True"
    assert _ask(cmds, "Close Valve1") == "OK"
    assert _ask(cmds, "GetValveState Valve1") == "False"
    assert _ask(cmds, "GetValveState Nope") == "Error"
    assert _ask(cmds, "GetCupConfigurationList") == "Argon\rArgon CDD"
    assert _ask(cmds, "ActivateCupConfiguration Argon Standard") == "OK"
    assert _ask(cmds, "GetActiveCupConfiguration") == "Argon"
    assert _ask(cmds, "SetMass 39.96") == "OK"


def test_blanked_beam_reads_baseline_only():
    clock = FakeClock()
    spec = _spec(clock)
    cmds = QtegraCommands(spec)
    spec.set_magnet_dac(5.0)
    _settle_and_scan(clock, spec)
    assert _parse(_ask(cmds, "GetData"))["AX"] > 4.9
    _ask(cmds, "BlankBeam True")
    clock.advance(spec.integration_time)
    assert abs(_parse(_ask(cmds, "GetData"))["AX"]) < 1e-3


@contextlib.asynccontextmanager
async def qtegra(spec: Spectrometer) -> AsyncIterator[QtegraServer]:
    server = QtegraServer(spec, "127.0.0.1", 0, udp=True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_server_over_tcp_and_udp_with_the_real_wire():
    spec = Spectrometer("argus", seed=1, integration_time=0.01)
    async with qtegra(spec) as server:
        assert server.port and server.udp_port
        reply, closed = await ask_like_pychron(server.port, b"GetIntegrationTime\r\n")
        assert (reply, closed) == (b"0.01", True)   # no terminator, server closes
        assert await ask_udp(server.udp_port, b"GetIntegrationTime") == b"0.01"
        assert await ask_udp(server.udp_port, b"Reset") == b"Error: Invalid Command"
        # No terminator at all: the quiet gap ends the request.
        reply, _ = await ask_like_pychron(server.port, b"GetHV")
        assert reply == b"4.5"


async def test_empty_getdata_before_the_first_scan():
    spec = Spectrometer("argus", seed=1, integration_time=100.0)
    async with qtegra(spec) as server:
        assert server.port and server.udp_port
        reply, closed = await ask_like_pychron(server.port, b"GetData\r")
        assert (reply, closed) == (b"", True)
        assert await ask_udp(server.udp_port, b"GetData") == b""
        async with QtegraSpectrometer.connect("127.0.0.1", server.port, udp=False) as tcp:
            assert await tcp.data() == {}


async def test_server_rejects_garbage_and_keeps_serving():
    spec = Spectrometer("argus", seed=1)
    async with qtegra(spec) as server:
        assert server.port and server.udp_port
        for junk in (b"\x00\xff\xfe\r\n", b"{\"command\": \"GetData\"}\r\n", b"\r\n",
                     b"SetMagnetDAC nan\r\n"):
            reply, closed = await ask_like_pychron(server.port, junk)
            assert closed and reply.startswith(b"Error"), (junk, reply)
        reply, _ = await ask_like_pychron(server.port, b"G" * 100_000)
        assert reply == b"Error: Invalid Command"
        assert await ask_udp(server.udp_port, b"\xff" * 2000) == b"Error: Invalid Command"
        reply, _ = await ask_like_pychron(server.port, b"GetHV\r")
        assert reply == b"4.5"


async def test_slow_setter_never_blocks_another_client():
    spec = Spectrometer("argus", seed=1)
    gate = spec.block_hv()
    async with qtegra(spec) as server:
        assert server.port and server.udp_port and spec.hv_waiting is not None
        slow = asyncio.ensure_future(ask_like_pychron(server.port, b"SetHighVoltage 4000\r"))
        assert await asyncio.wait_for(spec.hv_waiting.get(), 5) == 4000.0
        reply, _ = await ask_like_pychron(server.port, b"GetHighVoltage\r")
        assert reply == b"4500"
        assert await ask_udp(server.udp_port, b"GetHV") == b"4.5"
        assert not slow.done()
        gate.set()
        assert (await asyncio.wait_for(slow, 5))[0] == b"OK"
        assert spec.high_voltage == 4000.0


async def test_qtegra_client_udp_and_tcp(tmp_path):
    async with example_node("spectrometer.yaml", tmp_path) as node:
        port = tcp_port(node)
        udp_port = tcp_port(node, protocol="udp")
        spec = QtegraSpectrometer.connect("127.0.0.1", udp_port, udp=True)
        try:
            assert await spec.magnet_dac() == 5.0
            await spec.set_integration_time(0.065536)
            assert await spec.integration_time() == 0.065536
            data: dict[str, float] = {}
            while not data:  # the first scan completes one integration period later
                data = await spec.data()
                await asyncio.sleep(0.02)
            assert data["AX"] > 4.0
            assert await spec.parameter("Trap Current Readback") == "200"
            with pytest.raises(ErrorReply):
                await spec.set_magnet_dac(99)
        finally:
            await spec.close()
        async with QtegraSpectrometer.connect("127.0.0.1", port, udp=False) as tcp:
            await tcp.open("Valve1")
            assert await tcp.valve_state("Valve1") is True
            assert await tcp.high_voltage() == 4500.0


def test_blocking_qtegra_client(tmp_path):
    async def main() -> None:
        async with example_node("spectrometer.yaml", tmp_path) as node:
            port = tcp_port(node, protocol="udp")
            loop = asyncio.get_running_loop()

            def script() -> tuple[float, bool]:
                with Blocking(QtegraSpectrometer.connect, "127.0.0.1", port) as spec:
                    spec.set_magnet_dac(4.5)
                    return spec.magnet_dac(), spec.magnet_moving()

            dac, _moving = await loop.run_in_executor(None, script)
            assert 4.5 <= dac <= 5.0

    asyncio.run(main())
