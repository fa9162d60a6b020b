"""Sans-I/O codecs of the hexapod/rotator link against the golden vectors (spec §2-§5)."""

from __future__ import annotations

import os
import random
import struct

import pytest

from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.hexrotcomm import (
    COMMAND,
    COMMAND_A,
    COMMAND_STATUS,
    HEADER,
    HEADER_A24,
    HEADER_A36,
    HEXAPOD_CONFIG,
    HEXAPOD_TELEMETRY,
    ROTATOR,
    ROTATOR_CONFIG,
    ROTATOR_TELEMETRY,
    SIMPLE,
    SIMPLE_CONFIG,
    SIMPLE_TELEMETRY,
    CommandDecoder,
    CommandStatusCode,
    FrameDecoder,
    FrameKind,
    Generation,
    Layout,
    LayoutError,
    WireProfile,
)
from labbridge.protocol.hexrotcomm.devices import HEXAPOD_POS_FILT_VEL, device_spec
from labbridge.protocol.hexrotcomm.layout import encode_text
from tests.conftest import load_vectors

V = load_vectors("hexrotcomm.json")

LAYOUTS: dict[str, Layout] = {
    "Header": HEADER,
    "Command": COMMAND,
    "CommandStatus": COMMAND_STATUS,
    "SimpleConfig": SIMPLE_CONFIG,
    "SimpleTelemetry": SIMPLE_TELEMETRY,
    "MTRotator.Config": ROTATOR_CONFIG,
    "MTRotator.Telemetry": ROTATOR_TELEMETRY,
    "MTHexapod.Config": HEXAPOD_CONFIG,
    "MTHexapod.Telemetry": HEXAPOD_TELEMETRY,
    "MTHexapod.PosFiltVel": HEXAPOD_POS_FILT_VEL,
}

