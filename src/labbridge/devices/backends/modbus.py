"""Valves on Modbus/TCP coils (pymodbus ``AsyncModbusTcpClient``).

Typical hardware: a Modbus/TCP relay or digital-output module next to the extraction line,
one coil per valve solenoid; the valve's ``address`` is the coil number (0-based, as on the
wire). A write is function 0x05 (write single coil); the read-back is function 0x01 (read
coils), so the bank can confirm an actuation and, at start, trust the hardware over the state
file (docs/adr/0021).

Failure policy (docs/adr/0022): every call is bounded by ``timeout``; an unreachable or
silent device raises :class:`BackendError` with host, port and unit in the message (the bank
turns it into ``REFUSED`` with that reason), and the connection is dropped so the *next* call
reconnects. pymodbus's own background reconnect is switched off (``reconnect_delay=0``): a
task that reconnects behind our back would outlive the node and hide the failure.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

# pymodbus is the optional ``modbus`` extra: import this module only when a node asks for a
# Modbus backend (the node factory does so lazily and explains a missing extra).
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from labbridge.devices.backends import BackendError, ValveBackend

log = logging.getLogger(__name__)



def coil_address(address: str) -> int:
    """Parse a valve address as a coil number 0..65535 (ValueError otherwise)."""
    try:
        n = int(str(address).strip(), 0)
    except ValueError:
        raise ValueError(f"a Modbus coil address is an integer 0..65535, got {address!r}") \
            from None
    if not 0 <= n <= 0xFFFF:
        raise ValueError(f"a Modbus coil address is an integer 0..65535, got {address!r}")
    return n


class ModbusCoilBackend(ValveBackend):
    """Coils of one Modbus/TCP device (``unit`` = device id, 1 by default)."""

    kind = "modbus"

    def __init__(self, host: str, port: int = 502, *, unit: int = 1,
                 timeout: float = 1.0) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a finite number > 0, got {timeout!r}")
        if not 0 <= unit <= 255:
            raise ValueError(f"a Modbus unit (device id) is 0..255, got {unit}")
        self.host = host
        self.port = port
        self.unit = unit
        self.timeout = timeout
        self._client: Any = None
        #: Successful connects so far (diagnostics: a growing number means a flaky link).
        self.connects = 0
        # One request at a time on the connection: valves of one bank may actuate
        # concurrently, the module answers them in turn anyway.
        self._io = asyncio.Lock()

    @property
    def where(self) -> str:
        return f"modbus {self.host}:{self.port} unit {self.unit}"

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def start(self) -> None:
        try:
            async with self._io:
                await self._ensure_connected()
        except BackendError as exc:
            log.warning("%s; will retry on first use", exc)

    async def stop(self) -> None:
        self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken client must not mask the real error
                log.debug("closing %s failed", self.where, exc_info=True)

    async def _ensure_connected(self) -> Any:
        if self.connected:
            return self._client
        self._drop()
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout,
                                      retries=0, reconnect_delay=0)
        try:
            async with asyncio.timeout(self.timeout + 0.5):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            ok = False
            log.debug("%s: connect failed: %s", self.where, exc)
        if not ok:
            client.close()
            raise BackendError(f"{self.where}: cannot connect (device unreachable)")
        self._client = client
        self.connects += 1
        log.info("%s: connected", self.where)
        return client

    async def _call(self, what: str, method: str, *args: Any) -> Any:
        async with self._io:
            client = await self._ensure_connected()
            try:
                async with asyncio.timeout(self.timeout + 0.5):
                    rr = await getattr(client, method)(*args, device_id=self.unit)
            except (TimeoutError, ModbusException, OSError) as exc:
                self._drop()
                raise BackendError(f"{self.where}: {what} failed: "
                                   f"{exc or type(exc).__name__}") from exc
            except asyncio.CancelledError:
                # The caller gave up (the bank's own timeout) with a request in flight: a late
                # answer must not be taken for the next request's, so start afresh.
                self._drop()
                raise
            if rr is None or rr.isError():
                code = getattr(rr, "exception_code", None)
                raise BackendError(f"{self.where}: {what} refused by the device"
                                   + (f" (exception code {code})" if code is not None else ""))
            return rr

    async def set_output(self, address: str, level: bool) -> None:
        coil = _coil(address)
        await self._call(f"write coil {coil}", "write_coil", coil, bool(level))

    async def read_output(self, address: str) -> bool | None:
        coil = _coil(address)
        rr = await self._call(f"read coil {coil}", "read_coils", coil)
        bits = getattr(rr, "bits", None)
        if not bits:
            raise BackendError(f"{self.where}: read coil {coil}: empty answer")
        return bool(bits[0])

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind, "host": self.host, "port": self.port, "unit": self.unit,
                "timeout": self.timeout}


def _coil(address: str) -> int:
    try:
        return coil_address(address)
    except ValueError as exc:
        raise BackendError(str(exc)) from None
