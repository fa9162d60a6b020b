"""An in-memory pipe between two ``asyncio.Protocol`` objects, for tests without sockets.

``connect_pipe(server_protocol)`` returns the client side as an asyncio stream pair; bytes
written on one side are delivered to the other on the next loop iteration, exactly as a
socket would deliver them, including half-close (``write_eof``) and close.
"""

from __future__ import annotations

import asyncio
from typing import Any


class MemoryTransport(asyncio.Transport):
    """One end of an in-memory pipe."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: asyncio.BaseProtocol,
                 peername: tuple[str, int]) -> None:
        super().__init__()
        self._loop = loop
        self._protocol = protocol
        self._peer: MemoryTransport | None = None
        self._closing = False
        self._eof = False
        self._paused = False
        self._extra = {"peername": peername, "sockname": ("memory", 0), "socket": None}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof:
            return
        peer = self._peer
        if peer is not None and not peer._closing:
            payload = bytes(data)
            self._loop.call_soon(peer._deliver, payload)

    def _deliver(self, data: bytes) -> None:
        if not self._closing:
            self._protocol.data_received(data)  # type: ignore[attr-defined]

    def write_eof(self) -> None:
        if self._eof:
            return
        self._eof = True
        peer = self._peer
        if peer is not None:
            self._loop.call_soon(peer._deliver_eof)

    def _deliver_eof(self) -> None:
        if self._closing:
            return
        keep = self._protocol.eof_received()  # type: ignore[attr-defined]
        if not keep:
            self.close()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def is_reading(self) -> bool:
        return not self._paused

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        peer = self._peer
        self._loop.call_soon(self._protocol.connection_lost, None)
        if peer is not None and not peer._closing:
            self._loop.call_soon(peer.close)

    def abort(self) -> None:
        self.close()


def connect_protocols(a: asyncio.Protocol, b: asyncio.Protocol,
                      a_peer: tuple[str, int] = ("127.0.0.1", 40001),
                      b_peer: tuple[str, int] = ("127.0.0.1", 40000)) -> tuple[MemoryTransport,
                                                                               MemoryTransport]:
    """Wire two protocols together; returns (transport of a, transport of b)."""
    loop = asyncio.get_running_loop()
    ta = MemoryTransport(loop, a, a_peer)
    tb = MemoryTransport(loop, b, b_peer)
    ta._peer, tb._peer = tb, ta
    a.connection_made(ta)
    b.connection_made(tb)
    return ta, tb


async def connect_pipe(server_protocol: asyncio.Protocol, *,
                       client_addr: tuple[str, int] = ("127.0.0.1", 40001),
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect a stream client to ``server_protocol`` through memory."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    client_proto = asyncio.StreamReaderProtocol(reader)
    # The server sees the client's address as its peer.
    t_client, _ = connect_protocols(client_proto, server_protocol, a_peer=("memory", 0),
                                    b_peer=client_addr)
    writer = asyncio.StreamWriter(t_client, client_proto, reader, loop)
    return reader, writer
