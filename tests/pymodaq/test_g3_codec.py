"""G3 codec beyond the vectors: every type, byte orders, big frames without copies, and bad
input (unknown tag, too long, truncated, garbage) (spec pymodaq.md §5, §9)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labbridge.protocol.base import NEED_DATA, ProtocolError, Side
from labbridge.protocol.pymodaq._wire import BIG_THRESHOLD, GROW_CHUNK
from labbridge.protocol.pymodaq.codec import G3Codec
from labbridge.protocol.pymodaq.g3 import (
    G3Framer,
    G3Object,
    decode_object,
    encode_chunks,
    encode_message,
    encode_object,
)
from labbridge.protocol.pymodaq.messages import (
    ClientType,
    Done,
    GetPosition,
    Hello,
    Infos,
    InfoXml,
    MoveDone,
    Role,
    SendData,
    SetInfo,
    Unknown,
)
from labbridge.protocol.pymodaq.objects import Axis, ParameterWithPath, data_from_plugins


def roundtrip(obj):
    f = G3Framer()
    f.receive_data(encode_message(obj))
    ev = f.next_event()
    assert isinstance(ev, G3Object)
    assert f.next_event() is NEED_DATA
    return ev.obj


@pytest.mark.parametrize("value", [None, "", "héllo", b"", b"\x00\x01", 0, -(2**63), 2**63 - 1,
                                   1.5, float("inf"), True, False, 1 + 2j, [], [1, "a", None],
                                   (1, 2.0), {"a": 1, "b": [1, 2]}, {1: "x"}])
def test_base_types_roundtrip(value):
    got = roundtrip(value)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<u2", ">u2", "|u1", "|i1", "<i4", ">i8",
                                   "<f4", "<f2", "<c8", ">c16", "|b1", "<u8"])
def test_arrays_any_dtype_and_byte_order(dtype):
    a = (np.arange(12) % 2 == 0) if dtype == "|b1" else np.arange(12)
    a = np.asarray(a).astype(dtype).reshape(3, 4)
    got = roundtrip(a)
    assert got.dtype.str == np.dtype(dtype).str
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable


def test_fortran_order_is_sent_in_c_order():
    a = np.asfortranarray(np.arange(6, dtype="<u2").reshape(2, 3))
    data = encode_message(a)
    assert data.endswith(np.arange(6, dtype="<u2").tobytes())
    np.testing.assert_array_equal(roundtrip(a), a)


def test_numpy_scalars_are_converted():
    assert roundtrip(np.float64(2.5)) == 2.5
    assert encode_message(np.int64(3)) == encode_message(3)
    assert encode_message(np.bool_(True)) == encode_message(True)


def test_structured_dtype_refused_on_our_side():
    a = np.zeros(2, dtype=[("x", "<f8"), ("y", "<i4")])
    with pytest.raises(ProtocolError) as ei:
        encode_message(a)
    assert ei.value.side is Side.OURS


def test_unencodable_object_refused():
    with pytest.raises(ProtocolError) as ei:
        encode_message(object())
    assert ei.value.side is Side.OURS


def test_axis_and_parameter_with_path():
    ax = roundtrip(Axis("x", "um", np.array([0.0, 1.0]), index=1))
    assert (ax.label, ax.units, ax.index) == ("x", "um", 1)
    assert len(encode_message(Axis("x", "um", np.array([0.0, 1.0]), index=1))) == 135  # §5.1
    p = roundtrip(ParameterWithPath(("a", "b"), b"<x/>"))
    assert p == ParameterWithPath(("a", "b"), b"<x/>")


def test_dict_vector_size():
    assert len(encode_message({"a": 1})) == 62  # §5.1


def test_big_frame_is_one_buffer_and_arrays_are_views_not_copies():
    frame = np.arange(480 * 640, dtype="<u2").reshape(480, 640)
    dfp = data_from_plugins("cam", [frame])
    wire = encode_message(dfp)
    f = G3Framer()
    f.receive_data(wire[:100])
    assert f.next_event() is NEED_DATA
    assert f.pending_big == len(wire) - 4  # one buffer for the whole frame...
    assert f.allocated_big == min(GROW_CHUNK, len(wire) - 4)  # allocated in steps (issue 13)
    # the zero-copy path: the kernel would write straight into this buffer
    rest = memoryview(wire)[100:]
    while len(rest):
        buf = f.get_buffer(-1)
        n = min(len(buf), len(rest), 10000)
        buf[:n] = rest[:n]
        f.buffer_updated(n)
        rest = rest[n:]
    ev = f.next_event()
    assert isinstance(ev, G3Object)
    got = ev.obj.data[0]
    np.testing.assert_array_equal(got, frame)
    assert got.flags.writeable
    # the array's memory is the frame buffer itself, not a copy of it
    owner = got
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    assert isinstance(owner, memoryview)
    assert isinstance(owner.obj, bytearray) and len(owner.obj) == len(wire) - 4


def test_encode_chunks_do_not_copy_large_arrays():
    frame = np.ones((512, 512), dtype="<u2")
    chunks = encode_chunks(frame)
    big = [c for c in chunks if len(c) >= BIG_THRESHOLD]
    assert len(big) == 1 and isinstance(big[0], memoryview)
    assert np.shares_memory(np.frombuffer(big[0], dtype="<u2"), frame)
    assert b"".join(chunks) == encode_message(frame)


# --- bad input ---------------------------------------------------------------------------------

def _frame(obj_bytes: bytes) -> bytes:
    return len(obj_bytes).to_bytes(4, "big") + obj_bytes


def test_unknown_type_tag_is_fatal_and_named():
    f = G3Framer()
    f.receive_data(_frame(b"\x00\x00\x00\x01a" + b"\x00" * 8))  # real codec: silently NoneType
    with pytest.raises(ProtocolError) as ei:
        f.next_event()
    assert ei.value.kind == "unknown_type" and "'a'" in str(ei.value) and ei.value.fatal
    with pytest.raises(ProtocolError):  # stays failed: the stream cannot be trusted
        f.next_event()


def test_length_beyond_maximum_is_refused_from_the_header():
    f = G3Framer(max_message=1000)
    f.receive_data((1001).to_bytes(4, "big"))
    with pytest.raises(ProtocolError) as ei:
        f.next_event()
    assert ei.value.kind == "too_large"
    assert f.pending_big == 0  # nothing was allocated for it


def test_truncated_frame_at_eof():
    wire = encode_message("move_abs")
    f = G3Framer()
    f.receive_data(wire[:-3])
    assert f.next_event() is NEED_DATA
    with pytest.raises(ProtocolError) as ei:
        f.receive_eof()
    assert ei.value.kind == "truncated"


def test_truncated_big_frame_at_eof():
    wire = encode_message(np.zeros(100_000, dtype="u1"))
    f = G3Framer()
    f.receive_data(wire[: len(wire) // 2])
    assert f.next_event() is NEED_DATA
    with pytest.raises(ProtocolError):
        f.receive_eof()


def test_clean_eof_between_frames():
    f = G3Framer()
    f.receive_data(encode_message("a") * 2)
    assert isinstance(f.next_event(), G3Object)
    assert isinstance(f.next_event(), G3Object)
    f.receive_eof()


@pytest.mark.parametrize("body", [
    b"\x00\x00\x00\x03str\x00\x00\x00\x09abc",                      # string overruns the frame
    b"\x00\x00\x00\x03str\x00\x00\x00\x01ab",                       # bytes left after the object
    b"\x00\x00\x00\x04list\xff\xff\xff\xff" + b"\x00" * 8,          # impossible item count
    b"\x00\x00\x00\x07ndarray\x00\x00\x00\x03<f8\x00\x00\x00\x08\x00\x00\x00\x01\x00\x00\x00\x02"
    + b"\x00" * 8,                                                  # shape/nbytes mismatch
    b"\x00\x00\x00\x07ndarray\x00\x00\x00\x03O16\x00\x00\x00\x00\x00\x00\x00\x00",  # bad dtype
    b"\x00\x00\x00\x05float\x00\x00\x00\x03<f8\x00\x00\x00\x04\x00\x00\x00\x00",  # short scalar
    b"\x00\x00\x00\x03str\x00\x00\x00\x02\xff\xfe",                 # not UTF-8
    b"\x00\x00\x00\x0cDataActuator\x00\x00\x00\x03str\x00\x00\x00\x01x",  # wrong field type
])
def test_malformed_objects_are_fatal(body):
    f = G3Framer()
    f.receive_data(_frame(body))
    with pytest.raises(ProtocolError) as ei:
        f.next_event()
    assert ei.value.fatal and ei.value.side is Side.PEER


def test_deep_nesting_refused():
    obj: list = []
    for _ in range(40):
        obj = [obj]
    with pytest.raises(ProtocolError):
        encode_message(obj)
    body = b"".join(b"\x00\x00\x00\x04list\x00\x00\x00\x01" for _ in range(40))
    body += b"\x00\x00\x00\x08NoneType"
    with pytest.raises(ProtocolError):
        decode_object(body)


def test_frame_too_small_to_hold_an_object():
    f = G3Framer()
    f.receive_data(b"\x00\x00\x00\x02ab")
    with pytest.raises(ProtocolError):
        f.next_event()


def _dwa_body(errors) -> bytes:
    """A DataRaw OBJ field by field (spec §5.4 order), with ``errors`` as given."""
    fields = [1.5, "spec", "src", "Data1D", "uniform", [np.arange(3.0)], "V", ["CH00"], "",
              [], [], errors, []]
    return (len(b"DataRaw").to_bytes(4, "big") + b"DataRaw"
            + b"".join(encode_object(x) for x in fields))


@pytest.mark.parametrize("errors", [5, True, 1.5, "x", np.arange(2.0), np.zeros((2, 3)),
                                    {"a": 1}], ids=repr)
def test_dwa_errors_that_are_not_a_list_are_fatal(errors):
    f = G3Framer()
    f.receive_data(_frame(_dwa_body(errors)))
    with pytest.raises(ProtocolError) as ei:
        f.next_event()
    assert ei.value.kind == "bad_object" and "errors" in str(ei.value) and ei.value.fatal


@pytest.mark.parametrize("errors,n", [(None, 0), ([], 0), ([np.ones(3)], 1), ((np.ones(3),), 1)])
def test_dwa_errors_none_or_a_list_decode(errors, n):
    f = G3Framer()
    f.receive_data(_frame(_dwa_body(errors)))
    ev = f.next_event()
    assert isinstance(ev, G3Object) and len(ev.obj.errors) == n


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_crashes_or_hangs(data):
    f = G3Framer(max_message=4096)
    try:
        f.receive_data(data)
        for _ in range(len(data) + 1):
            if f.next_event() is NEED_DATA:
                break
        else:
            pytest.fail("a stream of N bytes produced more than N objects")
    except ProtocolError as exc:
        assert exc.fatal


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                               max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_roundtrip_property(value):
    assert decode_object(encode_object(value)) == value


# --- message grouping ----------------------------------------------------------------------------

def test_g3_codec_groups_commands_and_payloads():
    server = G3Codec(Role.SERVER)
    client = G3Codec(Role.CLIENT)
    wire = b"".join(client.send(m) for m in [
        Hello(ClientType.ACTUATOR), Infos("<settings/>"), InfoXml(("a", "b"), "<b value='1'/>"),
        MoveDone(3.0, "mm")])
    server.receive_data(wire)
    evs = []
    while (ev := server.next_event()) is not NEED_DATA:
        evs.append(ev)
    assert evs[0] == Hello(ClientType.ACTUATOR)
    assert evs[1] == Infos("<settings/>")
    assert evs[2] == InfoXml(("a", "b"), "<b value='1'/>")
    assert isinstance(evs[3], MoveDone) and (evs[3].value, evs[3].units) == (3.0, "mm")
    for m in [GetPosition("get_actuator_value"), SendData("2D"), SetInfo(("x",), "<x/>")]:
        client.receive_data(server.send(m))
        assert client.next_event() == m


def test_g3_unknown_command_is_reported_and_stream_goes_on():
    server = G3Codec(Role.SERVER)
    server.receive_data(encode_message("GRABBER") + encode_message("Status")
                        + encode_message("Quit"))
    assert server.next_event() == Hello(ClientType.GRABBER)
    assert server.next_event() == Unknown("Status")
    assert type(server.next_event()).__name__ == "Quit"


def test_g3_bad_client_type_and_bad_payload():
    s = G3Codec(Role.SERVER)
    s.receive_data(encode_message("SCANNER"))
    with pytest.raises(ProtocolError):
        s.next_event()
    s = G3Codec(Role.SERVER)
    s.receive_data(encode_message("GRABBER") + encode_message("Done") + encode_message(3))
    s.next_event()
    with pytest.raises(ProtocolError):
        s.next_event()


def test_g3_eof_after_command_without_payload():
    s = G3Codec(Role.SERVER)
    s.receive_data(encode_message("GRABBER") + encode_message("Done"))
    assert s.next_event() == Hello(ClientType.GRABBER)
    assert s.next_event() is NEED_DATA
    with pytest.raises(ProtocolError):
        s.receive_eof()


def test_g3_done_from_arrays_builds_a_data_to_export():
    c = G3Codec(Role.CLIENT, detector_name="cam")
    s = G3Codec(Role.SERVER)
    s.receive_data(c.send(Hello(ClientType.GRABBER)) + c.send(Done((np.ones((2, 2)),))))
    s.next_event()
    done = s.next_event()
    assert isinstance(done, Done) and done.dte is not None and done.dte.name == "cam"
    assert done.dte.data[0].cls_name == "DataFromPlugins"
