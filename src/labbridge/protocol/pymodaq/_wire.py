"""Byte-level building blocks shared by the G1 and G3 codecs (spec pymodaq.md §3.1, §5.1).

Every integer the PyMoDAQ TCP/IP protocol carries (lengths, counts, dimensions) is an unsigned
32-bit big-endian integer; it is declared once here (:data:`U32`). Numeric payloads are raw numpy
bytes in the byte order named by a dtype string (``<f8``, ``>u2``, ``|b1``); :func:`parse_dtype`
is the single gate that turns a peer's dtype string into a numpy dtype, so a hostile string can
never reach ``numpy.dtype`` unchecked (structured, object and string dtypes are refused).

:class:`PullDecoder` drives a generator-based parser over a bounded buffer. The parser asks for
``TAKE n`` (n bytes, copied out of the small header buffer), ``PEEK n`` (look without consuming)
or ``BIG n`` (n bytes in a buffer of their own). A ``BIG`` item is filled incrementally: by
:meth:`PullDecoder.receive_data`, or with no copy at all through :meth:`PullDecoder.get_buffer` /
:meth:`PullDecoder.buffer_updated`, which match ``asyncio.BufferedProtocol`` so the kernel writes
camera frames straight into the array's memory.

Memory follows the bytes received, not the lengths declared (issue 13): a ``BIG`` buffer starts
at :data:`GROW_CHUNK` (or what is already buffered) and grows geometrically as bytes arrive, so a
peer that announces 250 MiB and sends 10 bytes costs 1 MiB. Every growth step is charged to an
optional :class:`ReceiveBudget` shared by all the connections of a server; when it is exhausted
the connection that asked is refused (``ProtocolError`` kind ``busy``). :meth:`PullDecoder.close`
releases every buffer at once (the parser generator refers back to its decoder, a reference
cycle that would otherwise keep them until the cyclic garbage collector runs).
"""

from __future__ import annotations

import functools
import re
import struct
import sys
from collections import deque
from collections.abc import Generator
from typing import Final

import numpy as np

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, Side

#: Unsigned 32-bit big-endian: every length, count and dimension on the wire (§3.1, §5.1).
U32: Final = struct.Struct(">I")
U32_MAX: Final = 0xFFFF_FFFF

#: Default maximum size of one message / one item (an 8-bit 64-megapixel frame, or a 4k x 4k
#: uint16 frame with room to spare). Configurable per codec.
DEFAULT_MAX_MESSAGE: Final = 256 * 1024 * 1024
#: Default maximum length of a string field (command names, dtype strings, settings XML).
DEFAULT_MAX_STRING: Final = 16 * 1024 * 1024
#: Items at least this large go to their own buffer instead of the header buffer.
BIG_THRESHOLD: Final = 64 * 1024
#: First size, and smallest growth step, of a big item's buffer (memory for a declared length
#: is allocated in steps as its bytes arrive, never all at once).
GROW_CHUNK: Final = 1024 * 1024

#: Matched with ``fullmatch`` (``$`` would also match before a trailing newline); ASCII digits
#: only (``\d`` also matches other scripts' digits, which ``int`` accepts and numpy does not).
_DTYPE_RE = re.compile(r"([<>|=]?)([biufc])([0-9]{1,2})")
_ALLOWED_SIZES = {"b": {1}, "i": {1, 2, 4, 8}, "u": {1, 2, 4, 8}, "f": {2, 4, 8}, "c": {8, 16}}


