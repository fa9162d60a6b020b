"""Golden vectors (tests/vectors/pymodaq.json): G1 both dialects and G3, byte for byte, both ways,
whole, one byte at a time, and glued together (spec pymodaq.md §3, §5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.pymodaq.codec import G3Codec
from labbridge.protocol.pymodaq.g1 import (
    G1Codec,
    array_chunks,
    encode_string,
    list_chunks,
    scalar_chunks,
)
from labbridge.protocol.pymodaq.g3 import G3Framer, G3Object, encode_message
from labbridge.protocol.pymodaq.messages import (
    ClientType,
    Dialect,
    Done,
    Hello,
    MoveAbs,
    PositionIs,
    Role,
)
from labbridge.protocol.pymodaq.objects import (
    DataToExport,
    DataWithAxes,
    data_actuator,
    data_from_plugins,
    data_to_export,
)
from tests.conftest import load_vectors

V = load_vectors("pymodaq.json")
G1B_CASES = V["g1"]["cases"]
G1A_CASES = V["g1"]["variant_1_6_0_to_2_0_0"]["cases"]
G3_CASES = V["g3"]["cases"]
G3_SEQ = V["g3"]["sequences"]


def _array(item: dict[str, Any]) -> np.ndarray:
    return np.array(item["values"], dtype=item["dtype"]).reshape(item["shape"])


def _encode_items(items: list[dict[str, Any]], dialect: Dialect) -> bytes:
    out: list[Any] = []
    for it in items:
        if it["kind"] == "string":
            out.append(encode_string(it["value"]))
        elif it["kind"] == "scalar":
            out += scalar_chunks(it["value"], it["dtype"])
        elif it["kind"] == "array":
            out += array_chunks(_array(it), dialect)
        else:
            out += list_chunks([_array(e) for e in it["elements"]], dialect)
    return b"".join(out)


@pytest.mark.parametrize("case", G1B_CASES, ids=[c["name"] for c in G1B_CASES])
def test_g1b_encode(case):
    data = _encode_items(case["items"], Dialect.G1B)
    assert data.hex() == case["hex"]
    assert len(data) == case["length"]


@pytest.mark.parametrize("case", G1A_CASES, ids=[c["name"] for c in G1A_CASES])
def test_g1a_encode(case):
    assert _encode_items(case["items"], Dialect.G1A).hex() == case["hex"]


def _feed(codec: Any, data: bytes, step: int | None) -> list[object]:
    out: list[object] = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for ch in chunks:
        codec.receive_data(ch)
        while (ev := codec.next_event()) is not NEED_DATA:
            out.append(ev)
    return out


@pytest.mark.parametrize("step", [None, 1, 7])
@pytest.mark.parametrize("dialect_cases", ["g1b", "g1a"])
def test_g1_done_decodes_in_server_role(dialect_cases, step):
    case = (G1B_CASES if dialect_cases == "g1b" else G1A_CASES)[-1]
    assert case["name"] == "done_then_list_of_two_arrays"
    wire = encode_string("GRABBER") + bytes.fromhex(case["hex"])
    codec = G1Codec(Role.SERVER)
    events = _feed(codec, wire + bytes.fromhex(case["hex"]), step)  # glued twice
    assert events[0] == Hello(ClientType.GRABBER)
    assert len(events) == 3
    for done in events[1:]:
        assert isinstance(done, Done)
        want = [_array(e) for e in case["items"][1]["elements"]]
        assert [a.dtype.str for a in done.arrays] == [w.dtype.str for w in want]
        for got, w in zip(done.arrays, want, strict=True):
            np.testing.assert_array_equal(got, w)
    assert codec.latched is (Dialect.G1B if dialect_cases == "g1b" else Dialect.G1A)
    codec.receive_eof()  # clean end: nothing pending


def test_g1_position_and_move_vectors_decode():
    c = {x["name"]: x for x in G1B_CASES}
    server = G1Codec(Role.SERVER)
    ev = _feed(server, encode_string("ACTUATOR")
               + bytes.fromhex(c["position_is_then_scalar_12_5"]["hex"]), 1)
    assert isinstance(ev[1], PositionIs) and ev[1].value == 12.5 and ev[1].dtype == "<f8"
    client = G1Codec(Role.CLIENT)
    ev = _feed(client, bytes.fromhex(c["move_abs_then_scalar_12_5"]["hex"]), 1)
    assert isinstance(ev[0], MoveAbs) and ev[0].value == 12.5
    # and the codec produces the same bytes for the same messages
    assert server.send(MoveAbs(12.5)).hex() == c["move_abs_then_scalar_12_5"]["hex"]
    assert client.send(PositionIs(12.5)).hex() == c["position_is_then_scalar_12_5"]["hex"]


def _value_of(case: dict[str, Any]) -> Any:
    v = case["value"]
    if case["type_tag"] == "ndarray":
        return _array(v)
    if case["type_tag"] == "DataActuator":
        d = data_actuator(v["data"][0][0], units=v["units"], name=v["name"],
                          timestamp=v["timestamp"])
        return d
    if case["type_tag"] == "DataToExport":
        inner = v["data"][0]
        dfp = data_from_plugins(inner["name"], [_array(a) for a in inner["data"]],
                                timestamp=inner["timestamp"])
        return data_to_export(v["name"], [dfp], timestamp=v["timestamp"])
    return v


@pytest.mark.parametrize("case", G3_CASES, ids=[c["name"] for c in G3_CASES])
def test_g3_encode_from_values(case):
    """Our encoder builds the vector bytes from the vector's values."""
    data = encode_message(_value_of(case))
    assert data.hex() == case["hex"]
    assert len(data) == case["length"]


