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


__all__ = ["BackendError", "GaugeBackend", "ValveBackend"]
