"""Legacy relay frames: CommandRepeater -> CommandProcessor (spec sections 3.3, 3.4, 10).

Request (F-RELAY)::

    "%04X" % len(P) + P          P = "<process_type>|<request text>|<sender>"
    (the 4 hex digits count the payload only)

Reply (F-CRC)::

    "%04X" % (len(D) + 8) + D + crc16(D)
    (the 4 hex digits count prefix, data and the 4-character CRC)

The decoder also accepts the 2013 ``%02X`` request form and the seed's bare ``type|request``
(ended by CR/LF, a quiet gap or EOF). An external client of the legacy RemoteHardwareServer
reads the reply frame followed by ``\\n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from labbridge.protocol.base import NEED_DATA, ProtocolError, ReceiveBuffer, Side, _NeedData
from labbridge.protocol.pychron.crc import crc16_suffix, split_crc16

PROCESS_TYPES: Final = ("Extractionline", "Diode", "Synrad", "CO2", "UV", "Hardware", "test",
                        "System")
MAX_RELAY_FRAME: Final = 0xFFFF

_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")


class RelayError(ProtocolError):
    """A relay frame broke a rule."""


@dataclass(frozen=True, slots=True)
class RelayRequest:
    """One relayed request. ``sender`` is None when the frame carried none (seed form)."""

    process_type: str
    request: str
    sender: str | None = None

    @property
    def handler_type(self) -> str:
        """The processor's handler key; the seed's ``System`` is ``Extractionline``."""
        return "Extractionline" if self.process_type == "System" else self.process_type


def encode_relay_request(req: RelayRequest) -> bytes:
    payload = f"{req.process_type}|{req.request}|{req.sender}".encode()
    if len(payload) > MAX_RELAY_FRAME:
        raise RelayError(f"relay payload of {len(payload)} bytes is too large", side=Side.OURS,
                         kind="too_large")
    return b"%04X" % len(payload) + payload


def _parse_payload(payload: str, with_sender: bool) -> RelayRequest:
    parts = payload.split("|")
    if with_sender and len(parts) >= 3:
        # The real processor uses the last three fields when there are more.
        ptype, data, sender = parts[-3], parts[-2], parts[-1]
        if len(parts) > 3:
            ptype = parts[0]
            data = "|".join(parts[1:-1])
        return RelayRequest(ptype, data, None if sender == "None" else sender)
    if len(parts) >= 2:
        return RelayRequest(parts[0], "|".join(parts[1:]), None)
    raise RelayError(f"relay request {payload!r} has no 'type|' prefix", kind="malformed")


class RelayRequestDecoder:
    """Incremental decoder of relay requests on a persistent IPC stream."""

    def __init__(self, max_size: int = MAX_RELAY_FRAME + 16) -> None:
        self._buf = ReceiveBuffer(max_size)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    @property
    def buffered(self) -> int:
        """Bytes of a request not yet complete."""
        return len(self._buf)

    def next_event(self) -> RelayRequest | _NeedData:
        buf = self._buf
        # Skip stray line ends between frames.
        while buf and buf[0] in (0x0D, 0x0A):
            buf.skip(1)
        n = len(buf)
        if n == 0:
            return NEED_DATA
        head = buf.peek(5)
        if len(head) >= 5 and all(b in _HEX for b in head[:4]) and chr(head[4]).isalpha():
            length = int(head[:4], 16)
            if n < 4 + length:
                return NEED_DATA
            raw = buf.take(4 + length)[4:]
            return _parse_payload(raw.decode("utf-8", "replace"), True)
        if len(head) >= 3 and all(b in _HEX for b in head[:2]) and chr(head[2]).isalpha():
            # 2013 form; the type names never begin with two hex digits, so no collision
            # with the 4-digit form (spec 3.3). Only when a 4-digit reading is impossible.
            if not (len(head) < 5 and all(b in _HEX for b in head[: len(head)])):
                length = int(head[:2], 16)
                if n < 2 + length:
                    return NEED_DATA
                raw = buf.take(2 + length)[2:]
                return _parse_payload(raw.decode("utf-8", "replace"), True)
        if len(head) < 5 and all(b in _HEX for b in head):
            return NEED_DATA
        # Bare seed form: ends at CR/LF (or idle / EOF).
        end = -1
        for term in (b"\r", b"\n"):
            pos = buf.find(term)
            if pos >= 0 and (end < 0 or pos < end):
                end = pos
        if end < 0:
            return NEED_DATA
        raw = buf.take(end + 1)[:-1]
        return _parse_payload(raw.decode("utf-8", "replace"), False)

    def flush(self) -> RelayRequest | None:
        """Quiet gap or EOF: whatever is buffered is one bare request."""
        if not self._buf:
            return None
        raw = self._buf.take(len(self._buf)).strip()
        if not raw:
            return None
        return _parse_payload(raw.decode("utf-8", "replace"), False)


def encode_crc_reply(data: str) -> bytes:
    """F-CRC reply frame: ``%04X`` total length + data + CRC16 (``000AOK75b7``)."""
    body = data.encode("utf-8")
    total = len(body) + 8
    if total > MAX_RELAY_FRAME:
        raise RelayError(f"reply of {len(body)} bytes is too large", side=Side.OURS,
                         kind="too_large")
    return b"%04X" % total + body + crc16_suffix(data).encode("ascii")


@dataclass(frozen=True, slots=True)
class CrcReply:
    data: str


class CrcReplyDecoder:
    """Incremental decoder of F-CRC reply frames (optionally followed by ``\\n``)."""

    def __init__(self, max_size: int = MAX_RELAY_FRAME + 16) -> None:
        self._buf = ReceiveBuffer(max_size)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf.append(data)

    def next_event(self) -> CrcReply | _NeedData:
        buf = self._buf
        while buf and buf[0] in (0x0D, 0x0A):
            buf.skip(1)
        if len(buf) < 4:
            return NEED_DATA
        head = buf.peek(4)
        if not all(b in _HEX for b in head):
            bad = buf.peek(16)
            buf.clear()
            raise RelayError(f"reply frame does not start with 4 hex digits: {bad!r}",
                             kind="malformed", fatal=True)
        total = int(head, 16)
        if total < 8:
            buf.clear()
            raise RelayError(f"reply frame declares {total} bytes, minimum is 8",
                             kind="length_too_small", fatal=True)
        if len(buf) < total:
            return NEED_DATA
        raw = buf.take(total).decode("utf-8", "replace")
        return CrcReply(split_crc16(raw[4:]))


def decode_crc_reply(frame: bytes) -> str:
    """Decode one whole F-CRC frame (a trailing ``\\n`` is allowed)."""
    dec = CrcReplyDecoder()
    dec.receive_data(frame)
    ev = dec.next_event()
    if ev is NEED_DATA:
        raise RelayError("truncated reply frame", kind="truncated")
    assert isinstance(ev, CrcReply)
    rest = dec._buf.take(len(dec._buf)).strip(b"\r\n")
    if rest:
        raise RelayError(f"{len(rest)} unexpected bytes after the reply frame", kind="trailing")
    return ev.data
