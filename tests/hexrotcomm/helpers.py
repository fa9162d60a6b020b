"""Shared set-up for the hexrotcomm link tests: a rotator mock and a controller model."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm.controller import HexrotController
from labbridge.links.hexrotcomm.mock_server import MockControllerClient, MockControllerServer
from labbridge.protocol.hexrotcomm import Generation, WireProfile

T = 10.0
#: Fast but finite limits so moves take well under a second or two.
FAST = {"velocity_limit": 10.0, "accel_limit": 20.0, "max_velocity_limit": 10.0}


def fast(generation: Generation | str) -> dict[str, float]:
    """FAST limited to the fields of the generation's config struct (gen A has 8 fields)."""
    gen = Generation(generation)
    names = RotatorMockController("probe", gen).spec.config.names
    return {k: v for k, v in FAST.items() if k in names}


@dataclass
class Rig:
    generation: Generation
    mock: RotatorMockController
    ctrl: HexrotController
    side: MockControllerServer | MockControllerClient

    async def close(self) -> None:
        await self.ctrl.disconnect()
        await self.side.close()


@contextlib.asynccontextmanager
async def rotator_rig(generation: str, **ctrl_kw: Any) -> AsyncIterator[Rig]:
    gen = Generation(generation)
    mock = RotatorMockController("rot", gen, config=fast(gen))
    profile = WireProfile.make(mock.spec, gen)
    kw: dict[str, Any] = {"enable_drives_delay": 0.0, "move_pause": 0.0,
                          "connect_timeout": T, "config_timeout": T, **ctrl_kw}
    side: MockControllerServer | MockControllerClient
    if gen is Generation.D:
        side = MockControllerServer(mock)
        await side.start()
        ctrl = HexrotController("rot", profile, "127.0.0.1", side.port, autoconnect=False, **kw)
    else:
        ctrl = HexrotController("rot", profile, "127.0.0.1", 0, **kw)
        await ctrl.start()  # gen A: the CSC side listens, the controller connects to it
        side = MockControllerClient(mock, "127.0.0.1", ctrl.port)
        await side.start()
    rig = Rig(gen, mock, ctrl, side)
    try:
        await asyncio.wait_for(ctrl.connect(), T)
        yield rig
    finally:
        await rig.close()


async def wait_for_signal(dev: Any, signal: str, predicate: Any, timeout: float = T) -> Any:
    """Wait for a Change of ``signal`` whose value satisfies ``predicate``."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def listener(ch: Any) -> None:
        if ch.signal == signal and predicate(ch.value) and not fut.done():
            fut.set_result(ch.value)

    unsub = dev.subscribe(listener)
    try:
        return await asyncio.wait_for(fut, timeout)
    finally:
        unsub()
