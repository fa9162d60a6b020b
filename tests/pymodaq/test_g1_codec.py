"""G1 codec: dialect detection (§3.5), G2 refusal, Info values (§3.4), both roles, bad input,
byte-by-byte and glued input (spec pymodaq.md §3, §4)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.pymodaq.codec import detect_generation
from labbridge.protocol.pymodaq.g1 import (
    G1Codec,
    array_chunks,
    encode_string,
    message_chunks,
    scalar_chunks,
)
from labbridge.protocol.pymodaq.messages import (
    AxisInfo,
    ClientType,
    Dialect,
    Done,
    Generation,
    GetPosition,
    Hello,
    Info,
    Infos,
    InfoXml,
    MoveAbs,
    MoveDone,
    MoveHome,
    MoveRel,
    PositionIs,
    Quit,
    Role,
    SendData,
    SetInfo,
    StopMotion,
)

S = encode_string


def events(codec, data: bytes, step: int | None = None) -> list[object]:
    out = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for ch in chunks:
        codec.receive_data(ch)
        while (ev := codec.next_event()) is not NEED_DATA:
            out.append(ev)
    return out


def enc(msg, dialect=Dialect.G1A) -> bytes:
    return b"".join(message_chunks(msg, dialect))


@pytest.mark.parametrize("dialect", [Dialect.G1A, Dialect.G1B])
@pytest.mark.parametrize("step", [None, 1, 3])
def test_client_to_server_roundtrip(dialect, step):
    msgs = [Hello(ClientType.GRABBER), Infos("<settings/>"),
            InfoXml(("detector_settings", "exposure"), "<exposure value='3'/>"),
            Info("temperature", 21.5), Done((np.arange(6, dtype="<u2").reshape(2, 3),
                                              np.array([0.5, 1.5]))),
            AxisInfo("x", np.linspace(0, 1, 5), "x", "px"), PositionIs(1.25),
            MoveDone(2.5), Quit()]
    wire = b"".join(enc(m, dialect) for m in msgs)
    codec = G1Codec(Role.SERVER, dialect=dialect)
    got = events(codec, wire, step)
    assert got[0] == msgs[0] and got[1] == msgs[1] and got[2] == msgs[2]
    assert got[3] == Info("temperature", 21.5 if dialect is Dialect.G1A else "21.5")
    done = got[4]
    assert isinstance(done, Done)
    np.testing.assert_array_equal(done.arrays[0], msgs[4].arrays[0])
    np.testing.assert_array_equal(done.arrays[1], msgs[4].arrays[1])
    assert isinstance(got[5], AxisInfo) and got[5].label == "x" and got[5].units == "px"
    np.testing.assert_array_equal(got[5].data, np.linspace(0, 1, 5))
    assert isinstance(got[6], PositionIs) and got[6].value == 1.25
    assert isinstance(got[7], MoveDone) and got[7].value == 2.5
    assert got[8] == Quit()
    codec.receive_eof()


@pytest.mark.parametrize("dialect", [Dialect.G1A, Dialect.G1B])
def test_server_to_client_roundtrip(dialect):
    msgs = [MoveAbs(12.5), MoveRel(-1.0), MoveHome(), GetPosition("check_position"),
            GetPosition("get_actuator_value"), StopMotion(), SendData("0D"), SendData("ND"),
            SetInfo(("units",), "<units value='mm'/>"), Info("x", 1.0), Infos("<a/>")]
    codec = G1Codec(Role.CLIENT, dialect=dialect)
    got = events(codec, b"".join(enc(m, dialect) for m in msgs), 1)
    assert isinstance(got[0], MoveAbs) and got[0].value == 12.5
    assert isinstance(got[1], MoveRel) and got[1].value == -1.0
    assert got[2:8] == msgs[2:8]
    assert got[8] == msgs[8]
    assert got[10] == msgs[10]


def test_seed_sequences_byte_exact():
    """§4.4 actuator sequence in G1a, and the seed's Done with a 480x640 frame."""
    frame = np.zeros((480, 640), dtype="<u2")
    done = enc(Done((frame,)), Dialect.G1A)
    head = S("Done") + b"\x00\x00\x00\x01" + S("<u2") + struct.pack(">III", 614400, 480, 640)
    assert done[: len(head)] == head and len(done) == len(head) + 614400
    assert enc(GetPosition()) == S("check_position")


