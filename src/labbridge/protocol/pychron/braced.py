"""F-SEED: the customer's braced framing ``{LLLL}payload\\r\\n`` (spec pychron.md section 3.1).

Byte layout::

    offset  0    1  2  3  4    5    6 ............ L-3   L-2   L-1
           '{'  h3 h2 h1 h0   '}'   payload (UTF-8)       0x0D  0x0A
    L = int(h3h2h1h0, 16) = total frame length, braces and CRLF included; 8 <= L <= 0xFFFF

The declared length, not the first CRLF, ends a frame: a payload may hold CRLF (vector
``payload_with_embedded_crlf``). A peer that miscounts must get an error, never a hang:

* when ``L`` bytes are buffered and they do not end in CRLF, the frame is wrong at once
  (``length_mismatch``); the decoder resynchronises just after the first CRLF it can see, or
  discards input through the next LF;
* when fewer than ``L`` bytes are buffered but the buffer ends in CRLF (the seed's own
  ``{000F}Open A\\r\\n`` is 14 bytes), the frame is *suspect*: the peer has probably finished
  and is waiting. The decoder cannot know that from bytes alone, so the transport calls
  :meth:`BracedFramer.idle` after a short quiet gap with no new bytes; that raises the
  ``length_mismatch`` (see docs/adr/0002).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, Side, _NeedData

HEADER_LEN: Final = 6
MIN_FRAME: Final = 8
MAX_FRAME: Final = 0xFFFF
MAX_PAYLOAD: Final = MAX_FRAME - MIN_FRAME
CRLF: Final = b"\r\n"

_HEX_UPPER: Final = frozenset(b"0123456789ABCDEF")
_HEADER_STRICT: Final = re.compile(rb"\{([0-9A-F]{4})\}")
_HEADER_ANY: Final = re.compile(rb"\{([0-9A-Fa-f]{4})\}")
_HEX_ANY: Final = frozenset(b"0123456789ABCDEFabcdef")

#: labbridge-only reply codes for framing errors (spec 3.1), by error kind.
ERROR_CODES: Final = {
    "length_mismatch": 900,
    "missing_terminator": 900,
    "truncated_header": 901,
    "missing_open_brace": 901,
    "bad_length_digits": 901,
    "missing_close_brace": 901,
    "length_too_small": 901,
    "too_large": 901,
    "frame_timeout": 902,
    "not_utf8": 903,
}


class BracedFrameError(ProtocolError):
    """A braced frame broke a rule; ``kind`` is one of the vector error kinds."""

    @property
    def code(self) -> int:
        """The ``ERROR 9nn`` code a labbridge server answers with."""
        return ERROR_CODES.get(self.kind, 901)

    def reply_text(self) -> str:
        return f"ERROR {self.code:03d} : {self.message}"


def _mismatch(declared: int, actual: int | None) -> BracedFrameError:
    if actual is None:
        msg = (f"length mismatch: header declares {declared} bytes (0x{declared:04X}), "
               "no CRLF at that offset")
    else:
        msg = (f"length mismatch: header declares {declared} bytes (0x{declared:04X}), "
               f"frame is {actual} bytes (0x{actual:04X})")
    return BracedFrameError(msg, kind="length_mismatch")


def _header_error(kind: str, detail: str) -> BracedFrameError:
    return BracedFrameError(f"malformed frame header: {detail}", kind=kind)


@dataclass(frozen=True, slots=True)
class BracedFrame:
    """One decoded frame."""

    payload: str


def encode_braced(payload: str | bytes) -> bytes:
    """Frame ``payload``; raise ``too_large`` if the frame would exceed 0xFFFF bytes."""
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    total = len(data) + MIN_FRAME
    if total > MAX_FRAME:
        raise BracedFrameError(
            f"payload of {len(data)} bytes exceeds the maximum of {MAX_PAYLOAD}",
            side=Side.OURS, kind="too_large")
    return b"{%04X}" % total + data + CRLF


def _parse_length(digits: bytes, strict: bool) -> int | None:
    allowed = _HEX_UPPER if strict else _HEX_ANY
    if len(digits) != 4 or any(b not in allowed for b in digits):
        return None
    return int(digits, 16)


def decode_braced(buf: bytes, *, strict: bool = False, max_frame: int = MAX_FRAME) -> str:
    """Decode exactly one whole frame held in ``buf`` (the vectors' whole-buffer model).

    Checks run in the vectors' ``check_order``; ``strict`` refuses lowercase hex digits.
    """
    if len(buf) < HEADER_LEN:
        raise _header_error("truncated_header", f"{len(buf)} bytes, a header needs 6")
    if buf[0:1] != b"{":
        raise _header_error("missing_open_brace", "frame does not start with '{'")
    length = _parse_length(buf[1:5], strict)
    if length is None:
        raise _header_error("bad_length_digits", f"length {buf[1:5]!r} is not 4 hex digits")
    if buf[5:6] != b"}":
        raise _header_error("missing_close_brace", "no '}' after the 4 length digits")
    if length < MIN_FRAME:
        raise _header_error("length_too_small", f"declared length {length} below minimum 8")
    if length > max_frame:
        raise _header_error("too_large", f"declared length {length} above maximum {max_frame}")
    if len(buf) != length:
        return _raise(_mismatch(length, len(buf)))
    if buf[-2:] != CRLF:
        raise BracedFrameError("frame does not end with CRLF", kind="missing_terminator")
    try:
        return buf[HEADER_LEN:-2].decode("utf-8")
    except UnicodeDecodeError:
        raise BracedFrameError("payload is not UTF-8", kind="not_utf8") from None


def _raise(exc: BracedFrameError) -> str:
    raise exc


class BracedFramer:
    """Incremental decoder and encoder of braced frames, for persistent connections.

    ``next_event()`` returns a :class:`BracedFrame` or :data:`NEED_DATA`, or raises
    :class:`BracedFrameError` after resynchronising (the connection can go on: reply with
    :meth:`BracedFrameError.reply_text` and keep reading).
    """

    def __init__(self, *, max_frame: int = MAX_FRAME, strict: bool = False,
                 max_buffer: int | None = None) -> None:
        if not MIN_FRAME <= max_frame <= MAX_FRAME:
            raise ValueError("max_frame must be within 8..65535")
        self.max_frame = max_frame
        self.strict = strict
        # Room for one whole frame plus the start of the next one.
        self._buf = ReceiveBuffer(max_buffer or 2 * max_frame + 64)
        self._discarding = False

    # -- receiving ---------------------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    @property
    def buffered(self) -> int:
        buf = self._buf
        return len(buf._buf) - buf._start  # len(buf), without a Python-level __len__ call

    @property
    def suspect(self) -> bool:
        """True when a short frame ends in CRLF: call :meth:`idle` after a quiet gap."""
        n = len(self._buf)
        if n < HEADER_LEN + 2 or self._discarding:
            return False
        return self._buf.find(CRLF, n - 2) == n - 2

    def next_event(self) -> BracedFrame | _NeedData:
        buf = self._buf
        if self._discarding:
            lf = buf.find(b"\n")
            if lf < 0:
                buf.clear()
                return NEED_DATA
            buf.skip(lf + 1)
            self._discarding = False
        n = len(buf)
        if n == 0:
            return NEED_DATA
        raw, start = buf.raw()
        if n >= HEADER_LEN:
            m = (_HEADER_STRICT if self.strict else _HEADER_ANY).match(raw, start)
            if m is not None:
                # Fast path: a well-formed header.
                length = int(m.group(1), 16)
                if MIN_FRAME <= length <= self.max_frame:
                    if n < length:
                        return NEED_DATA
                    end = start + length
                    if raw[end - 2] == 0x0D and raw[end - 1] == 0x0A:
                        payload = bytes(raw[start + HEADER_LEN : end - 2])
                        buf.skip(length)
                        try:
                            return BracedFrame(payload.decode("utf-8"))
                        except UnicodeDecodeError:
                            raise BracedFrameError("payload is not UTF-8",
                                                   kind="not_utf8") from None
        if raw[start] != 0x7B:  # '{'
            self._resync_after_newline()
            raise _header_error("missing_open_brace", "frame does not start with '{'")
        allowed = _HEX_UPPER if self.strict else _HEX_ANY
        for i in range(1, min(n, 5)):
            if raw[start + i] not in allowed:
                self._resync_after_newline()
                raise _header_error("bad_length_digits",
                                    f"length {buf.peek(5)[1:]!r} is not 4 hex digits")
        if n < HEADER_LEN:
            return NEED_DATA
        if raw[start + 5] != 0x7D:  # '}'
            self._resync_after_newline()
            raise _header_error("missing_close_brace", "no '}' after the 4 length digits")
        length = int(buf.peek(5)[1:], 16)
        if length < MIN_FRAME:
            self._resync_after_newline()
            raise _header_error("length_too_small", f"declared length {length} below minimum 8")
        if length > self.max_frame:
            self._resync_after_newline()
            raise _header_error("too_large",
                                f"declared length {length} above maximum {self.max_frame}")
        if n < length:
            return NEED_DATA
        crlf = buf.find(CRLF, HEADER_LEN)
        if crlf >= 0:
            # The peer's frame ended at a CRLF other than the declared end: it miscounted.
            buf.skip(crlf + 2)
            raise _mismatch(length, crlf + 2)
        self._resync_after_newline()
        raise _mismatch(length, None)

    def drain(self) -> list[str | BracedFrameError]:
        """Every complete frame's payload (and every framing error), in order.

        The hot path of servers and clients: well-formed frames are cut out of the buffer in
        one pass with no per-frame method calls; anything unusual falls back to
        :meth:`next_event` for that one frame. Errors are returned in their place in the
        sequence, not raised.
        """
        out: list[str | BracedFrameError] = []
        buf = self._buf
        match = (_HEADER_STRICT if self.strict else _HEADER_ANY).match
        max_frame = self.max_frame
        while True:
            if not self._discarding:
                raw, start = buf.raw()
                end_all = len(raw)
                pos = start
                while end_all - pos >= HEADER_LEN:
                    m = match(raw, pos)
                    if m is None:
                        break
                    length = int(m.group(1), 16)
                    if not MIN_FRAME <= length <= max_frame:
                        break
                    end = pos + length
                    if end > end_all:
                        break
                    if raw[end - 2] != 0x0D or raw[end - 1] != 0x0A:
                        break
                    try:
                        out.append(raw[pos + HEADER_LEN : end - 2].decode("utf-8"))
                    except UnicodeDecodeError:
                        out.append(BracedFrameError("payload is not UTF-8", kind="not_utf8"))
                    pos = end
                if pos != start:
                    buf.skip(pos - start)
            try:
                ev = self.next_event()
            except BracedFrameError as exc:
                out.append(exc)
                continue
            if ev is NEED_DATA:
                return out
            assert isinstance(ev, BracedFrame)
            out.append(ev.payload)

    def feed(self, data: bytes | bytearray | memoryview) -> list[str | BracedFrameError]:
        """:meth:`receive_data` then :meth:`drain`, in one call (the same items, the same
        :class:`~labbridge.protocol.base.BufferOverflow`).

        When nothing is buffered, the whole well-formed frames at the start of ``data`` are
        cut from ``data`` itself: a chunk of whole frames (the usual case: one request, one
        read) never passes through the buffer. What follows them takes the general path.
        """
        buf = self._buf
        if buf or self._discarding or len(data) > buf.max_size:
            buf.append(data)
            return self.drain()
        out: list[str | BracedFrameError] = []
        match = (_HEADER_STRICT if self.strict else _HEADER_ANY).match
        max_frame = self.max_frame
        end_all = len(data)
        pos = 0
        while end_all - pos >= HEADER_LEN:
            m = match(data, pos)
            if m is None:
                break
            length = int(m.group(1), 16)
            if not MIN_FRAME <= length <= max_frame:
                break
            end = pos + length
            if end > end_all or data[end - 2] != 0x0D or data[end - 1] != 0x0A:
                break
            try:
                out.append(str(data[pos + HEADER_LEN : end - 2], "utf-8"))
            except UnicodeDecodeError:
                out.append(BracedFrameError("payload is not UTF-8", kind="not_utf8"))
            pos = end
        if pos == end_all:
            return out
        buf.append(data[pos:] if pos else data)
        out.extend(self.drain())
        return out

    def idle(self) -> None:
        """The peer has been quiet: a suspect short frame is a length mismatch (raised)."""
        if not self.suspect:
            return
        n = len(self._buf)
        length = int(self._buf.peek(5)[1:], 16)
        self._buf.clear()
        raise _mismatch(length, n)

    def eof(self) -> None:
        """The peer closed: a partial frame left behind is an error (raised)."""
        if self._discarding or not self._buf:
            self._buf.clear()
            return
        n = len(self._buf)
        head = self._buf.peek(5)
        self._buf.clear()
        length = _parse_length(head[1:], self.strict) if len(head) == 5 else None
        if length is None:
            raise _header_error("truncated_header", f"peer closed after {n} bytes of a header")
        raise _mismatch(length, n)

    def _resync_after_newline(self) -> None:
        lf = self._buf.find(b"\n")
        if lf < 0:
            self._buf.clear()
            self._discarding = True
        else:
            self._buf.skip(lf + 1)

    # -- sending -----------------------------------------------------------------------------
    @staticmethod
    def send(payload: str | bytes) -> bytes:
        return encode_braced(payload)
