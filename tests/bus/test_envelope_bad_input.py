"""Hostile telemetry input that once escaped as a non-protocol exception (and so killed the bus
subscriber): deeply nested JSON and degenerate array dtypes must all be a ProtocolError."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.telemetry import legacy
from labbridge.protocol.telemetry.envelope import (
    MAGIC,
    META,
    VERSION,
    Encoding,
    EnvelopeEncoder,
    decode,
    decode_meta,
    decode_payload,
)

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 100_000 + b"1" + b"}" * 100_000


def _meta(enc: Encoding, dtype: str = "", shape: tuple[int, ...] = ()) -> bytes:
    desc = b""
    if enc is Encoding.NDARRAY:
        d = dtype.encode("ascii")
        desc = bytes([len(d)]) + d + bytes([len(shape)]) + struct.pack(f">{len(shape)}Q", *shape)
    return META.pack(MAGIC, VERSION, int(enc), 7, 1, 1.5, len(desc), 0) + desc


@pytest.mark.parametrize("payload", [DEEP, DEEP_OBJECT], ids=["arrays", "objects"])
def test_deeply_nested_json_payload_is_a_protocol_error(payload):
    frames = [b"lab.dev.sig", payload, _meta(Encoding.JSON)]
    with pytest.raises(ProtocolError) as ei:  # the fast path (all bytes frames)
        decode(frames)
    assert ei.value.kind == "bad_payload" and ei.value.side is Side.PEER
    with pytest.raises(ProtocolError) as ei:  # the full path (memoryview frames)
        decode([memoryview(f) for f in frames])
    assert ei.value.kind == "bad_payload"
    with pytest.raises(ProtocolError):
        decode_payload(decode_meta(frames[2]), bytearray(payload))


@pytest.mark.parametrize("tag", sorted(legacy.JSON_TAGS))
def test_deeply_nested_legacy_json_is_a_protocol_error(tag):
    with pytest.raises(ProtocolError) as ei:
        legacy.parse(tag.encode() + b" " + DEEP)
    assert ei.value.kind == "bad_payload"


@pytest.mark.parametrize("dtype,shape,payload", [
    ("(2,)<f8", (), b"\x00" * 16),      # subarray dtype: frombuffer adds a dimension
    ("(2,)<f8", (3,), b"\x00" * 48),
    ("(0,)f8", (2,), b""),             # subarray of itemsize 0
    ("S0", (0,), b""),                 # itemsize 0: frombuffer refuses it
    ("S0", (5,), b""),
    ("V0", (), b""),
    ("<U0", (1,), b""),
])
def test_degenerate_array_dtypes_are_protocol_errors(dtype, shape, payload):
    frames = [b"lab.dev.sig", payload, _meta(Encoding.NDARRAY, dtype, shape)]
    with pytest.raises(ProtocolError) as ei:
        decode(frames)
    assert ei.value.side is Side.PEER


def test_good_arrays_still_decode():
    enc = EnvelopeEncoder(7)
    for a in (np.arange(6.0).reshape(2, 3), np.zeros((0, 4), dtype="<i2"), np.array(1.5),
              np.array([b"ab", b"cd"], dtype="S2")):
        frames = [bytes(f) if not isinstance(f, np.ndarray) else f.tobytes()
                  for f in enc.encode("lab.dev.arr", a, 1.0)]
        got = decode(frames).value
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
