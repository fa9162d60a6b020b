"""F-RAW: unframed text or JSON, one request per connection (spec sections 3.2 and 3.5).

The real server treats each TCP read as one whole request. labbridge cannot rely on read
boundaries, so a request is complete when:

* a text request has a CR or LF (everything buffered at that moment is the request, so
  ``Open A\\rClose A\\r`` sent in one segment is one request, exactly as the real server and
  the golden vectors have it -- never two actuations);
* a JSON request's outermost braces balance, or a CR/LF follows;
* the peer half-closes, or a quiet gap passes with no new bytes (the transport calls
  :meth:`RawRequestReader.idle`), for clients that send no terminator at all.

Replies are raw UTF-8 with no terminator; the server closes the connection after writing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, _NeedData

MAX_RAW_REQUEST: Final = 64 * 1024


class Framing(enum.Enum):
    BRACED = "braced"  # F-SEED, persistent
    JSON = "json"      # F-RAW JSON, one-shot
    PLAIN = "plain"    # F-RAW text, one-shot


_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")


def detect_framing(first: bytes) -> Framing | None:
    """Framing of a new connection from its first bytes, or None if more are needed.

    ``{`` + 4 hex digits + ``}`` is braced; ``{`` followed by anything else is JSON; anything
    else is plain text. Leading whitespace before JSON is allowed.
    """
    data = first.lstrip(b" \t")
    if not data:
        return None
    if data[0] != 0x7B:
        return Framing.PLAIN
    if data is not first:  # whitespace then '{': JSON
        return Framing.JSON
    for i in range(1, min(len(data), 6)):
        ok = (data[i] in _HEX) if i < 5 else (data[i] == 0x7D)
        if not ok:
            return Framing.JSON
    if len(data) < 6:
        return None
    return Framing.BRACED


@dataclass(frozen=True, slots=True)
class RawRequest:
    text: str
    #: Bytes that arrived after the request's end and were dropped (logged by the server).
    dropped: int = 0


class RawRequestTooLarge(ProtocolError):
    kind = "too_large"


class RawRequestReader:
    """Collects one F-RAW request from a one-shot connection."""

    def __init__(self, max_size: int = MAX_RAW_REQUEST) -> None:
        self._buf = ReceiveBuffer(max_size)
        self.max_size = max_size
        self._done = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._json: bool | None = None
        self._scanned = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            return
        try:
            self._buf.append(data)
        except ProtocolError:
            self._done = True
            raise RawRequestTooLarge(
                f"request too long: more than {self.max_size} bytes without a terminator",
                fatal=True) from None

    def next_event(self) -> RawRequest | _NeedData:
        if self._done or not self._buf:
            return NEED_DATA
        view = self._buf.peek()
        if self._json is None:
            stripped = view.lstrip()
            if not stripped:
                return NEED_DATA
            self._json = stripped[:1] == b"{"
        end = self._scan_json(view) if self._json else -1
        if end < 0:
            cr, lf = view.find(b"\r"), view.find(b"\n")
            term = min(p for p in (cr, lf, len(view)) if p >= 0)
            if term == len(view):
                return NEED_DATA
            if self._json:
                end = term
            else:
                # Text: the whole of what arrived is the request (see module docstring).
                return self._finish(view, len(view))
        return self._finish(view, end)

    def _scan_json(self, view: bytes) -> int:
        """Offset just after the balancing ``}``, or -1."""
        for i in range(self._scanned, len(view)):
            b = view[i]
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif b == 0x5C:
                    self._escape = True
                elif b == 0x22:
                    self._in_string = False
            elif b == 0x22:
                self._in_string = True
            elif b == 0x7B:
                self._depth += 1
            elif b == 0x7D:
                self._depth -= 1
                if self._depth == 0:
                    self._scanned = i + 1
                    return i + 1
        self._scanned = len(view)
        return -1

    def _finish(self, view: bytes, end: int) -> RawRequest:
        self._done = True
        self._buf.clear()
        rest = view[end:].strip()
        return RawRequest(view[:end].decode("utf-8", "replace").strip(), dropped=len(rest))

    def flush(self) -> RawRequest | None:
        """Quiet gap or half-close: whatever is buffered is the request (None if nothing)."""
        if self._done:
            return None
        view = self._buf.peek()
        if not view.strip():
            return None
        return self._finish(view, len(view))

    @property
    def done(self) -> bool:
        return self._done

    @property
    def buffered(self) -> int:
        return len(self._buf)
