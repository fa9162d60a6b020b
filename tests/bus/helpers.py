"""Shared helpers of the bus tests: a tiny device, and publish-until-seen (PUB/SUB is lossy at
join: we wait for the first message instead of sleeping)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from labbridge.bus.subscriber import Subscriber
from labbridge.devices.base import Device


class Thing(Device):
    """A device whose signals are set by the test."""

    kind = "thing"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.values: dict[str, Any] = {}
        self.reads = 0

    def set(self, signal: str, value: Any) -> None:
        self.values[signal] = value
        self.emit(signal, value)

    def get(self) -> Any:
        self.reads += 1
        return self.values.get("value")

    async def aget(self) -> Any:
        self.reads += 1
        return self.values.get("value")


async def until_joined(sub: Subscriber, poke: Callable[[], None],
                       pred: Callable[[str, Any, Any], bool] | None = None,
                       timeout: float = 10.0) -> None:
    """Call ``poke()`` (publish something) every 20 ms until ``sub`` has seen a message for
    which ``pred`` holds; the subscription is then live."""
    waiter = asyncio.ensure_future(sub.wait_for(pred, timeout=timeout))
    try:
        while not waiter.done():
            poke()
            await asyncio.wait([waiter], timeout=0.02)
        waiter.result()
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
