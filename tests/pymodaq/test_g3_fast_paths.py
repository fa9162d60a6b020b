"""The G3 decoder's fast paths (known type tags matched as bytes, one-element scalars read with
struct, dimensions in one unpack, fields checked by exact type first) decode what the general
path decodes and refuse what it refuses, with the same errors (docs/adr/0200).

The bytes are written here by hand from the layout in src/labbridge/protocol/pymodaq/g3.py's
docstring (u32 big-endian lengths; scalars: STR dtype | u32 n | raw), not by our encoder.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from labbridge.protocol.base import ProtocolError
from labbridge.protocol.pymodaq.g3 import decode_object


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack(">I", len(b)) + b


def scalar(tag: str, dtype: str, raw: bytes) -> bytes:
    return s(tag) + s(dtype) + struct.pack(">I", len(raw)) + raw


@pytest.mark.parametrize(("body", "want"), [
    (scalar("float", "<f8", struct.pack("<d", 2.5)), 2.5),
    (scalar("int", "<i8", struct.pack("<q", -7)), -7),
    (scalar("bool", "|b1", b"\x01"), True),
    (scalar("bool", "|b1", b"\x00"), False),
    (scalar("bool", "|b1", b"\x02"), True),  # numpy reads any non-zero byte as True
    # not the fast path: other dtypes, more than one element (the first is taken)
    (scalar("float", ">f8", struct.pack(">d", 2.5)), 2.5),
    (scalar("float", "<f4", struct.pack("<f", 0.1)), float(np.float32(0.1))),
    (scalar("int", "<u8", struct.pack("<Q", 2**64 - 1)), 2**64 - 1),
    (scalar("float", "<f8", struct.pack("<dd", 1.0, 2.0)), 1.0),
    (scalar("complex", "<c16", struct.pack("<dd", 1.0, -2.0)), 1 - 2j),
])
def test_scalars_decode_as_numpy_would(body: bytes, want: object) -> None:
    got = decode_object(body)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("body", [
    scalar("float", "<f8", b"\x00" * 4),  # fewer bytes than one element
    scalar("float", "<f8", b"\x00" * 12),  # not a whole number of elements
    scalar("float", "<x8", b"\x00" * 8),  # not a dtype
    s("float") + s("<f8") + struct.pack(">I", 8) + b"\x00" * 4,  # frame ends inside it
])
def test_bad_scalars_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_object(body)
    assert ei.value.fatal


def test_a_tag_longer_than_max_string_is_refused_even_when_known() -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_object(s("str") + s("abc"), max_string=2)
    assert ei.value.kind == "too_large" and "type tag of 3 bytes" in str(ei.value)


@pytest.mark.parametrize(("tag", "kind"), [(b"\xff\xfe", "bad_string"), (b"strx", "unknown_type"),
                                           (b"st", "unknown_type")])
def test_unknown_and_undecodable_tags(tag: bytes, kind: str) -> None:
    with pytest.raises(ProtocolError) as ei:
        decode_object(s(tag) + b"\x00" * 8)
    assert ei.value.kind == kind


def test_array_dimensions_and_truncated_dimensions() -> None:
    raw = np.arange(6, dtype="<u2").tobytes()
    body = s("ndarray") + s("<u2") + struct.pack(">III", 12, 2, 2) + struct.pack(">I", 3) + raw
    got = decode_object(body)
    assert got.shape == (2, 3) and got.tolist() == [[0, 1, 2], [3, 4, 5]]
    zero_d = s("ndarray") + s("<f8") + struct.pack(">II", 8, 0) + struct.pack("<d", 4.0)
    assert decode_object(zero_d).shape == (1,)  # 0-d arrays come out 1-d (np.atleast_1d)
    with pytest.raises(ProtocolError) as ei:  # ndim 3 but only one dimension in the frame
        decode_object(s("ndarray") + s("<u2") + struct.pack(">III", 12, 3, 2))
    assert ei.value.kind == "length_mismatch" and "array dimension" in str(ei.value)


def _dwa(name: bytes) -> bytes:
    """A DataFromPlugins with one 1-element array; ``name`` is the OBJ put as its name."""
    nothing = s("list") + struct.pack(">I", 0)
    arr = s("ndarray") + s("<f8") + struct.pack(">III", 8, 1, 1) + struct.pack("<d", 1.0)
    return (s("DataFromPlugins") + scalar("float", "<f8", struct.pack("<d", 5.0)) + name
            + s("str") + s("raw") + s("str") + s("Data0D") + s("str") + s("uniform")
            + s("list") + struct.pack(">I", 1) + arr + s("str") + s("")
            + s("list") + struct.pack(">I", 1) + s("str") + s("CH00") + s("str") + s("o")
            + nothing + nothing + s("NoneType") + nothing)


def test_data_with_axes_fields_are_checked() -> None:
    d = decode_object(_dwa(s("str") + s("cam")))
    assert (d.name, d.source, d.dim, d.labels, d.timestamp) == ("cam", "raw", "Data0D",
                                                                ("CH00",), 5.0)
    assert d.data[0].tolist() == [1.0] and d.errors == () and d.nav_indexes == ()
    with pytest.raises(ProtocolError) as ei:
        decode_object(_dwa(scalar("int", "<i8", struct.pack("<q", 3))))
    assert ei.value.kind == "bad_object" and "DataFromPlugins.name: expected str, got int" \
        in str(ei.value)
