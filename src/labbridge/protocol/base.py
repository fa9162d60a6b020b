"""Shared building blocks of every sans-I/O protocol core.

Every framer in labbridge follows one shape (ARCHITECTURE.md principle 1 and 2)::

    framer.receive_data(chunk)        # whatever bytes arrived, any size
    while (ev := framer.next_event()) is not NEED_DATA:
        handle(ev)                    # a typed message
    wire = framer.send(message)       # bytes to write

Framers never block and never call ``recv(n)``: they buffer what they were given, up to a
documented maximum, and say :data:`NEED_DATA` when a message is incomplete.
"""

from __future__ import annotations

import enum
from typing import Final


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``next_event()`` when the buffered bytes do not yet hold a whole message.
NEED_DATA: Final = _NeedData.NEED_DATA


class Side(enum.Enum):
    """Which side of a conversation broke the protocol."""

    PEER = "peer"
    """The remote peer sent bytes that break the protocol."""
    OURS = "ours"
    """Our side was asked to encode something the protocol cannot carry."""


class ProtocolError(Exception):
    """A protocol rule was broken.

    ``side`` says who broke it, ``kind`` is a short machine-readable name (the error kinds of the
    golden vectors, for instance ``length_mismatch``) and ``fatal`` says whether the connection
    can go on after this error (the framer resynchronised) or must be closed.
    """

    kind: str = "protocol_error"

    def __init__(
        self,
        message: str,
        *,
        side: Side = Side.PEER,
        kind: str | None = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.side = side
        if kind is not None:
            self.kind = kind
        self.fatal = fatal

    def __str__(self) -> str:
        return self.message


class BufferOverflow(ProtocolError):
    """The peer sent more bytes than a buffer may hold without completing a message."""

    kind = "too_large"

    def __init__(self, limit: int, held: int) -> None:
        super().__init__(
            f"buffer limit exceeded: {held} bytes without a complete message (limit {limit})",
            fatal=True,
        )
        self.limit = limit
        self.held = held


class ReceiveBuffer:
    """A bounded byte buffer with amortised O(1) appends and consumption.

    Appending never copies what is already held (``bytearray`` grows geometrically) and
    consuming from the front only moves a read offset; the consumed prefix is dropped in one
    ``del`` once it dominates the buffer, so a stream of small frames costs linear time overall
    (the ``bytes +=`` anti-pattern is quadratic).
    """

    __slots__ = ("_buf", "_start", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        self._buf = bytearray()
        self._start = 0
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self._buf) - self._start

    def __bool__(self) -> bool:
        return len(self._buf) > self._start

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes; raise :class:`BufferOverflow` (and drop them) past ``max_size``."""
        held = len(self) + len(data)
        if held > self.max_size:
            self.clear()
            raise BufferOverflow(self.max_size, held)
        if self._start and self._start >= len(self._buf) // 2:
            del self._buf[: self._start]
            self._start = 0
        self._buf += data

    def view(self) -> memoryview:
        """A read-only view of the held bytes (valid until the next append/consume)."""
        return memoryview(self._buf)[self._start :].toreadonly()

    def peek(self, n: int | None = None) -> bytes:
        """Copy of the first ``n`` held bytes (all when ``n`` is None)."""
        end = len(self._buf) if n is None else min(len(self._buf), self._start + n)
        return bytes(self._buf[self._start : end])

    def find(self, sub: bytes, start: int = 0) -> int:
        """Offset (relative to the held bytes) of ``sub`` at or after ``start``, or -1."""
        pos = self._buf.find(sub, self._start + start)
        return -1 if pos < 0 else pos - self._start

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` held bytes."""
        if n > len(self):
            raise ValueError("take() beyond the held bytes")
        out = bytes(self._buf[self._start : self._start + n])
        self._start += n
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = 0
        return out

    def skip(self, n: int) -> None:
        """Drop the first ``n`` held bytes (all of them if fewer are held)."""
        self._start = min(len(self._buf), self._start + n)
        if self._start == len(self._buf):
            self._buf.clear()
            self._start = 0

    def clear(self) -> None:
        self._buf.clear()
        self._start = 0

    def raw(self) -> tuple[bytearray, int]:
        """The underlying bytearray and the offset of the first held byte.

        For hot decode paths only: read, never modify, and do not keep it past the next
        append/consume call.
        """
        return self._buf, self._start

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._buf[self._start + i]
