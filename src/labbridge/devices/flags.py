"""Flags: shared 0/1 (or numeric) values that pyscripts use to coordinate.

Spec pychron.md section 5 (``Read``, ``Set``, ``Ping``) and section 7: a remote pyscript
runner sets a flag, then ``Ping``s it every 3 s while it works; a flag that nobody pinged for
60 s clears itself (the real node checks every 5 s), so a crashed runner cannot hold the line
forever. ``Set`` records the requester as the flag's owner (the peer address as a string).

The clocks are injectable (``clock`` for expiry, ``wallclock`` for the timestamp ``Ping``
returns) so tests drive time instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from labbridge.devices.base import Device

log = logging.getLogger(__name__)

FlagValue = int | float


def _normalise(value: bool | int | float) -> FlagValue:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a flag value must be finite, got {value!r}")
        return int(value) if value.is_integer() else value
    raise TypeError(f"a flag value must be a number, got {type(value).__name__}")


class Flag(Device):
    """A named flag with an owner and a ping-based auto-clear (spec section 7)."""

    kind = "flag"

    def __init__(self, name: str, *, value: bool | int | float = 0,
                 auto_clear: float | None = 60.0, check_period: float = 5.0,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time) -> None:
        super().__init__(name)
        if auto_clear is not None and (auto_clear <= 0 or not math.isfinite(auto_clear)):
            auto_clear = None  # 0 / None: never clears by itself
        if not (check_period > 0 and math.isfinite(check_period)):
            raise ValueError(f"check_period must be a finite number > 0, got {check_period!r}")
        self.auto_clear = auto_clear
        self.check_period = check_period
        self._clock = clock
        self._wallclock = wallclock
        self._value: FlagValue = _normalise(value)
        self._owner = ""
        self._last_activity = clock()
        self._last_ping: float | None = None
        self._task: asyncio.Task[None] | None = None

    # -- commands --------------------------------------------------------------------------
    @property
    def value(self) -> FlagValue:
        return self._value

    @property
    def owner(self) -> str:
        return self._owner

    @property
    def last_ping(self) -> float | None:
        """Wall-clock time of the last ping, or None."""
        return self._last_ping

    def read(self) -> FlagValue:
        """``Read <flag>``: the value (0/1 for a plain flag)."""
        return self._value

    def set(self, value: bool | int | float, requester: str | None = None) -> bool:
        """``Set <flag> <value>``: store it, take ``requester`` as owner; returns True (``OK``).

        Setting counts as activity: the auto-clear countdown restarts.
        """
        new = _normalise(value)
        self._last_activity = self._clock()
        self._update(new, requester or "")
        return True

    def clear(self) -> None:
        self._update(0, "")

    def ping(self, requester: str | None = None) -> float:
        """``Ping <flag>``: restart the auto-clear countdown; returns the wall-clock time."""
        self._last_activity = self._clock()
        self._last_ping = self._wallclock()
        return self._last_ping

    def check_expiry(self) -> bool:
        """Clear the flag if it is set and was not pinged for ``auto_clear`` seconds.

        Returns True when it cleared the flag. Called by the task :meth:`start` runs; tests
        call it directly with a fake clock.
        """
        if self.auto_clear is None or not self._value:
            return False
        idle = self._clock() - self._last_activity
        if idle < self.auto_clear:
            return False
        log.warning("flag %s (owner %s) cleared: no ping for %.1f s", self.name,
                    self._owner or "-", idle)
        self.clear()
        return True

    def _update(self, value: FlagValue, owner: str) -> None:
        if value != self._value:
            self._value = value
            self.emit("value", value)
        if owner != self._owner:
            self._owner = owner
            self.emit("owner", owner)

    # -- Device ----------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"value": self._value, "owner": self._owner}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "auto_clear": self.auto_clear,
                "check_period": self.check_period}

    async def start(self) -> None:
        if self._task is None and self.auto_clear is not None:
            self._last_activity = self._clock()
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"flag {self.name} auto-clear")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_period)
            try:
                self.check_expiry()
            except Exception:  # a broken clock must not kill the watcher silently
                log.exception("flag %s: expiry check failed", self.name)
