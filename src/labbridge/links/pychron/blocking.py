"""Blocking facades for scripts that do not use asyncio.

Each facade owns a :class:`~labbridge.transport.blocking.BlockingPortal` (one private event
loop in a background thread) and forwards calls to the async client on it::

    with BlockingRemoteValves("10.0.0.5", 1061) as line:
        line.open("A")
        print(line.states())
"""

from __future__ import annotations

import functools
from typing import Any

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.remote import Actuation, RemoteValves
from labbridge.transport.blocking import BlockingPortal


class BlockingPychronClient:
    """Blocking :class:`PychronClient`."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        self._portal = BlockingPortal()
        self.client = PychronClient(host, port, **kw)

    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self._portal.call(functools.partial(fn, *args, **kw))

    def ask(self, request: str, **kw: Any) -> str:
        result: str = self._call(self.client.ask, request, **kw)
        return result

    def call(self, request: str, **kw: Any) -> str:
        result: str = self._call(self.client.call, request, **kw)
        return result

    def close(self) -> None:
        try:
            self._call(self.client.close)
        finally:
            self._portal.close()

    def __enter__(self) -> BlockingPychronClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingRemoteValves(BlockingPychronClient):
    """Blocking :class:`RemoteValves`."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        super().__init__(host, port, **kw)
        self.valves = RemoteValves(self.client)

    def open(self, name: str) -> Actuation:
        result: Actuation = self._call(self.valves.open, name)
        return result

    def close_valve(self, name: str) -> Actuation:
        result: Actuation = self._call(self.valves.close, name)
        return result

    def state(self, name: str) -> bool:
        return bool(self._call(self.valves.state, name))

    def states(self) -> dict[str, bool]:
        result: dict[str, bool] = self._call(self.valves.states)
        return result

    def locks(self) -> dict[str, bool]:
        result: dict[str, bool] = self._call(self.valves.locks)
        return result

    def owners(self) -> dict[str, str]:
        result: dict[str, str] = self._call(self.valves.owners)
        return result
