"""The telemetry envelope, gap tracking, legacy forms and REP vocabulary: bytes in, messages
out, no sockets (spec pychron.md §13-14)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from labbridge.protocol.base import ProtocolError, Side
from labbridge.protocol.telemetry import legacy, requests
from labbridge.protocol.telemetry.envelope import (
    META,
    Encoding,
    EnvelopeEncoder,
    check_topic,
    decode,
    decode_meta,
    make_topic,
)
from labbridge.protocol.telemetry.sequence import SequenceTracker


def _wire(frames):
    """What a receiver gets: every frame as bytes."""
    return [f.tobytes() if isinstance(f, np.ndarray) else bytes(f) for f in frames]


def test_json_envelope_layout_is_explicit_big_endian():
    enc = EnvelopeEncoder(0x0102030405060708)
    frames = enc.encode("lab.valves.A", {"state": 1, "owner": "", "locked": 0}, 1.5)
    assert frames[0] == b"lab.valves.A"
    # compact and key-sorted
    assert frames[1] == b'{"locked":0,"owner":"","state":1}'
    assert frames[2] == (b"LB\x01\x01" + bytes.fromhex("0102030405060708")
                         + (1).to_bytes(8, "big") + struct.pack(">d", 1.5) + b"\x00" * 4)
    assert len(frames[2]) == META.size == 32


def test_roundtrip_and_per_topic_sequence():
    enc = EnvelopeEncoder(7)
    a1 = decode(enc.encode("n.d.a", 1, 0.0))
    b1 = decode(enc.encode("n.d.b", "x", 0.0))
    a2 = decode(enc.encode("n.d.a", [1.5, None, True], 2.0))
    assert (a1.meta.seq, b1.meta.seq, a2.meta.seq) == (1, 1, 2)
    assert a2.value == [1.5, None, True] and a2.meta.ts == 2.0 and a2.meta.publisher == 7
    assert b1.value == "x" and b1.topic == "n.d.b"
    assert enc.next_seq("n.d.a") == 3
    keyed = enc.encode("n.d.a", {"b": 1, "a": 2}, 3.0)   # compact, key-sorted
    assert decode(keyed).meta.seq == 3 and keyed[1] == b'{"a":2,"b":1}'


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype="<u2").reshape(3, 4),
    np.linspace(0, 1, 7, dtype=">f8"),
    np.zeros((2, 0, 3), dtype="i4"),
    np.array(3.25),
    np.arange(24, dtype="complex64").reshape(2, 3, 4),
])
def test_array_roundtrip_is_zero_copy(arr):
    frames = EnvelopeEncoder(1).encode("cam.frame", arr, 0.0)
    wire = _wire(frames)
    msg = decode(wire)
    assert msg.meta.encoding is Encoding.NDARRAY
    assert msg.value.dtype == arr.dtype and msg.value.shape == arr.shape
    np.testing.assert_array_equal(msg.value, arr)
    if arr.size:
        assert np.shares_memory(msg.value, np.frombuffer(wire[1], dtype=np.uint8))


def test_non_contiguous_array_is_sent_contiguous():
    arr = np.arange(20, dtype="f4").reshape(4, 5)[:, ::2]
    msg = decode(_wire(EnvelopeEncoder(1).encode("a.b", arr, 0.0)))
    np.testing.assert_array_equal(msg.value, arr)


def test_bytes_and_numpy_scalars():
    enc = EnvelopeEncoder(1)
    assert decode(enc.encode("a.b", b"\x00\xff", 0.0)).value == b"\x00\xff"
    assert decode(enc.encode("a.b", {"v": np.float32(1.5)}, 0.0)).value == {"v": 1.5}


def test_unencodable_value_is_our_error():
    with pytest.raises(ProtocolError) as ei:
        EnvelopeEncoder(1).encode("a.b", object(), 0.0)
    assert ei.value.side is Side.OURS and ei.value.kind == "bad_value"


@pytest.mark.parametrize("topic", ["", "a..b", ".a", "a.", "a b", "x\x00", "a" * 256])
def test_bad_topics_refused(topic):
    with pytest.raises(ProtocolError):
        check_topic(topic)


def test_make_topic_cleans_segments():
    assert make_topic("lab", "Bone Gauge", "temp") == "lab.Bone_Gauge.temp"
    check_topic(make_topic("lab", " ", "x"))


def _good() -> list[bytes]:
    return EnvelopeEncoder(9).encode("a.b", {"x": 1}, 1.0)


@pytest.mark.parametrize("mutate, kind", [
    (lambda f: f[:2], "bad_frames"),
    (lambda f: [*f, b""], "bad_frames"),
    (lambda f: [f[0], f[1], f[2][:31]], "truncated"),
    (lambda f: [f[0], f[1], b"XX" + f[2][2:]], "bad_envelope"),
    (lambda f: [f[0], f[1], f[2][:2] + b"\x09" + f[2][3:]], "bad_version"),
    (lambda f: [f[0], f[1], f[2][:3] + b"\x07" + f[2][4:]], "bad_envelope"),
    (lambda f: [f[0], f[1], f[2] + b"\x00"], "length_mismatch"),
    (lambda f: [f[0], b"{not json", f[2]], "bad_payload"),
    (lambda f: [b"\xff\xfe", f[1], f[2]], "bad_topic"),
])
def test_garbage_envelopes_are_peer_errors(mutate, kind):
    with pytest.raises(ProtocolError) as ei:
        decode(mutate(_good()))
    assert ei.value.kind == kind and ei.value.side is Side.PEER


def test_array_descriptor_and_size_checked():
    frames = EnvelopeEncoder(1).encode("a.b", np.arange(6, dtype="<u2"), 0.0)
    payload = frames[1].tobytes()
    with pytest.raises(ProtocolError, match="needs 12"):
        decode([frames[0], payload[:-1], frames[2]])
    with pytest.raises(ProtocolError):
        decode([frames[0], payload, frames[2][:-3]])
    meta = frames[2].replace(b"<u2", b"|O8")
    with pytest.raises(ProtocolError):
        decode([frames[0], payload, meta])
    # descriptor length field lying about the frame
    bad = frames[2][:28] + (200).to_bytes(2, "big") + frames[2][30:]
    with pytest.raises(ProtocolError):
        decode_meta(bad)


@given(st.binary(max_size=80))
def test_random_meta_never_crashes(data):
    try:
        decode_meta(data)
    except ProtocolError:
        pass


@given(st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53)
                    | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=4),
                    max_leaves=12))
def test_json_values_roundtrip(value):
    assert decode(EnvelopeEncoder(3).encode("a.b", value, 0.0)).value == value


# -- gaps --------------------------------------------------------------------------------------
def test_sequence_tracker_gaps_and_late_join():
    t = SequenceTracker()
    assert t.observe(1, "a", 1) is None
    assert t.observe(1, "a", 2) is None
    g = t.observe(1, "a", 5)
    assert g is not None and (g.expected, g.received, g.missed, g.late_join) == (3, 5, 2, False)
    late = t.observe(1, "b", 40)
    assert late is not None and late.late_join and late.missed == 39
    assert t.observe(2, "a", 1) is None  # another publisher: its own stream
    assert t.observe(1, "a", 3) is None and t.resets == 1  # backwards: restart, not a loss
    assert (t.gaps, t.late_joins, t.missed) == (1, 1, 41)


def test_sequence_tracker_is_bounded():
    t = SequenceTracker(max_streams=10)
    for i in range(100):
        t.observe(1, f"t{i}", 1)
    assert len(t._last) <= 11


# -- legacy single strings -----------------------------------------------------------------
def test_legacy_forms_exact():
    assert legacy.line("RunAdded", "abc-123") == b"RunAdded abc-123"
    assert legacy.value_line("<Env,temperature>", 12.5) == b"<Env,temperature> 12.5"
    ev = {"kind": "value_update", "ts": 1700000000.0, "device": "Env", "name": "temperature",
          "tag": "<Env,temperature>", "value": 12.5, "units": "C"}
    assert legacy.dashboard_line(ev) == (
        b'dashboard {"device": "Env", "kind": "value_update", "name": "temperature", '
        b'"tag": "<Env,temperature>", "ts": 1700000000.0, "units": "C", "value": 12.5}')
    assert legacy.pychron_line({"kind": "valve_state", "name": "A", "state": 1, "locked": 0,
                                "owner": "", "ts": 1.0}) == (
        b'pychron {"kind":"valve_state","locked":0,"name":"A","owner":"","state":1,"ts":1.0}')
    with pytest.raises(ProtocolError):
        legacy.pychron_line({"kind": "x"})
    for bad in ("two words", "<a>b>", "<a\nb>", ""):
        with pytest.raises(ProtocolError):
            legacy.line(bad, "x")


def test_legacy_parse():
    spaced = legacy.parse(legacy.value_line("<Bone Gauge,p>", 1e-9))
    assert (spaced.tag, spaced.text) == ("<Bone Gauge,p>", "1e-09")
    m = legacy.parse(b"<Env,temperature>  12.5 ")
    assert (m.tag, m.text, m.event) == ("<Env,temperature>", "12.5", None)
    assert legacy.parse_number(m.text) == 12.5 and legacy.parse_number("abc") is None
    d = legacy.parse(b'dashboard {"kind": "heartbeat", "ts": 1.0}')
    assert d.event == {"kind": "heartbeat", "ts": 1.0}
    assert legacy.parse(b"error boom here").text == "boom here"
    assert legacy.parse(b"Ping").text == ""
    for bad in (b"dashboard {oops", b"pychron [1]", b"\xff", b" x", b"x" * (legacy.MAX_LEGACY + 1)):
        with pytest.raises(ProtocolError):
            legacy.parse(bad)


# -- REP vocabulary --------------------------------------------------------------------------
def test_requests():
    assert requests.parse_request([b" config_json "]) == requests.Request("config_json", "")
    assert requests.parse_request([b"get A  B"]) == requests.Request("get", "A  B")
    assert requests.unknown_reply("nope") == b"error unknown request nope"
    assert requests.exception_reply(ValueError("bad\nthing")) == b"error bad thing"
    assert requests.exception_reply(KeyError()) == b"error KeyError"
    for frames in ([b"a", b"b"], [b""], [b"\xff"], [b"x" * (requests.MAX_REQUEST + 1)]):
        with pytest.raises(requests.BadRequest) as ei:
            requests.parse_request(frames)
        assert ei.value.reply.startswith(b"error ")


def test_dashboard_line_is_plain_json_dumps():
    ev = {"b": [1, 2], "a": "é"}
    assert legacy.dashboard_line(ev) == ("dashboard " + json.dumps(ev, sort_keys=True)).encode()
