"""``BracedFramer.feed`` (the servers' and client's fast path: whole frames cut from the read
chunk itself) gives exactly what ``receive_data`` + ``drain`` give, on hand-written bytes cut
at every offset."""

from __future__ import annotations

import pytest

from labbridge.protocol.base import BufferOverflow
from labbridge.protocol.pychron.braced import BracedFrameError, BracedFramer

STREAMS = [
    b"{0017}GetValveState A\r\n",
    b"{0008}\r\n{000A}OK\r\n{000B}Foo\r\n",
    b"{000a}ok\r\n{000B}a\r\nb\r\n",  # lowercase hex; CRLF inside a payload
    b"{0009}\xff\r\n{000A}OK\r\n",  # not UTF-8, then a good frame
    b"garbage\n{000A}OK\r\n",  # no brace: resynchronise after the newline
    b"{00ZZ}x\r\n{000A}OK\r\n",  # bad digits
    b"{0004}\r\n{000A}OK\r\n",  # length below the minimum
    b"{000C}OK\r\n{000A}OK\r\n",  # miscounted: the CRLF comes early
    b"{000A}OK\r\n{000A}O",  # a partial frame left over
]


def _items(items: list[str | BracedFrameError]) -> list[str | tuple[str, str]]:
    return [i if isinstance(i, str) else (i.kind, str(i)) for i in items]


def _general(chunks: list[bytes], strict: bool) -> tuple[list, int]:
    f = BracedFramer(strict=strict)
    out: list = []
    for c in chunks:
        f.receive_data(c)
        out += _items(f.drain())
    return out, f.buffered


def _fast(chunks: list[bytes], strict: bool) -> tuple[list, int]:
    f = BracedFramer(strict=strict)
    out: list = []
    for c in chunks:
        out += _items(f.feed(c))
    return out, f.buffered


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("strict", [False, True])
def test_feed_matches_receive_and_drain_at_every_split(stream: bytes, strict: bool) -> None:
    assert _fast([stream], strict) == _general([stream], strict)
    for cut in range(1, len(stream)):
        chunks = [stream[:cut], stream[cut:]]
        assert _fast(chunks, strict) == _general(chunks, strict), cut
        assert _fast([memoryview(c) for c in chunks], strict) == _general(chunks, strict)


def test_feed_whole_frames_leave_nothing_buffered() -> None:
    f = BracedFramer()
    assert f.feed(b"{0017}GetValveState A\r\n{000A}OK\r\n") == ["GetValveState A", "OK"]
    assert f.buffered == 0


def test_feed_keeps_the_buffer_bound() -> None:
    f = BracedFramer(max_buffer=64)
    with pytest.raises(BufferOverflow):
        f.feed(b"{FFFF}" + b"x" * 100)
    assert f.buffered == 0
    f.feed(b"{0100}" + b"x" * 40)  # a partial frame within the bound is kept
    with pytest.raises(BufferOverflow):
        f.feed(b"x" * 40)  # and the bound counts what was held
