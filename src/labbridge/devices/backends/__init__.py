"""Backends: the part of a device that talks to hardware (or pretends to).

A device (:mod:`labbridge.devices.valves`, :mod:`~labbridge.devices.gauges`) holds state and
rules; a backend only moves bits. Simulation is an ordinary backend (ARCHITECTURE.md
principle 8), never an ``if simulation:`` branch in a device.

Valve backends drive *outputs* addressed by a string (a coil number for Modbus, anything for
the simulator). They know nothing about valves: inverted logic, interlocks, locks and owners
live in the bank (spec pychron.md section 5). Every method is a coroutine; a backend whose
driver blocks runs it in an executor so the node's one event loop never stalls
(ARCHITECTURE.md principle 7).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures


class BackendError(Exception):
    """The hardware did not do what was asked; the message says why, for a human.

    A valve bank turns it into a ``REFUSED`` actuation whose reason carries this text.
    """


class ValveBackend(abc.ABC):
    """Drives binary outputs (relays, coils) that open and close valves."""

    #: Short name used in logs and in ``describe()`` (``sim``, ``modbus``).
    kind: str = "backend"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to the hardware. Must not raise when the hardware is merely unreachable:
        log it and fail the next call instead, so a node can boot with a device switched off."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; idempotent."""

    @abc.abstractmethod
    async def set_output(self, address: str, level: bool) -> None:
        """Drive output ``address`` to ``level``; raise :class:`BackendError` on failure."""

    @abc.abstractmethod
    async def read_output(self, address: str) -> bool | None:
        """Read output ``address`` back: its level, or None when it cannot be read back.

        Raises :class:`BackendError` when a read was possible but failed.
        """

    def describe(self) -> dict[str, object]:
        """Static description for ``Device.describe()`` (no secrets, no live state)."""
        return {"kind": self.kind}


class BlockingValveBackend(ValveBackend):
    """Adapter for a driver with blocking calls (a serial relay board, a vendor DLL).

    Subclasses implement :meth:`set_output_blocking` and :meth:`read_output_blocking`; the
    async methods run them on one worker thread of their own (drivers are rarely
    thread-safe, so calls stay in order), keeping the event loop free for other clients
    (ARCHITECTURE.md principle 7, spec pychron.md section 17 row 19).
    """

    def __init__(self) -> None:
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"{type(self).__name__}")
        return self._executor

    @abc.abstractmethod
    def set_output_blocking(self, address: str, level: bool) -> None:
        """Blocking form of :meth:`ValveBackend.set_output`."""

    @abc.abstractmethod
    def read_output_blocking(self, address: str) -> bool | None:
        """Blocking form of :meth:`ValveBackend.read_output`."""

    async def set_output(self, address: str, level: bool) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool(), self.set_output_blocking, address, level)

    async def read_output(self, address: str) -> bool | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), self.read_output_blocking, address)

    async def stop(self) -> None:
        """Release the worker thread (a call still blocked in the driver finishes alone)."""
        pool, self._executor = self._executor, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class GaugeBackend(abc.ABC):
    """Reads pressures from named gauges."""

    kind: str = "backend"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect to the controller."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Disconnect; idempotent."""

    @abc.abstractmethod
    async def read_pressure(self, gauge: str) -> float:
        """Current pressure of ``gauge`` in torr; raise :class:`BackendError` on failure."""

    def describe(self) -> dict[str, object]:
        return {"kind": self.kind}


__all__ = ["BackendError", "BlockingValveBackend", "GaugeBackend", "ValveBackend"]
