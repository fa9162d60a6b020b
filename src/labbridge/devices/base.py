"""The device model shared by every instrument on a node.

A device is a small object made of state and commands over a backend (ARCHITECTURE.md
principle 8). Whatever changes on it is announced as a :class:`Change`; links publish those
changes (the telemetry bus, a web page) without the device knowing who listens.

Conventions
-----------
* ``Device.name`` is unique on a node; bus topics are ``<node>.<device>.<signal>``.
* ``signal`` is a short dotted name inside the device (``A`` for valve A of a valve bank,
  ``temperature`` for a furnace); ``value`` is JSON-serialisable (numbers, strings, bools,
  lists, dicts of those) or a numpy array for array-valued signals (camera frames, spectra).
* Listeners are plain callables run synchronously in the event loop; a listener that raises is
  logged and kept, it never breaks the device or the other listeners.
* ``start()`` / ``stop()`` bring up and tear down backends and physics tasks; both are
  idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Change:
    """One observed change of one signal of one device."""

    device: str
    signal: str
    value: Any
    ts: float = field(default_factory=time.time)


Listener = Callable[[Change], None]


class Device:
    """Base class of every labbridge device."""

    #: Short kind name used in configuration files (``valve_bank``, ``furnace``...).
    kind: ClassVar[str] = "device"

    def __init__(self, name: str) -> None:
        if not name:
            raise ValueError("a device needs a non-empty name")
        self.name = name
        self._listeners: list[Listener] = []

    # -- change events ---------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every change; returns a function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            try:
                self._listeners.remove(listener)
            except ValueError:
                pass

        return unsubscribe

    def emit(self, signal: str, value: Any, ts: float | None = None) -> Change:
        """Announce a change to every listener."""
        change = Change(self.name, signal, value, time.time() if ts is None else ts)
        for listener in tuple(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must not break the device
                log.exception("listener %r failed on %s.%s", listener, self.name, signal)
        return change

    # -- introspection ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Current value of every signal, keyed by signal name (for status pages and resync)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Static description: kind, name and whatever a client needs to present the device."""
        return {"kind": self.kind, "name": self.name}

    def signals(self) -> dict[str, dict[str, Any]]:
        """What the signals mean, for displays (a web page, EPICS EGU): signal name -> info.

        A key is a signal name, ``prefix.*`` (every signal under ``prefix.``) or ``*`` (any
        signal); the most specific key wins. Info fields, all optional:

        * ``units``: the unit of a numeric value (``torr``, ``°C``, ``%``, ``V``, ``deg``);
        * ``quantity``: what is measured (``pressure``, ``temperature``...), so a display
          can choose a scale (pressures on a log axis);
        * ``on_change``: True when the signal is announced on every change, so its last value
          holds until the next one (a setpoint, a state); otherwise it is a sample whose age
          matters;
        * ``event``: True for an occurrence (a watchdog trip, a refused command), not a level;
        * ``trend``: False for a number worth showing but not plotting (a frame count, an
          integration time).
        """
        return {}

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect backends and start physics; idempotent."""

    async def stop(self) -> None:
        """Stop physics, flush state and disconnect backends; idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