@functools.lru_cache(maxsize=256)
def parse_dtype(text: str) -> np.dtype[np.generic]:
    """Turn a wire dtype string (``dtype.descr[0][1]`` of the sender) into a numpy dtype.

    Accepted: an optional byte-order mark ``<``, ``>``, ``|`` or ``=``, then ``b`` (bool), ``i``,
    ``u``, ``f`` or ``c`` and a size that numpy supports on every platform. Anything else is a
    :class:`ProtocolError` naming the string (spec §3.1 field ``dtype``; §5.4 rejects structured
    dtypes).
    """
    m = _DTYPE_RE.fullmatch(text)
    if m is None or int(m.group(3)) not in _ALLOWED_SIZES[m.group(2)]:
        raise ProtocolError(f"unsupported dtype string {text!r}", kind="bad_dtype", fatal=True)
    try:
        return np.dtype(text)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"unsupported dtype string {text!r}: {exc}", kind="bad_dtype",
                            fatal=True) from None


def looks_like_dtype(text: str) -> bool:
    """True when ``text`` is a dtype string :func:`parse_dtype` accepts (G1 dialect detection)."""
    m = _DTYPE_RE.fullmatch(text)
    return m is not None and int(m.group(3)) in _ALLOWED_SIZES[m.group(2)]


def dtype_string(dt: np.dtype[np.generic]) -> str:
    """The wire name of a dtype, as the real senders produce it (``dtype.descr[0][1]``)."""
    if dt.fields is not None or dt.subdtype is not None or dt.kind not in "biufc":
        raise ProtocolError(f"cannot send arrays of dtype {dt!r}: only bool, integer, float and "
                            "complex dtypes travel", side=Side.OURS, kind="bad_dtype")
    return str(dt.descr[0][1])


def raw_view(a: np.ndarray) -> memoryview:
    """The raw C-order bytes of an array as a flat byte view (no copy when already C-ordered)."""
    c = np.ascontiguousarray(a)
    return c.reshape(-1).view(np.uint8).data


def u32(n: int) -> bytes:
    if not 0 <= n <= U32_MAX:
        raise ProtocolError(f"value {n} does not fit an unsigned 32-bit field", side=Side.OURS,
                            kind="too_large")
    return U32.pack(n)


def str_bytes(s: str | bytes) -> list[bytes]:
    """STR(s) = u32 n | n bytes UTF-8 (§3.1, §5.1), as two pieces to avoid a concatenation."""
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return [u32(len(b)), b]


# --- pull-parser driver --------------------------------------------------------------------------

TAKE: Final = 0
BIG: Final = 1
PEEK: Final = 2

Request = tuple[int, int]
#: A parser: yields requests, receives bytes (TAKE, PEEK) or a bytearray (BIG).
Parser = Generator[Request, "bytes | bytearray", None]


def read(n: int) -> Request:
    """Request for ``n`` bytes: a big request when ``n`` reaches :data:`BIG_THRESHOLD`."""
    return (BIG if n >= BIG_THRESHOLD else TAKE, n)


class ReceiveBudget:
    """Bytes of unfinished big items that a group of decoders may hold together (one per
    server: a per-server budget of buffered bytes, issue 13). Pure bookkeeping."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("a receive budget must be positive")
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Charge ``n`` bytes; False (nothing charged) when that would pass the limit."""
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used = max(0, self.used - n)


