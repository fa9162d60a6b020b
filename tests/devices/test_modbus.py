"""ModbusCoilBackend against pymodbus's own async TCP server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pymodbus  # noqa: F401  (the dev extra: missing means failing, not skipping)
import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from labbridge.devices.backends import BackendError
from labbridge.devices.backends.modbus import ModbusCoilBackend, coil_address
from labbridge.devices.valves import Outcome, ValveBank, ValveConfig

UNIT = 3


def _device() -> SimDevice:
    """One Modbus device (id UNIT) with 32 coils; the other tables are token blocks."""
    def bits() -> list[SimData]:
        return [SimData(0, count=32, values=False, datatype=DataType.BITS)]

    def regs() -> list[SimData]:
        return [SimData(0, count=2, datatype=DataType.REGISTERS)]

    return SimDevice(id=UNIT, simdata=(bits(), bits(), regs(), regs()))


class Server:
    """A pymodbus server that can be stopped and brought back on the same port."""

    def __init__(self) -> None:
        self.device = _device()
        self.srv: ModbusTcpServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.srv = ModbusTcpServer(self.device, address=("127.0.0.1", self.port))
        await self.srv.serve_forever(background=True)
        # With port 0 the OS picks the port: read it from the listening socket.
        self.port = self.srv.transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.srv is not None:
            await self.srv.shutdown()
            self.srv = None

    async def coils(self, count: int = 8) -> list[bool]:
        assert self.srv is not None
        values: Any = await self.srv.context.async_getValues(UNIT, 1, 0, count)
        return [bool(v) for v in values]


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def test_coil_address() -> None:
    assert coil_address("5") == 5 and coil_address(" 0x10 ") == 16
    for bad in ("x", "-1", "65536", ""):
        with pytest.raises(ValueError):
            coil_address(bad)


async def test_open_sets_the_coil_and_reads_back(server: Server) -> None:
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT, timeout=1.0)
    bank = ValveBank("valves", [ValveConfig("A", address="2"),
                                ValveConfig("B", address="5", inverted_logic=True)], backend)
    await bank.start()
    try:
        assert backend.connected
        assert (await bank.open("A")).outcome is Outcome.ACTUATED
        assert (await server.coils())[2] is True
        assert await backend.read_output("2") is True
        assert (await bank.open("B")).outcome is Outcome.ACTUATED
        assert (await server.coils())[5] is False  # inverted: open = coil off
        assert (await bank.close("B")).outcome is Outcome.ACTUATED
        assert (await server.coils())[5] is True
        assert (await bank.close("A")).outcome is Outcome.ACTUATED
        assert await server.coils() == [False] * 5 + [True] + [False] * 2
        assert await bank.indicator_state("A") is False
    finally:
        await bank.stop()


async def test_hardware_state_wins_at_start(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "valves.json"
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT)
    await backend.start()
    await backend.set_output("1", True)  # coil 1 on: valve B open on the hardware
    await backend.stop()
    path.write_text('{"valves": {"A": {"state": true, "locked": true}}}')
    bank = ValveBank("valves", [ValveConfig("A", address="0"), ValveConfig("B", address="1")],
                     ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT), state_file=path)
    await bank.start()
    try:
        assert bank.states() == {"A": False, "B": True}  # read-back beats the file
        assert bank.locks() == {"A": True, "B": False}  # the file keeps the locks
    finally:
        await bank.stop()


async def test_server_down_is_refused_then_recovers(server: Server) -> None:
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT, timeout=0.5)
    bank = ValveBank("valves", [ValveConfig("A", address="3")], backend, timeout=5.0)
    await bank.start()
    try:
        assert (await bank.open("A")).outcome is Outcome.ACTUATED
        await server.stop()
        res = await bank.close("A")
        assert res.outcome is Outcome.REFUSED
        assert f"127.0.0.1:{server.port} unit {UNIT}" in res.reason, res.reason
        assert bank.is_open("A")  # unknown outcome: memory unchanged
        # The next attempt fails fast and clearly too. Whether the client has noticed the
        # closed connection yet (then: "cannot connect") or not ("... failed: no response")
        # depends on scheduling; either way it names the device and is refused.
        res = await bank.close("A")
        assert res.outcome is Outcome.REFUSED
        assert f"127.0.0.1:{server.port}" in res.reason
        assert "cannot connect" in res.reason or "failed" in res.reason, res.reason
        await server.start()  # same port again
        assert (await bank.close("A")).outcome is Outcome.ACTUATED
        assert not bank.is_open("A") and (await server.coils())[3] is False
    finally:
        await bank.stop()


async def test_unreachable_at_start_does_not_stop_the_node() -> None:
    with socket.socket() as s:  # a port nobody listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        backend = ModbusCoilBackend("127.0.0.1", port, timeout=0.3)
        bank = ValveBank("valves", [ValveConfig("A", address="0")], backend)
        await bank.start()
        try:
            assert not backend.connected
            res = await bank.open("A")
            assert res.outcome is Outcome.REFUSED and "cannot connect" in res.reason
        finally:
            await bank.stop()


async def test_wrong_unit_is_an_error_not_a_hang(server: Server) -> None:
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT + 1, timeout=0.5)
    try:
        with pytest.raises(BackendError, match="write coil 0"):
            await backend.set_output("0", True)
        with pytest.raises(BackendError, match="integer"):
            await backend.set_output("nope", True)
    finally:
        await backend.stop()


async def test_concurrent_valves_share_one_connection(server: Server) -> None:
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT)
    bank = ValveBank("valves", [ValveConfig(n, address=str(i)) for i, n in enumerate("ABCD")],
                     backend)
    await bank.start()
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(bank.open(n) for n in "ABCD")), 10)
        assert all(r.outcome is Outcome.ACTUATED for r in results)
        assert (await server.coils(4)) == [True] * 4
    finally:
        with contextlib.suppress(Exception):
            await bank.stop()


async def test_bank_timeout_shorter_than_backend_drops_the_connection(server: Server) -> None:
    """A silent device: the bank gives up first; the next call uses a fresh connection."""
    backend = ModbusCoilBackend("127.0.0.1", server.port, unit=UNIT, timeout=5.0)
    bank = ValveBank("valves", [ValveConfig("A", address="4")], backend, timeout=0.2)
    await bank.start()
    try:
        assert server.srv is not None and backend.connects == 1
        # Stop answering without closing: pause reading on every accepted connection.
        for conn in list(server.srv.active_connections.values()):
            conn.transport.pause_reading()
        res = await bank.open("A")
        assert res.outcome is Outcome.REFUSED and "timeout" in res.reason
        assert backend.connects == 2  # the stalled connection was dropped, not reused
        assert (await bank.open("A")).outcome is Outcome.ACTUATED
        assert backend.connects == 2
        assert (await server.coils())[4] is True
    finally:
        await bank.stop()
