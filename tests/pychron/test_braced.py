"""F-SEED braced framing: every vector, plus the framer conformance suite."""

from __future__ import annotations

import hashlib

import pytest

from labbridge.protocol.base import BufferOverflow
from labbridge.protocol.pychron.braced import (
    BracedFrame,
    BracedFrameError,
    BracedFramer,
    decode_braced,
    encode_braced,
)
from tests.conftest import load_vectors
from tests.pychron.framing_helpers import bytewise, drain, feed

V = load_vectors("pychron.json")


def payloads(events):
    return [e.payload for e in events if isinstance(e, BracedFrame)]


def errors(events):
    return [e for e in events if isinstance(e, BracedFrameError)]


@pytest.mark.parametrize("case", V["braced_frames"]["cases"], ids=lambda c: c["name"])
def test_vector_encode(case):
    assert encode_braced(case["payload"]) == bytes.fromhex(case["frame_hex"])


@pytest.mark.parametrize("case", V["braced_frames"]["cases"], ids=lambda c: c["name"])
def test_vector_decode_whole_buffer(case):
    assert decode_braced(bytes.fromhex(case["frame_hex"])) == case["payload"]
    assert decode_braced(bytes.fromhex(case["frame_hex"]), strict=True) == case["payload"]


@pytest.mark.parametrize("case", V["braced_frames"]["cases"], ids=lambda c: c["name"])
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_vector_decode_streaming(case, mode):
    data = bytes.fromhex(case["frame_hex"])
    chunks = [data] if mode == "whole" else bytewise(data)
    assert payloads(feed(BracedFramer(), chunks)) == [case["payload"]]


@pytest.mark.parametrize("case", V["braced_invalid"]["cases"], ids=lambda c: c["name"])
def test_vector_invalid_whole_buffer(case):
    data = bytes.fromhex(case["frame_hex"])
    with pytest.raises(BracedFrameError) as info:
        decode_braced(data, strict=True)
    assert info.value.kind == case["error"]
    if not case.get("strict_only"):
        with pytest.raises(BracedFrameError) as info2:
            decode_braced(data)
        assert info2.value.kind == case["error"]
    else:
        assert decode_braced(data) == "Open A"  # a lenient decoder accepts lowercase hex


def test_seed_example_is_a_length_mismatch_without_waiting():
    """``{000F}Open A\\r\\n``: no 15th byte will come; the quiet gap reports the mismatch."""
    framer = BracedFramer()
    assert feed(framer, [b"{000F}Open A\r\n"]) == []
    assert framer.suspect
    with pytest.raises(BracedFrameError) as info:
        framer.idle()
    assert info.value.kind == "length_mismatch"
    assert str(info.value) == ("length mismatch: header declares 15 bytes (0x000F), "
                               "frame is 14 bytes (0x000E)")
    assert info.value.reply_text().startswith("ERROR 900 : length mismatch")
    # The framer is clean again: the next correct frame decodes.
    assert payloads(feed(framer, [b"{000E}Open A\r\n"])) == ["Open A"]


def test_short_declared_length_bytewise_reports_no_crlf_then_resyncs():
    framer = BracedFramer()
    events = feed(framer, [*bytewise(b"{000D}Open A\r\n"), b"{000A}OK\r\n"])
    errs = errors(events)
    assert len(errs) == 1 and errs[0].kind == "length_mismatch"
    assert str(errs[0]) == ("length mismatch: header declares 13 bytes (0x000D), "
                            "no CRLF at that offset")
    assert payloads(events) == ["OK"]


def test_short_declared_length_whole_reports_actual_length():
    events = feed(BracedFramer(), [b"{000D}Open A\r\n{000A}OK\r\n"])
    assert [str(e) for e in errors(events)] == [
        "length mismatch: header declares 13 bytes (0x000D), frame is 14 bytes (0x000E)"]
    assert payloads(events) == ["OK"]


def test_embedded_crlf_is_data_not_an_end():
    data = bytes.fromhex(next(c for c in V["braced_frames"]["cases"]
                              if c["name"] == "payload_with_embedded_crlf")["frame_hex"])
    framer = BracedFramer()
    events = feed(framer, bytewise(data))
    assert payloads(events) == ["Info a\r\nb"]
    assert not framer.suspect