_TYPE_ALIASES = {"bool(u8)": "bool"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_sizes_and_offsets_match_vectors(name):
    layout = LAYOUTS[name]
    assert layout.size == V["sizes"][name]
    expected = [(f["name"], _TYPE_ALIASES.get(f["type"], f["type"]), f["offset"], f["size"])
                for f in V["layouts"][name]]
    got = [(n, t.replace("MTHexapod.", ""), o, s) for n, t, o, s in layout.fields]
    expected = [(n, t.replace("MTHexapod.", ""), o, s) for n, t, o, s in expected]
    assert got == expected


def test_enums_match_vectors():
    from labbridge.protocol.hexrotcomm import (
        ControllerState,
        FrameId,
        HexapodCommandCode,
        RotatorCommandCode,
        SetStateParam,
        SimpleCommandCode,
    )

    enums = V["conventions"]["enums"]
    assert {e.name: e.value for e in FrameId} == enums["FrameId"]
    assert {e.name: e.value for e in CommandStatusCode} == enums["CommandStatusCode"]
    assert {e.name: e.value for e in SimpleCommandCode} == enums["SimpleCommandCode"]
    assert {e.name: e.value for e in RotatorCommandCode} == enums["MTRotator.CommandCode"]
    assert {e.name: e.value for e in HexapodCommandCode} == enums["MTHexapod.CommandCode"]
    for name, value in enums["SetStateParam"].items():
        assert SetStateParam[name] == value
    for name, value in enums["ControllerState"].items():
        assert ControllerState[name] == value


@pytest.mark.parametrize("msg", V["messages"], ids=[m["name"] for m in V["messages"]])
def test_message_parts_encode_and_decode(msg):
    wire = b""
    for part in msg["parts"]:
        layout = LAYOUTS[part["struct"]]
        raw = bytes.fromhex(part["hex"])
        rec = layout.decode(raw)
        assert rec._asdict() == part["fields"]
        if msg["name"] != "status_no_ack_reason_truncated":
            assert layout.encode(layout.make(**part["fields"])) == raw
        wire += raw
    assert wire.hex() == msg["hex"]
    assert len(wire) == msg["length"]


def test_reason_exactly_50_bytes_without_nul_decodes_and_we_write_49_plus_nul():
    msg = next(m for m in V["messages"] if m["name"] == "status_no_ack_reason_truncated")
    raw = bytes.fromhex(msg["parts"][1]["hex"])
    assert COMMAND_STATUS.decode(raw).reason == msg["parts"][1]["fields"]["reason"]
    long = "state=<ControllerState.STANDBY: 0>; must be <ControllerState.ENABLED: 2>"
    out = COMMAND_STATUS.encode(COMMAND_STATUS.make(status=2, reason=long))
    assert out[12 + 49] == 0 and out[12:12 + 49] == long.encode()[:49]
    # Never cut a multi-byte character: 48 ASCII then a 2-byte char does not fit in 49.
    enc = encode_text("x" * 48 + "é", 50)
    assert enc == b"x" * 48 + b"\0\0"
    assert COMMAND_STATUS.decode(b"\x02\0\0\0" + b"\0" * 8 + b"\xff\xfeab" + b"\0" * 46).reason \
        == "\ufffd\ufffdab"


def test_layout_size_checked_at_declaration():
    with pytest.raises(LayoutError, match="expected 9"):
        Layout("Bad", [("a", "f64")], size=9)
    with pytest.raises(LayoutError, match="unknown type"):
        Layout("Bad", [("a", "f32")], size=4)


def test_explicit_little_endian_independent_of_host():
    # The same frame decoded by an explicit big-endian reading would differ: we never use '='.
    msg = next(m for m in V["messages"] if m["name"] == "telemetry_simple")
    raw = bytes.fromhex(msg["hex"])
    assert HEADER.struct.format.startswith("<")
    assert struct.unpack_from(">I", raw)[0] != 2
    assert HEADER.decode(raw).frame_id == 2


# -- generation A structs --------------------------------------------------------------------
def test_gen_a_header_example_from_spec():
    rec = HEADER_A24.make(frame_id=0, counter=17, tai_sec=1700000000, tai_nsec=500000000)
    assert HEADER_A24.encode(rec).hex(" ") == (
        "00 00 00 00 11 00 00 00 00 f1 53 65 00 00 00 00 00 65 cd 1d 00 00 00 00")


def test_gen_a_command_example_from_spec():
    prof = WireProfile.make(ROTATOR, "A")
    cmd = prof.make_command(0x8000, 1, [2.0])
    assert prof.encode_command(cmd) == bytes.fromhex("55550100000000800000") + \
        bytes.fromhex("0000000000000040") + b"\0" * 40
    assert COMMAND_A.size == 58


def test_gen_a_header_36_carries_mjd():
    prof = WireProfile.make(SIMPLE, "A", header_size=36)
    raw = prof.encode_header(0x5, 3, 1700000000.5)
    h = HEADER_A36.decode(raw)
    assert (h.sync_pattern, h.frame_id, h.counter) == (0x1234, 5, 3)
    # A-36 (ts_hexrotcomm v0.1-v0.18) carried UTC tv_sec/tv_nsec: TAI 1700000000.5 is UTC
    # 37 s earlier (TAI - UTC = 37 s since 2017).
    assert h.mjd == 40587 + (1700000000 - 37) // 86400
    assert h.tai_sec == 1700000000 - 37 and h.tai_nsec == 500000000
    assert WireProfile.make(SIMPLE, "A").encode_header(0x5, 3, 1700000000.5)[8:16] == \
        (1700000000).to_bytes(8, "little")  # A-24 (v0.20+) carries TAI as given


# -- stream decoders ---------------------------------------------------------------------------
def _stream_d() -> tuple[bytes, list[str]]:
    names = ["config_simple_defaults", "telemetry_simple", "status_ack", "status_no_ack",
             "config_simple_drives_enabled", "telemetry_simple"]
    by = {m["name"]: m for m in V["messages"]}
    return b"".join(bytes.fromhex(by[n]["hex"]) for n in names), names


def _drain(dec):
    out = []
    while (ev := dec.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def _kinds(names):
    return [FrameKind.CONFIG if n.startswith("config") else FrameKind.TELEMETRY
            if n.startswith("telemetry") else FrameKind.STATUS for n in names]


@pytest.mark.parametrize("chunk", [1, 7, 24, 60, 86, 10_000])
def test_frame_decoder_any_chunking(chunk):
    wire, names = _stream_d()
    dec = FrameDecoder(WireProfile.make(SIMPLE, Generation.D))
    out = []
    for i in range(0, len(wire), chunk):
        dec.receive_data(wire[i:i + chunk])
        out.extend(_drain(dec))
    assert [f.kind for f in out] == _kinds(names)
    assert out[2].payload.status == CommandStatusCode.ACK and out[2].payload.duration == 1.5
    assert out[3].payload.reason == "Rejected: not enabled"
    assert out[4].payload.drives_enabled is True
    assert out[1].payload.curr_position == 3.501
    assert dec.buffered == 0
    dec.eof()  # nothing pending: no error


def test_frame_decoder_glued_frames_in_one_chunk():
    wire, names = _stream_d()
    dec = FrameDecoder(WireProfile.make(SIMPLE, "D"))
    dec.receive_data(wire + wire)
    assert len(_drain(dec)) == 2 * len(names)


def test_unknown_frame_id_is_fatal_and_names_the_header():
    msg = next(m for m in V["messages"] if m["name"] == "header_unknown_frame_id")
    wire, _ = _stream_d()
    dec = FrameDecoder(WireProfile.make(SIMPLE, "D"))
    dec.receive_data(wire[:49 + 60] + bytes.fromhex(msg["hex"]) + b"\0" * 100)
    # Frames confirmed before the error still come out (the config: a valid header follows
    # it); the telemetry frame right before the bad header is never handed out.
    assert dec.next_event().kind is FrameKind.CONFIG
    with pytest.raises(ProtocolError) as ei:
        dec.next_event()
    assert ei.value.kind == "unknown_frame_id" and ei.value.fatal
    assert "1025" in str(ei.value) and msg["hex"] in str(ei.value)
    with pytest.raises(ProtocolError):  # stays broken: the stream cannot resynchronise
        dec.next_event()
    assert dec.frames_dropped == 1


def test_corrupt_header_nsec_out_of_range():
    dec = FrameDecoder(WireProfile.make(SIMPLE, "D"))
    dec.receive_data(HEADER.encode((2, 0, 1, 2_000_000_000)) + SIMPLE_TELEMETRY.encode(
        SIMPLE_TELEMETRY.make()))
    with pytest.raises(ProtocolError) as ei:
        dec.next_event()
    assert ei.value.kind == "bad_header"


def test_bad_bool_in_config_is_rejected():
    dec = FrameDecoder(WireProfile.make(SIMPLE, "D"))
    dec.receive_data(HEADER.encode((3, 0, 1, 0)) + b"\x07" + b"\0" * 24)
    with pytest.raises(ProtocolError) as ei:
        dec.next_event()
    assert ei.value.kind == "bad_value"


def test_truncated_struct_detected_at_eof():
    wire, _ = _stream_d()
    dec = FrameDecoder(WireProfile.make(SIMPLE, "D"))
    dec.receive_data(wire[:49 + 30])  # config then a telemetry frame cut short
    assert dec.next_event().kind is FrameKind.CONFIG
    assert dec.next_event() is NEED_DATA
    with pytest.raises(ProtocolError) as ei:
        dec.eof()
    assert ei.value.kind == "truncated" and "30 byte" in str(ei.value)


def test_random_bytes_raise_protocol_error_never_anything_else():
    rng = random.Random(1234)
    prof = WireProfile.make(ROTATOR, "D")
    for _ in range(300):
        dec = FrameDecoder(prof)
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000)))
        try:
            dec.receive_data(data)
            _drain(dec)
            dec.eof()
        except ProtocolError as exc:
            assert exc.fatal
    # Random bytes (high frame id bytes) are an unknown frame id.
    dec = FrameDecoder(prof)
    dec.receive_data(os.urandom(20) + b"\xff\xff\xff\xff" * 100)
    with pytest.raises(ProtocolError):
        _drain(dec)
        dec.eof()


