"""Blocking facades of the valve client for scripts that do not use asyncio.

Both are the generic :class:`~labbridge.links.pychron.clients.Blocking` facade (one private
event loop in a background thread) around an async client::

    with BlockingRemoteValves("10.0.0.5", 1061) as line:
        line.open("A")
        print(line.states())
"""

from __future__ import annotations

from typing import Any

from labbridge.links.pychron.client import PychronClient
from labbridge.links.pychron.clients import Blocking
from labbridge.links.pychron.remote import Actuation, RemoteValves


class BlockingPychronClient(Blocking):
    """Blocking :class:`PychronClient`: ``ask``, ``call``, ``close``."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        super().__init__(PychronClient, host, port, **kw)

    @property
    def client(self) -> PychronClient:
        client: PychronClient = self._proxy
        return client


def _remote_valves(host: str, port: int, **kw: Any) -> RemoteValves:
    return RemoteValves(PychronClient(host, port, **kw))


class BlockingRemoteValves(Blocking):
    """Blocking :class:`RemoteValves`: ``open``, ``close_valve``, ``state``, ``states``,
    ``locks``, ``owners``; ``close()`` closes the connection (not a valve)."""

    def __init__(self, host: str, port: int, **kw: Any) -> None:
        super().__init__(_remote_valves, host, port, **kw)

    @property
    def valves(self) -> RemoteValves:
        valves: RemoteValves = self._proxy
        return valves

    @property
    def client(self) -> PychronClient:
        return self.valves.client

    def close_valve(self, name: str) -> Actuation:
        result: Actuation = self._run(self.valves.close, name)
        return result

    def _closer(self) -> Any:
        return self.valves.client.close