@pytest.mark.parametrize("stream", V["braced_stream"], ids=lambda c: c["name"])
def test_vector_streams(stream):
    chunks = ([bytes.fromhex(stream["stream_hex"])] if "stream_hex" in stream
              else [bytes.fromhex(h) for h in stream["chunks_hex"]])
    assert payloads(feed(BracedFramer(), chunks)) == stream["payloads"]
    joined = b"".join(chunks)
    assert payloads(feed(BracedFramer(), bytewise(joined))) == stream["payloads"]


def test_glued_frames_many():
    frames = [encode_braced(f"GetValveState {chr(65 + i % 26)}") for i in range(500)]
    glued = b"".join(frames)
    got = payloads(feed(BracedFramer(), [glued]))
    assert len(got) == 500 and got[27] == "GetValveState B"


def test_largest_valid_frame_and_too_large_encode():
    lim = V["braced_limits"]
    frame = encode_braced("A" * lim["largest_valid"]["payload_length"])
    assert hashlib.sha256(frame).hexdigest() == lim["largest_valid"]["frame_sha256"]
    assert frame.startswith(bytes.fromhex(lim["largest_valid"]["frame_prefix_hex"]))
    assert payloads(feed(BracedFramer(), [frame[:1000], frame[1000:]])) == [
        "A" * lim["largest_valid"]["payload_length"]]
    for case in lim["encode_invalid"]:
        with pytest.raises(BracedFrameError) as info:
            encode_braced("A" * case["payload_length"])
        assert info.value.kind == case["error"]


def test_garbage_then_valid_frame():
    events = feed(BracedFramer(), [b"\x00\xff garbage here\r\n{000A}OK\r\n"])
    assert [e.kind for e in errors(events)] == ["missing_open_brace"]
    assert payloads(events) == ["OK"]


def test_garbage_without_newline_is_discarded_not_buffered():
    framer = BracedFramer()
    events = feed(framer, [b"x" * 10000, b"y" * 10000])
    assert [e.kind for e in errors(events)] == ["missing_open_brace"]
    assert framer.buffered == 0
    assert payloads(feed(framer, [b"\n{000A}OK\r\n"])) == ["OK"]


def test_bad_digits_detected_before_the_header_completes():
    framer = BracedFramer()
    framer.receive_data(b"{0x")
    assert [e.kind for e in drain(framer)] == ["bad_length_digits"]


def test_declared_length_above_limit():
    framer = BracedFramer(max_frame=64)
    events = feed(framer, [b"{0100}" + b"A" * 10 + b"\r\n{000A}OK\r\n"])
    assert [e.kind for e in errors(events)] == ["too_large"]
    assert payloads(events) == ["OK"]


def test_buffer_is_bounded():
    framer = BracedFramer(max_frame=64)
    with pytest.raises(BufferOverflow):
        framer.receive_data(b"{0040}" + b"A" * 1000)


def test_truncated_frame_at_eof():
    framer = BracedFramer()
    assert feed(framer, [b"{000E}Open"]) == []
    with pytest.raises(BracedFrameError) as info:
        framer.eof()
    assert info.value.kind == "length_mismatch"
    framer2 = BracedFramer()
    framer2.receive_data(b"{00")
    with pytest.raises(BracedFrameError) as info2:
        framer2.eof()
    assert info2.value.kind == "truncated_header"


def test_not_utf8_payload():
    events = feed(BracedFramer(), [b"{000A}\xff\xfe\r\n{000A}OK\r\n"])
    assert [e.kind for e in errors(events)] == ["not_utf8"]
    assert errors(events)[0].reply_text() == "ERROR 903 : payload is not UTF-8"
    assert payloads(events) == ["OK"]


@pytest.mark.parametrize("chunked", [False, True])
def test_drain_matches_next_event(chunked):
    """The batched hot path yields exactly what next_event yields, errors in place."""
    data = (encode_braced("Open A") + b"{000F}Open A\r\n" + b"junk\r\n" + encode_braced("x" * 300)
            + b"{000A}\xff\xfe\r\n" + encode_braced("Info a\r\nb") + encode_braced("OK")
            + b"{00")
    chunks = bytewise(data) if chunked else [data]

    def norm(items):
        return [i.payload if isinstance(i, BracedFrame) else i if isinstance(i, str)
                else (type(i).__name__, i.kind, str(i)) for i in items]

    slow = norm(feed(BracedFramer(), chunks))
    fast_framer = BracedFramer()
    fast: list = []
    for c in chunks:
        fast_framer.receive_data(c)
        fast.extend(fast_framer.drain())
    assert norm(fast) == slow
    assert "Open A" in slow and "OK" in slow and "Info a\r\nb" in slow