def test_oversized_input_is_bounded():
    # Only the start of one frame is ever held: the next chunk completes it, the rest of the
    # chunk is decoded in place, whatever the chunk sizes.
    prof = WireProfile.make(ROTATOR, "D")
    frame = prof.encode_frame(FrameKind.TELEMETRY, ROTATOR_TELEMETRY.make(state=2.0), 7, 1.5)
    stream = frame * 2500  # about 1 MiB
    dec = FrameDecoder(prof)
    pos, got, step = 0, 0, 3
    while pos < len(stream):
        dec.receive_data(stream[pos:pos + step])
        assert dec.buffered < len(frame)
        got += len(_drain(dec))
        pos += step
        step = step * 7 % 99_991 + 1  # odd sizes, from a few bytes to about 100 kB
    assert got == 2500 and dec.buffered == 0
    # After garbage the stream is dead: later bytes are not held, the error stays.
    dec.receive_data(b"\0" * 30)
    dec.receive_data(b"\0" * 300_000)
    assert dec.buffered < len(frame)
    with pytest.raises(ProtocolError) as ei:
        _drain(dec)
    assert ei.value.kind == "unknown_frame_id" and ei.value.fatal
    # The limit holds even below one frame.
    small = FrameDecoder(prof, max_buffer=100)
    small.receive_data(b"\x02\0")
    with pytest.raises(ProtocolError) as ei:
        small.receive_data(frame[2:])
    assert ei.value.kind == "too_large"