@pytest.mark.parametrize("step", [None, 4096])
def test_large_g1_array_goes_to_one_buffer(step):
    frame = np.arange(480 * 640, dtype="<u2").reshape(480, 640)
    codec = G1Codec(Role.SERVER)
    got = events(codec, S("GRABBER") + enc(Done((frame,))), step)
    np.testing.assert_array_equal(got[1].arrays[0], frame)
    assert got[1].arrays[0].flags.writeable


def test_dialect_latches_from_list_and_is_used_for_sending():
    codec = G1Codec(Role.SERVER, dialect=Dialect.G1A)
    events(codec, S("GRABBER") + enc(Done((np.ones(3),)), Dialect.G1B))
    assert codec.latched is Dialect.G1B
    assert codec.send(SetInfo(("a",), "<a/>")) == enc(SetInfo(("a",), "<a/>"), Dialect.G1B)


def test_fixed_dialect_does_not_detect():
    codec = G1Codec(Role.SERVER, dialect=Dialect.G1A, detect=False)
    with pytest.raises(ProtocolError):
        events(codec, S("GRABBER") + enc(Done((np.ones((2, 2)),)), Dialect.G1B))


def test_array_detection_rule_2():
    # G1b 2x3 before any list: header words (2, 2, 3); G1a would need 2*2 == 6 items: G1b
    a = np.arange(6, dtype="<f8").reshape(2, 3)
    codec = G1Codec(Role.SERVER)
    got = events(codec, S("GRABBER") + enc(AxisInfo("x", a, "l", "u"), Dialect.G1B))
    np.testing.assert_array_equal(got[1].data, a)
    assert codec.latched is Dialect.G1B
    # G1a 1-D: a = n, b = 1 -> only G1a fits; latches G1a
    codec = G1Codec(Role.SERVER, dialect=Dialect.G1B)
    got = events(codec, S("GRABBER") + enc(AxisInfo("x", np.arange(5.0), "l", "u"),
                                           Dialect.G1A))
    np.testing.assert_array_equal(got[1].data, np.arange(5.0))
    assert codec.latched is Dialect.G1A
    # a = 1: same bytes either way, same array, no latch
    codec = G1Codec(Role.SERVER)
    got = events(codec, S("GRABBER") + enc(AxisInfo("x", np.arange(1.0), "l", "u"),
                                           Dialect.G1B))
    assert codec.latched is None
    np.testing.assert_array_equal(got[1].data.reshape(-1), [0.0])


def test_genuinely_ambiguous_array_uses_configured_dialect():
    # G1b 2x2 array: a=2, b=2, then 2 -- G1a also reads it as 2x2 (4 items): §3.5 example
    a = np.arange(4, dtype="<i8").reshape(2, 2)
    wire = S("GRABBER") + enc(AxisInfo("x", a, "l", "u"), Dialect.G1B)
    codec = G1Codec(Role.SERVER, dialect=Dialect.G1B)
    got = events(codec, wire)
    np.testing.assert_array_equal(got[1].data, a)
    assert codec.latched is None


def test_info_value_rule_3():
    g1a = S("ACTUATOR") + S("Info") + S("temp") + b"\x00\x00\x00\x08" + struct.pack(">d", 3.25)
    codec = G1Codec(Role.SERVER)
    assert events(codec, g1a)[1] == Info("temp", 3.25)
    assert codec.latched is Dialect.G1A
    g1b = S("ACTUATOR") + S("Info") + S("temp") + S("3.25")
    assert events(G1Codec(Role.SERVER), g1b)[1] == Info("temp", "3.25")


def test_g2_peer_is_refused():
    wire = S("ACTUATOR") + S("position_is") + S("DataActuator") + b"\x00" * 16
    codec = G1Codec(Role.SERVER)
    with pytest.raises(ProtocolError) as ei:
        events(codec, wire)
    assert ei.value.kind == "unsupported_peer" and "G2" in str(ei.value)


