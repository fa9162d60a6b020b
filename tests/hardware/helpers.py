"""Helpers for the hardware-node tests: fake clocks and in-process nodes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from labbridge.node.node import Node, build_node
from tests.conftest import REPO


class FakeClock:
    """An injectable clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@contextlib.asynccontextmanager
async def example_node(name: str, tmp_path: Path) -> AsyncIterator[Node]:
    """Build and start ``examples/<name>`` on 127.0.0.1 with ports chosen by the system."""
    node = build_node(REPO / "examples" / name, host="127.0.0.1", port=0, state_dir=tmp_path)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def tcp_port(node: Node, service: str | None = None, protocol: str = "tcp") -> int:
    for ep in node.endpoints():
        if ep.protocol == protocol and (service is None or ep.service == service):
            assert ep.port
            return ep.port
    raise KeyError((service, protocol))
