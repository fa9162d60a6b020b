"""The dtype gate of the PyMoDAQ codecs (_wire.parse_dtype / looks_like_dtype) with hostile
strings: every refusal is a fatal ProtocolError, never numpy's TypeError (spec pymodaq.md §3.1)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.pymodaq._wire import looks_like_dtype, parse_dtype
from labbridge.protocol.pymodaq.g3 import G3Framer

BAD = ["<f8\n", "f8\n", "|b1\n", "<f\u0668", "<i\u0664", "\n<f8", "<f8 ", " <f8", "<f8\x00", ""]


@pytest.mark.parametrize("text", BAD, ids=repr)
def test_bad_dtype_strings_are_fatal_protocol_errors(text):
    assert not looks_like_dtype(text)
    with pytest.raises(ProtocolError) as ei:
        parse_dtype(text)
    assert ei.value.kind == "bad_dtype" and ei.value.fatal and ei.value.side is Side.PEER


def test_gate_and_detection_agree_on_every_near_miss():
    sizes = [str(n) for n in range(100)] + [f"0{n}" for n in range(10)]
    for order, kind, size, tail in itertools.product(["", "<", ">", "|", "="], "biufcSUVO",
                                                     sizes, ["", "\n", "\r\n"]):
        text = f"{order}{kind}{size}{tail}"
        try:
            dt = parse_dtype(text)
        except ProtocolError as exc:
            assert exc.fatal and not looks_like_dtype(text), text
        else:
            assert looks_like_dtype(text) and not tail, text
            assert dt.kind == kind and dt.itemsize == int(size), text


def _str(s: bytes) -> bytes:
    return len(s).to_bytes(4, "big") + s


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("body", [
    _str(b"ndarray") + _str(b"<f8\n") + (8).to_bytes(4, "big") + (1).to_bytes(4, "big")
    + (1).to_bytes(4, "big") + b"\x00" * 8,
    _str(b"float") + _str(b"<f8\n") + (8).to_bytes(4, "big") + b"\x00" * 8,
    _str(b"int") + _str("<i\u0668".encode()) + (8).to_bytes(4, "big") + b"\x00" * 8,
], ids=["ndarray", "float", "int"])
def test_g3_objects_with_a_newline_dtype_are_fatal(body):
    f = G3Framer()
    f.receive_data(_frame(body))
    with pytest.raises(ProtocolError) as ei:
        f.next_event()
    assert ei.value.kind == "bad_dtype" and ei.value.fatal


def test_good_dtype_strings_still_parse():
    for text in ("<f8", ">u2", "|b1", "=i4", "c16", "<f2"):
        assert looks_like_dtype(text)
        assert parse_dtype(text) == np.dtype(text)
