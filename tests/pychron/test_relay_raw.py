"""Legacy relay frames and the F-RAW request reader."""

from __future__ import annotations

import pytest

from labbridge.protocol.pychron.crc import ChecksumMismatch
from labbridge.protocol.pychron.raw import (
    Framing,
    RawRequest,
    RawRequestReader,
    RawRequestTooLarge,
    detect_framing,
)
from labbridge.protocol.pychron.relay import (
    CrcReply,
    CrcReplyDecoder,
    RelayRequest,
    RelayRequestDecoder,
    decode_crc_reply,
    encode_crc_reply,
    encode_relay_request,
)
from tests.conftest import load_vectors
from tests.pychron.framing_helpers import bytewise, feed

V = load_vectors("pychron.json")["legacy_relay"]


@pytest.mark.parametrize("case", V["requests"], ids=lambda c: c["frame"][:24])
def test_relay_request_vectors(case):
    req = RelayRequest(case["type"], case["command"],
                       None if case["sender"] == "None" else case["sender"])
    assert encode_relay_request(req) == bytes.fromhex(case["frame_hex"])
    data = bytes.fromhex(case["frame_hex"])
    for chunks in ([data], bytewise(data)):
        events = feed(RelayRequestDecoder(), chunks)
        assert events == [req]
        parsed = case["processor_parses_as"]
        assert (events[0].process_type, events[0].request) == (parsed["request_type"],
                                                               parsed["data"])


def test_relay_request_forms():
    glued = b"".join(bytes.fromhex(c["frame_hex"]) for c in V["requests"])
    assert len(feed(RelayRequestDecoder(), [glued])) == len(V["requests"])
    # 2013 two-digit form and the seed's bare form.
    two = b"%02X" % len(b"Extractionline|Open A|1.2.3.4") + b"Extractionline|Open A|1.2.3.4"
    assert feed(RelayRequestDecoder(), [two]) == [RelayRequest("Extractionline", "Open A",
                                                               "1.2.3.4")]
    seed = feed(RelayRequestDecoder(), [b"System|Open V\r\n"])
    assert seed == [RelayRequest("System", "Open V", None)]
    assert seed[0].handler_type == "Extractionline"
    dec = RelayRequestDecoder()
    assert feed(dec, [b"System|Close V"]) == []
    assert dec.flush() == RelayRequest("System", "Close V", None)


@pytest.mark.parametrize("case", V["replies"], ids=lambda c: c["frame"][:20])
def test_crc_reply_vectors(case):
    assert encode_crc_reply(case["data"]) == bytes.fromhex(case["frame_hex"])
    assert decode_crc_reply(bytes.fromhex(case["frame_hex"])) == case["data"]
    ext = case["tcp_reply_to_external_client"].encode()
    assert decode_crc_reply(ext) == case["data"]
    assert feed(CrcReplyDecoder(), bytewise(ext)) == [CrcReply(case["data"])]


def test_crc_reply_bad_checksum():
    with pytest.raises(ChecksumMismatch):
        decode_crc_reply(b"000AOK75b8")


@pytest.mark.parametrize(
    ("first", "framing"),
    [(b"{000E}Open A\r\n", Framing.BRACED), (b'{"command": "Open"}', Framing.JSON),
     (b"{bad json", Framing.JSON), (b"Open A\r", Framing.PLAIN), (b"{00", None),
     (b"{000E", None), (b" {\"command\": 1}", Framing.JSON), (b"", None)],
)
def test_detect_framing(first, framing):
    assert detect_framing(first) == framing


def test_raw_reader_text_and_json():
    r = RawRequestReader()
    assert feed(r, bytewise(b"Open A\r")) == [RawRequest("Open A")]
    r = RawRequestReader()
    assert feed(r, [b"Open A\rClose A\r"]) == [RawRequest("Open A\rClose A")]
    r = RawRequestReader()
    assert feed(r, [b"Open A\r", b"Close A\r"]) == [RawRequest("Open A")]
    r = RawRequestReader()
    assert feed(r, bytewise(b'{"command": "Open", "value": "A}"}')) == [
        RawRequest('{"command": "Open", "value": "A}"}')]
    r = RawRequestReader()
    assert feed(r, [b"Open A"]) == []
    assert r.flush() == RawRequest("Open A")
    r = RawRequestReader()
    assert feed(r, [b"{bad json"]) == []
    assert r.flush() == RawRequest("{bad json")


def test_raw_reader_is_bounded():
    r = RawRequestReader(max_size=1024)
    with pytest.raises(RawRequestTooLarge):
        r.receive_data(b"x" * 2000)


class _CountingPattern:
    """Wraps a compiled pattern; counts the bytes each ``search`` has to look at."""

    def __init__(self, pattern, counter: list[int]) -> None:
        self.pattern = pattern
        self.counter = counter

    def search(self, buf, pos=0):
        self.counter[0] += len(buf) - pos
        return self.pattern.search(buf, pos)


@pytest.mark.parametrize("payload", [
    b"   \t " * 1000 + b"GetValveStates " + b"x" * 30_000 + b"\r",   # blanks, text, CR
    b" " * 500 + b'{"command": "Open", "value": "' + b"A" * 30_000 + b'"}',  # JSON
])
def test_raw_reader_work_is_linear_in_one_byte_chunks(monkeypatch, payload):
    """Each byte is looked at a bounded number of times, not once per later chunk (a copy
    and a rescan of the whole buffer per chunk made tiny chunks quadratic)."""
    import labbridge.protocol.pychron.raw as raw

    counter = [0]
    monkeypatch.setattr(raw, "_NON_BLANK", _CountingPattern(raw._NON_BLANK, counter))
    monkeypatch.setattr(raw, "_TERMINATOR", _CountingPattern(raw._TERMINATOR, counter))
    r = RawRequestReader(max_size=64 * 1024)
    events = feed(r, bytewise(payload))
    assert len(events) == 1 and isinstance(events[0], RawRequest)
    assert events[0].text == payload.decode().strip()
    assert counter[0] <= 2 * len(payload)  # quadratic would be ~len(payload)**2 / 2
    whole = RawRequestReader(max_size=64 * 1024)
    assert feed(whole, [payload]) == events