@pytest.mark.parametrize("wire,kind", [
    (S("GRABBER") + S("Status"), "unknown_command"),
    (S("SCANNER"), "bad_client_type"),
    (S("GRABBER") + S("Done") + b"\x00\x00\x00\x01" + S("bogus") + b"\x00" * 8, "bad_list"),
    (S("GRABBER") + S("Done") + b"\x00\x00\x00\x02" + S("array")
     + b"".join(array_chunks(np.ones(2), Dialect.G1B)) + S("matrix"), "unknown_type"),
    (S("GRABBER") + S("Done") + b"\x00\x00\x00\x01" + S("<u2") + struct.pack(">III", 6, 2, 2)
     + b"\x00" * 6, "length_mismatch"),
    (S("ACTUATOR") + S("position_is") + S("O") + b"\x00\x00\x00\x08" + b"\x00" * 8, "bad_dtype"),
    (S("GRABBER") + S("Done") + b"\x00\x01\x00\x00", "too_large"),
])
def test_bad_input_is_fatal(wire, kind):
    codec = G1Codec(Role.SERVER)
    with pytest.raises(ProtocolError) as ei:
        events(codec, wire)
    assert ei.value.kind == kind and ei.value.fatal


def test_length_beyond_maximum():
    codec = G1Codec(Role.SERVER, max_message=1000, max_string=100)
    with pytest.raises(ProtocolError) as ei:
        events(codec, S("GRABBER") + S("Done") + b"\x00\x00\x00\x01" + S("<u2")
               + struct.pack(">I", 2000))
    assert ei.value.kind == "too_large"
    codec = G1Codec(Role.SERVER, max_string=100)
    with pytest.raises(ProtocolError) as ei:
        events(codec, S("GRABBER") + S("Infos") + struct.pack(">I", 101))
    assert ei.value.kind == "too_large"


def test_truncated_at_eof_and_clean_eof():
    wire = S("ACTUATOR") + enc(PositionIs(1.0))
    codec = G1Codec(Role.SERVER)
    assert len(events(codec, wire[:-2])) == 1
    with pytest.raises(ProtocolError) as ei:
        codec.receive_eof()
    assert ei.value.kind == "truncated"
    codec = G1Codec(Role.SERVER)
    assert len(events(codec, wire)) == 2
    codec.receive_eof()


def test_g1a_refuses_to_send_nd_arrays():
    with pytest.raises(ProtocolError):
        enc(Done((np.zeros((2, 2, 2)),)), Dialect.G1A)
    # G1b carries them
    codec = G1Codec(Role.SERVER)
    got = events(codec, S("GRABBER") + enc(Done((np.zeros((2, 2, 2)),)), Dialect.G1B))
    assert got[1].arrays[0].shape == (2, 2, 2)


def test_scalar_dtypes():
    assert b"".join(scalar_chunks(7)) == S("<i8") + b"\x00\x00\x00\x08" + (7).to_bytes(8, "little")
    assert b"".join(scalar_chunks(1.0, ">f8"))[4:7] == b">f8"
    codec = G1Codec(Role.CLIENT)
    got = events(codec, S("move_abs") + b"".join(scalar_chunks(2.5, ">f8")))
    assert got[0].value == 2.5


# --- first-frame detection (§7.1) ---------------------------------------------------------------

@pytest.mark.parametrize("hexs,gen", [
    ("00000012000000037374720000000747524142424552", Generation.G3),
    ("0000001300000003737472000000084143545541544f52", Generation.G3),
    ("0000000747524142424552", Generation.G1),
    ("000000084143545541544f52", Generation.G1),
])
def test_detect_generation(hexs, gen):
    data = bytes.fromhex(hexs)
    assert detect_generation(data) is gen
    assert detect_generation(data[:10]) is None


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",
    b"\x00\x00\x01\x00" + b"x" * 7,                # longer than 64: refused from the length
    b"\x00\x00\x00\x14\x00\x00\x00\x03str" + b"\x00" * 10,   # G3 but not GRABBER/ACTUATOR size
    b"\x00\x00\x00\x09GRABBERXX",
])
def test_detect_refuses(data):
    with pytest.raises(ProtocolError) as ei:
        detect_generation(data)
    assert ei.value.kind == "unknown_peer"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([Role.SERVER, Role.CLIENT]))
def test_garbage_never_crashes_or_hangs(data, role):
    codec = G1Codec(role, max_message=4096, max_string=256)
    head = S("GRABBER") if role is Role.SERVER else b""
    try:
        codec.receive_data(head + data)
        for _ in range(len(data) + 2):
            if codec.next_event() is NEED_DATA:
                break
        else:
            pytest.fail("a stream of N bytes produced more than N messages")
    except ProtocolError as exc:
        assert exc.fatal