@pytest.mark.parametrize("step", [None, 1, 5])
def test_g3_all_cases_decode_and_reencode_glued(step):
    wire = b"".join(bytes.fromhex(c["hex"]) for c in G3_CASES)
    f = G3Framer()
    events = _feed(f, wire, step)
    assert len(events) == len(G3_CASES)
    for ev, case in zip(events, G3_CASES, strict=True):
        assert isinstance(ev, G3Object)
        assert encode_message(ev.obj).hex() == case["hex"]
        assert ev.nbytes == case["length"] - 4
    f.receive_eof()


def test_g3_decoded_values_match():
    objs = {c["name"]: G3Framer() for c in G3_CASES}
    got = {}
    for c in G3_CASES:
        f = objs[c["name"]]
        f.receive_data(bytes.fromhex(c["hex"]))
        ev = f.next_event()
        assert isinstance(ev, G3Object)
        got[c["name"]] = ev.obj
    assert got["str_GRABBER"] == "GRABBER"
    assert got["float_12_5"] == 12.5 and isinstance(got["float_12_5"], float)
    assert got["int_7"] == 7 and isinstance(got["int_7"], int)
    assert got["bool_true"] is True
    assert got["list_float_str"] == [1.0, "a"]
    np.testing.assert_array_equal(got["ndarray_2x3_uint16"], [[1, 2, 3], [4, 5, 6]])
    da = got["DataActuator_pos_12_5_mm"]
    assert isinstance(da, DataWithAxes) and da.cls_name == "DataActuator"
    assert (da.name, da.value, da.units, da.timestamp) == ("pos", 12.5, "mm", 1700000000.0)
    dte = got["DataToExport_one_DataFromPlugins_4x5_uint16"]
    assert isinstance(dte, DataToExport) and dte.name == "viewer"
    dfp = dte.data[0]
    assert (dfp.cls_name, dfp.name, dfp.dim, dfp.origin) == ("DataFromPlugins", "cam", "Data2D",
                                                             "viewer")
    assert dict(dfp.extra) == {"do_plot": True, "do_save": True}
    np.testing.assert_array_equal(dfp.data[0], np.arange(20).reshape(4, 5))


@pytest.mark.parametrize("seq", G3_SEQ, ids=[s["name"] for s in G3_SEQ])
def test_g3_sequences(seq):
    """Sequences are the concatenation of their parts, and the message codec reads them."""
    by_name = {c["name"]: c["hex"] for c in G3_CASES}
    assert seq["hex"] == "".join(by_name[p] for p in seq["parts"])
    wire = bytes.fromhex(seq["hex"])
    if seq["name"] == "move_abs_with_DataActuator":
        ev = _feed(G3Codec(Role.CLIENT), wire, 3)
        assert isinstance(ev[0], MoveAbs) and ev[0].value == 12.5 and ev[0].units == "mm"
        assert G3Codec(Role.SERVER).send(ev[0]).hex() == seq["hex"]  # data object kept
    elif seq["name"] == "done_with_DataToExport":
        server = G3Codec(Role.SERVER)
        ev = _feed(server, bytes.fromhex(by_name["str_GRABBER"]) + wire, 3)
        assert ev[0] == Hello(ClientType.GRABBER)
        assert isinstance(ev[1], Done) and ev[1].dte is not None
        np.testing.assert_array_equal(ev[1].arrays[0], np.arange(20).reshape(4, 5))
        assert G3Codec(Role.CLIENT).send(ev[1]).hex() == seq["hex"]
    else:
        ev = _feed(G3Codec(Role.SERVER), wire, 1)
        assert ev == [Hello(ClientType.GRABBER)]
        assert G3Codec(Role.CLIENT).send(Hello(ClientType.GRABBER)).hex() == seq["hex"]


def test_no_event_before_a_whole_message():
    wire = bytes.fromhex(G3_CASES[-1]["hex"])
    f = G3Framer()
    f.receive_data(wire[:-1])
    assert f.next_event() is NEED_DATA
    f.receive_data(wire[-1:])
    assert isinstance(f.next_event(), G3Object)