class PullDecoder:
    """Sans-I/O stream decoder driving a generator parser (ARCHITECTURE.md principle 1, 2, 6).

    Subclasses implement :meth:`_parse` (an endless generator) and push finished messages with
    :meth:`_emit`. The parser marks message boundaries with :meth:`_boundary` so that
    :meth:`receive_eof` can tell a clean close from a peer that closed mid-frame (spec §9 #1).

    Buffers: the header buffer is bounded by ``max_message`` plus one receive chunk; a big item
    buffer grows in steps up to the size the parser asked for (which the parser checked against
    its limits first), charged to ``budget`` when one is given.
    """

    SCRATCH_SIZE = 64 * 1024
    #: Large-item buffers kept for reuse (see :meth:`_start_big`), and their most bytes in all:
    #: a connection keeps at most this much received memory between messages.
    POOL_SIZE = 3
    POOL_BYTES = 32 * 1024 * 1024

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 budget: ReceiveBudget | None = None) -> None:
        if max_message <= 0:
            raise ValueError("max_message must be positive")
        self.max_message = max_message
        self.budget = budget
        self._small = ReceiveBuffer(max_message + self.SCRATCH_SIZE + 1024)
        self._events: deque[object] = deque()
        #: The big item being received: its buffer (allocated so far), the size the parser
        #: asked for, how much of it is filled, and how many bytes are charged to the budget.
        self._big: bytearray | None = None
        self._big_need = 0
        self._reserved = 0
        self._pool: list[bytearray] = []
        self._big_fill = 0
        self._into_big = False
        self._scratch: bytearray | None = None
        self._error: ProtocolError | None = None
        self._idle = True
        # Subclasses set their own attributes before calling this: the parser starts here.
        self._gen = self._parse()
        self._req: Request = next(self._gen)

    # -- subclass interface ---------------------------------------------------------------------
    def _parse(self) -> Parser:  # pragma: no cover - abstract
        raise NotImplementedError
        yield (TAKE, 0)

    def _emit(self, event: object) -> None:
        self._events.append(event)

    def _boundary(self) -> None:
        """Called by the parser when it waits for the first byte of the next message."""
        self._idle = True

    # -- feeding ----------------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the peer (any chunking); parse lazily in :meth:`next_event`."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        mv = memoryview(data)
        if self._big is not None:
            want = min(self._big_need, self._big_fill + len(mv))
            if want > len(self._big):
                self._grow(want)
            k = want - self._big_fill
            self._big[self._big_fill : want] = mv[:k]
            self._big_fill = want
            mv = mv[k:]
        if len(mv):
            try:
                self._small.append(mv)
            except ProtocolError as exc:
                self._error = exc
                raise

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next ``recv_into`` should write (``asyncio.BufferedProtocol.get_buffer``).

        While a big item is pending this is the unfilled tail of its own buffer (zero copy);
        otherwise a reusable scratch area whose bytes :meth:`buffer_updated` hands to
        :meth:`receive_data`.
        """
        if self._big is not None and self._big_fill < self._big_need:
            if self._big_fill == len(self._big):
                self._grow(self._big_fill + 1)
            self._into_big = True
            return memoryview(self._big)[self._big_fill :]
        self._into_big = False
        if self._scratch is None:
            self._scratch = bytearray(self.SCRATCH_SIZE)
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> bool:
        """``nbytes`` were written into the area returned by :meth:`get_buffer`. False when
        they only went on filling a big item that is still incomplete: :meth:`next_event`
        has nothing new to give (a transport may skip asking, read after read of a frame)."""
        if self._into_big:
            self._into_big = False
            self._big_fill += nbytes
            return self._big_fill >= self._big_need
        else:
            assert self._scratch is not None
            self.receive_data(memoryview(self._scratch)[:nbytes])
            return True

    def receive_eof(self) -> None:
        """The peer closed. Raise a fatal ``truncated`` error if it closed inside a message."""
        if self._error is None and not self._events:
            self._step()
        if not self._idle or self._small or self._big is not None:
            held = len(self._small) + self._big_fill
            raise ProtocolError(f"peer closed mid-frame ({held} bytes of an unfinished message "
                                "buffered)", kind="truncated", fatal=True)

    # -- draining --------------------------------------------------------------------------------
    def next_event(self) -> object:
        """The next decoded message, or :data:`NEED_DATA`. A fatal error is raised again on
        every later call: the stream cannot be resynchronised."""
        if not self._events:
            self._step()
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    @property
    def pending_big(self) -> int:
        """Size the big item being filled will have (0 when none): tests and statistics."""
        return 0 if self._big is None else self._big_need

    @property
    def allocated_big(self) -> int:
        """Bytes allocated so far for the big item being filled (0 when none)."""
        return 0 if self._big is None else len(self._big)

    @property
    def in_message(self) -> bool:
        """True between the first byte of a message and its end (deadlines count from it)."""
        return not self._idle or bool(self._small) or self._big is not None

    def _charge(self, n: int) -> None:
        if self.budget is not None and n > 0:
            if not self.budget.take(n):
                raise ProtocolError(
                    f"receive budget exhausted ({self.budget.used} of {self.budget.limit} "
                    f"bytes held by unfinished messages)", kind="busy", fatal=True)
            self._reserved += n

    def _release(self) -> None:
        if self.budget is not None and self._reserved:
            self.budget.give(self._reserved)
        self._reserved = 0

    def _start_big(self, n: int, have: int) -> bytearray:
        """The buffer for a big item of ``n`` bytes when ``have`` of them are already here.

        A recycled buffer of exactly ``n`` bytes is used when nobody references it any more
        (decoded arrays are views of their frame's buffer, so CPython's reference count says
        when it is free: the pool list and the ``getrefcount`` argument are the only ones
        left). It was filled by an earlier frame, so its memory already follows received bytes;
        recycling keeps the pages of a large frame mapped (one page fault per 4 KiB saved).
        Otherwise a new buffer of :data:`GROW_CHUNK` (or ``have``) bytes, grown as bytes come.
        """
        pool = self._pool
        for i in range(len(pool)):
            buf = pool[i]
            if len(buf) == n and sys.getrefcount(buf) <= 3:  # pool list, buf, argument
                self._charge(n)
                del pool[i]
                return buf
        size = min(n, max(GROW_CHUNK, have))
        self._charge(size)
        return bytearray(size)

    def _grow(self, at_least: int) -> None:
        """Enlarge the big buffer (geometrically, at least to ``at_least``, at most to the
        item's size), charging the budget for the new bytes."""
        big = self._big
        assert big is not None
        size = min(self._big_need, max(at_least, 2 * len(big), len(big) + GROW_CHUNK))
        self._charge(size - len(big))
        try:
            big.extend(bytes(size - len(big)))
        except BufferError:  # a view of it is still alive somewhere: move to a new buffer
            new = bytearray(size)
            new[: self._big_fill] = memoryview(big)[: self._big_fill]
            self._big = new

    def _finish_big(self) -> bytearray:
        buf = self._big
        assert buf is not None
        self._big = None
        self._big_fill = 0
        self._big_need = 0
        self._release()
        pool = self._pool
        if len(buf) <= self.POOL_BYTES and not any(b is buf for b in pool):
            pool.append(buf)
            while len(pool) > self.POOL_SIZE or sum(len(b) for b in pool) > self.POOL_BYTES:
                del pool[0]
        return buf

    def close(self) -> None:
        """Drop every buffer and the parser now (connection gone); later use raises."""
        self._release()
        self._big = None
        self._big_fill = 0
        self._big_need = 0
        self._pool.clear()
        self._small.clear()
        self._scratch = None
        self._events.clear()
        self._gen.close()
        self._error = ProtocolError("decoder closed", side=Side.OURS, fatal=True)

    def _step(self) -> None:
        if self._error is not None:
            raise self._error
        small = self._small
        try:
            while not self._events:
                kind, n = self._req
                value: bytes | bytearray
                if kind == BIG:
                    if self._big is None:
                        k = min(n, len(small))
                        self._big = self._start_big(n, k)
                        self._big_need = n
                        if k:
                            self._big[:k] = small.view()[:k]
                            small.skip(k)
                        self._big_fill = k
                    if self._big_fill < n:
                        return
                    value = self._finish_big()
                elif kind == TAKE:
                    if len(small) < n:
                        return
                    value = small.take(n)
                else:
                    if len(small) < n:
                        return
                    value = small.peek(n)
                self._idle = False
                self._req = self._gen.send(value)
        except ProtocolError as exc:
            exc.fatal = True
            self._error = exc
            raise
        except StopIteration:  # pragma: no cover - parsers loop forever
            self._error = ProtocolError("parser ended", side=Side.OURS, fatal=True)
            raise self._error from None
