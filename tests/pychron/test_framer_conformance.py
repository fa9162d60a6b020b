"""One conformance suite for every Pychron-family framer: whole, byte by byte, glued frames,
garbage, truncated and oversized input. Each framer is described by how to build it, how to
encode a message, and what a decoded event looks like."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from labbridge.protocol.base import BufferOverflow, ProtocolError
from labbridge.protocol.pychron.braced import BracedFrame, BracedFramer, encode_braced
from labbridge.protocol.pychron.raw import RawRequest, RawRequestReader
from labbridge.protocol.pychron.relay import (
    CrcReply,
    CrcReplyDecoder,
    RelayRequest,
    RelayRequestDecoder,
    encode_crc_reply,
    encode_relay_request,
)
from tests.pychron.framing_helpers import bytewise, feed


@dataclass
class Spec:
    name: str
    make: Callable[[], Any]
    make_small: Callable[[], Any]  # a framer with a small buffer limit
    encode: Callable[[str], bytes]
    event: Callable[[str], Any]
    persistent: bool = True


SPECS = [
    Spec("braced", BracedFramer, lambda: BracedFramer(max_frame=64), encode_braced,
         BracedFrame),
    Spec("relay", RelayRequestDecoder, lambda: RelayRequestDecoder(max_size=64),
         lambda m: encode_relay_request(RelayRequest("Extractionline", m, "1.2.3.4")),
         lambda m: RelayRequest("Extractionline", m, "1.2.3.4")),
    Spec("crc_reply", CrcReplyDecoder, lambda: CrcReplyDecoder(max_size=64),
         encode_crc_reply, CrcReply),
    Spec("raw", RawRequestReader, lambda: RawRequestReader(max_size=64),
         lambda m: m.encode() + b"\r", RawRequest, persistent=False),
]
MESSAGES = ["Open A", "GetValveStates", "GetStateChecksum A,B,C", "Set Label 25°C"]


def events(out):
    return [e for e in out if not isinstance(e, ProtocolError)]


def errors(out):
    return [e for e in out if isinstance(e, ProtocolError)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("msg", MESSAGES)
def test_whole_and_bytewise(spec, msg):
    data = spec.encode(msg)
    assert events(feed(spec.make(), [data])) == [spec.event(msg)]
    assert events(feed(spec.make(), bytewise(data))) == [spec.event(msg)]


@pytest.mark.parametrize("spec", [s for s in SPECS if s.persistent], ids=lambda s: s.name)
def test_glued(spec):
    data = b"".join(spec.encode(m) for m in MESSAGES * 5)
    assert events(feed(spec.make(), [data])) == [spec.event(m) for m in MESSAGES * 5]
    cut = [data[i:i + 7] for i in range(0, len(data), 7)]
    assert events(feed(spec.make(), cut)) == [spec.event(m) for m in MESSAGES * 5]


@pytest.mark.parametrize("spec", [s for s in SPECS if s.persistent], ids=lambda s: s.name)
def test_truncated_yields_nothing(spec):
    data = spec.encode("GetValveStates")
    for n in range(len(data)):
        assert events(feed(spec.make(), [data[:n]])) == []


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_oversized_is_refused_not_buffered(spec):
    framer = spec.make_small()
    with pytest.raises(ProtocolError) as info:
        framer.receive_data(b"{0040}" + b"9" * 200)
    assert info.value.kind == "too_large" and info.value.fatal
    assert isinstance(info.value, BufferOverflow) or spec.name == "raw"


def test_garbage_per_framer():
    # braced: errors then recovery at the next line
    out = feed(BracedFramer(), [b"\x00\xffjunk\r\n" + encode_braced("OK")])
    assert errors(out) and events(out) == [BracedFrame("OK")]
    # crc replies: a frame that is not hex-prefixed is fatal for that stream
    out = feed(CrcReplyDecoder(), [b"zzzzzzzz"])
    assert errors(out) and errors(out)[0].fatal
    # crc replies: a wrong checksum is reported
    out = feed(CrcReplyDecoder(), [b"000AOK0000"])
    assert errors(out)
    # relay: bare garbage is read as a (seed-form) request without a type and refused
    out = feed(RelayRequestDecoder(), [b"\x01\x02garbage\r"])
    assert errors(out) and not events(out)
    # raw: whatever it is, it is one request (the dispatcher answers ERROR 003)
    assert events(feed(RawRequestReader(), [b"\x00\xff\r"])) == [RawRequest("\x00\ufffd")]