def test_gen_a_decoder_uses_device_frame_ids():
    prof = WireProfile.make(device_spec("rotator", "A"), "A")
    tel_l, cfg_l = prof.device.telemetry, prof.device.config
    tel = tel_l.make(state=2.0, current_pos=1.25, motor_current_axis_b=2.0)
    cfg = cfg_l.make(upper_pos_limit=90.0)
    wire = (prof.encode_frame(FrameKind.CONFIG, cfg, 1, 1.5)
            + prof.encode_frame(FrameKind.TELEMETRY, tel, 2, 1.75))
    assert len(wire) == 24 + 64 + 24 + 404
    dec = FrameDecoder(prof)
    for b in wire:
        dec.receive_data(bytes([b]))
    # Generation A is strict: the last frame waits for the header after it.
    frames = _drain(dec)
    assert [f.payload for f in frames] == [cfg] and dec.held
    nxt = prof.encode_frame(FrameKind.TELEMETRY, tel, 3, 1.8)
    dec.receive_data(nxt[:23])
    assert _drain(dec) == []  # 23 bytes are no header yet
    dec.receive_data(nxt[23:24])
    frames += _drain(dec)
    assert [f.payload for f in frames] == [cfg, tel]
    assert frames[0].header.sync_pattern == 0x5555 and frames[0].header.frame_id == 0x2
    assert frames[1].header.frame_id == 0x0 and frames[1].header.counter == 2
    dec.receive_data(nxt[24:])
    dec.eof()  # the stream ends right after a whole frame: it comes out
    assert _drain(dec)[0].header.counter == 3
    # A gen D status frame id means nothing in gen A.
    dec = FrameDecoder(prof)
    dec.receive_data(HEADER_A24.encode((0x5555, 1, 0, 0, 0)))
    with pytest.raises(ProtocolError):
        dec.next_event()


def test_command_decoder_reassembles_bytewise():
    prof = WireProfile.make(SIMPLE, "D")
    cmds = [prof.make_command(4, i, [float(i)]) for i in range(5)]
    wire = b"".join(prof.encode_command(c) for c in cmds)
    dec = CommandDecoder(prof)
    got = []
    for b in wire:
        dec.receive_data(bytes([b]))
        got.extend(_drain(dec))
    assert got == cmds
    dec.receive_data(b"\0" * 10)
    with pytest.raises(ProtocolError, match="truncated"):
        dec.eof()


def test_status_encoding_and_profile_errors():
    prof = WireProfile.make(SIMPLE, "D")
    wire = prof.encode_status(0, CommandStatusCode.ACK, 1.5, "", 1700000000.5)
    ack = next(m for m in V["messages"] if m["name"] == "status_ack")
    assert wire.hex() == ack["hex"]
    with pytest.raises(ValueError):
        WireProfile.make(SIMPLE, "A").encode_status(0, CommandStatusCode.ACK, 0, "", 0)
    with pytest.raises(ValueError):
        prof.make_command(1, 0, [0.0] * 7)
    with pytest.raises(ValueError):
        WireProfile.make(SIMPLE, "A", header_size=20)


def test_counter_wraps_in_command():
    prof = WireProfile.make(ROTATOR, "D")
    vec = next(m for m in V["messages"] if m["name"] == "command_counter_wrap")
    assert prof.encode_command(prof.make_command(0x8000, 0xFFFFFFFF, [3.0])).hex() == vec["hex"]
    assert prof.make_command(0x8000, 0x1_0000_0000).counter == 0
