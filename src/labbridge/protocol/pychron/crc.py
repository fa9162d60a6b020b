"""Checksums of the Pychron family (spec pychron.md section 6).

* :func:`crc16` -- CRC-16/MODBUS (reflected polynomial 0xA001, init 0xFFFF, no final XOR).
* :func:`crc16_suffix` -- the 4 lowercase hex digits Pychron appends to words and relay
  replies: the register printed low byte first (0xB775 -> ``75b7``).
* :func:`state_checksum` -- the unsigned CRC32 answer of ``GetStateChecksum``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from labbridge.protocol.base import ProtocolError


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS register over ``data`` (``crc16(b"123456789") == 0x4B37``)."""
    crc = 0xFFFF
    table = _TABLE
    for b in bytes(data):
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def text_bytes(text: str) -> bytes:
    """The bytes Pychron's ``computeCRC`` really sums: each code point masked to 8 bits.

    For ASCII this is the UTF-8 encoding; for other text it equals Latin-1 (vector
    ``crc16.non_ascii``), which is what a real peer computes, so labbridge does the same.
    """
    return bytes(ord(ch) & 0xFF for ch in text)


def crc16_suffix(text: str) -> str:
    """Pychron's printed CRC16 of ``text``: ``'%04x'`` of the register, bytes swapped."""
    reg = crc16(text_bytes(text))
    return f"{reg & 0xFF:02x}{reg >> 8:02x}"


def append_crc16(text: str) -> str:
    """``text`` followed by its CRC16 suffix, no separator (``A0,B1,C0`` -> ``A0,B1,C03446``)."""
    return text + crc16_suffix(text)


class ChecksumMismatch(ProtocolError, ValueError):
    """A CRC16 suffix did not match its text (the peer's error)."""

    kind = "checksum_mismatch"

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"CRC16 mismatch: expected {expected}, got {got}")
        self.expected = expected
        self.got = got


def split_crc16(word: str) -> str:
    """Verify and strip a trailing CRC16 suffix; raise :class:`ChecksumMismatch` if wrong."""
    if len(word) < 4:
        raise ChecksumMismatch("4 hex digits", word)
    body, got = word[:-4], word[-4:]
    expected = crc16_suffix(body)
    if got.lower() != expected:
        raise ChecksumMismatch(expected, got)
    return body


def state_checksum(state_strs: Iterable[str]) -> int:
    """Unsigned CRC32 (zlib) over the concatenated ``state_str`` values (spec 6.5)."""
    return zlib.crc32("".join(state_strs).encode("utf-8")) & 0xFFFFFFFF


def checksums_equal(ours: int, theirs: int) -> bool:
    """Compare CRC32 values modulo 2**32 (a Python 2 peer sends signed values)."""
    return (ours - theirs) % (1 << 32) == 0
