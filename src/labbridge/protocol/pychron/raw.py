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
import re
from dataclasses import dataclass
from typing import Final

from labbridge.protocol.base import NEED_DATA, ProtocolError, _NeedData

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


#: Bytes ``bytes.strip()`` removes (ASCII whitespace).
_NON_BLANK: Final = re.compile(rb"[^ \t\n\r\x0b\x0c]")
_TERMINATOR: Final = re.compile(rb"[\r\n]")


class RawRequestReader:
    """Collects one F-RAW request from a one-shot connection.

    Work is linear in the bytes received, however small the chunks: each byte is scanned
    once (for the first non-blank byte, for CR/LF and for JSON braces), and the buffer is
    copied only when the request is complete.
    """

    def __init__(self, max_size: int = MAX_RAW_REQUEST) -> None:
        self._buf = bytearray()
        self.max_size = max_size
        self._done = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._json: bool | None = None
        self._blank_scanned = 0  # bytes known to be blank (before the first non-blank)
        self._json_scanned = 0  # bytes the JSON brace scan has seen
        self._term_scanned = 0  # bytes searched for CR/LF
        self._term = -1  # offset of the first CR or LF, once found

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            return
        if len(self._buf) + len(data) > self.max_size:
            self._done = True
            self._buf = bytearray()
            raise RawRequestTooLarge(
                f"request too long: more than {self.max_size} bytes without a terminator",
                fatal=True)
        self._buf += data

    def next_event(self) -> RawRequest | _NeedData:
        buf = self._buf
        if self._done or not buf:
            return NEED_DATA
        if self._json is None:
            m = _NON_BLANK.search(buf, self._blank_scanned)
            if m is None:
                self._blank_scanned = len(buf)
                return NEED_DATA
            self._json = buf[m.start()] == 0x7B  # '{'
            self._json_scanned = m.start()
        if self._json:
            end = self._scan_json(buf)
            if end >= 0:
                return self._finish(end)
        if self._term < 0:
            m = _TERMINATOR.search(buf, self._term_scanned)
            self._term_scanned = len(buf)
            if m is None:
                return NEED_DATA
            self._term = m.start()
        # JSON: ends at the terminator. Text: the whole of what arrived is the request (see
        # the module docstring).
        return self._finish(self._term if self._json else len(buf))

    def _scan_json(self, buf: bytearray) -> int:
        """Offset just after the balancing ``}``, or -1 (resumes where it stopped)."""
        depth, in_string, escape = self._depth, self._in_string, self._escape
        for i in range(self._json_scanned, len(buf)):
            b = buf[i]
            if in_string:
                if escape:
                    escape = False
                elif b == 0x5C:
                    escape = True
                elif b == 0x22:
                    in_string = False
            elif b == 0x22:
                in_string = True
            elif b == 0x7B:
                depth += 1
            elif b == 0x7D:
                depth -= 1
                if depth == 0:
                    self._depth, self._in_string, self._escape = depth, in_string, escape
                    self._json_scanned = i + 1
                    return i + 1
        self._depth, self._in_string, self._escape = depth, in_string, escape
        self._json_scanned = len(buf)
        return -1

    def _finish(self, end: int) -> RawRequest:
        self._done = True
        buf, self._buf = self._buf, bytearray()
        rest = bytes(buf[end:]).strip()
        return RawRequest(bytes(buf[:end]).decode("utf-8", "replace").strip(),
                          dropped=len(rest))

    def flush(self) -> RawRequest | None:
        """Quiet gap or half-close: whatever is buffered is the request (None if nothing)."""
        if self._done:
            return None
        if _NON_BLANK.search(self._buf, self._blank_scanned) is None:
            return None
        return self._finish(len(self._buf))

    @property
    def done(self) -> bool:
        return self._done

    @property
    def buffered(self) -> int:
        return len(self._buf)
