"""The run path (numpy checks over a strided view of many frames at once) refuses a header
time step exactly where the one-frame path does: same frames handed out, same error."""

from __future__ import annotations

import pytest

from labbridge.protocol.base import NEED_DATA, ProtocolError
from labbridge.protocol.hexrotcomm import (
    HEADER,
    SIMPLE,
    SIMPLE_TELEMETRY,
    FrameDecoder,
    WireProfile,
)
from labbridge.protocol.hexrotcomm.framing import MAX_TIME_STEP

PROFILE = WireProfile.make(SIMPLE, "D")
BODY = SIMPLE_TELEMETRY.encode(SIMPLE_TELEMETRY.make())


def _stream(secs: list[int]) -> bytes:
    return b"".join(HEADER.encode((2, i, s, 0)) + BODY for i, s in enumerate(secs))


def _outcome(chunks: list[bytes], first_sec: int | None) -> tuple[list[int], str | None]:
    dec = FrameDecoder(PROFILE)
    if first_sec is not None:
        dec.receive_data(_stream([first_sec]))  # a header seen before: the reference time
    got: list[int] = []
    try:
        for c in chunks:
            dec.receive_data(c)
            while (ev := dec.next_event()) is not NEED_DATA:
                got.append(ev.tai_sec)
        dec.eof()
        while (ev := dec.next_event()) is not NEED_DATA:
            got.append(ev.tai_sec)
    except ProtocolError as exc:
        return got, f"{exc.kind}: {exc}"
    return got, None


@pytest.mark.parametrize("jump_at", [0, 1, 5, 11, 19])
@pytest.mark.parametrize("first_sec", [None, 1000])
@pytest.mark.parametrize("step", [MAX_TIME_STEP, MAX_TIME_STEP + 1, -(MAX_TIME_STEP + 1)])
def test_time_step_in_a_run(jump_at: int, first_sec: int | None, step: int) -> None:
    """20 frames in one chunk (checked as a run); the header time jumps by ``step`` from frame
    ``jump_at`` on. Expected, by the one-frame rules: a step over MAX_TIME_STEP from the
    previous header is refused as bad_header; the frame right before a bad header is never
    handed out (a frame handed out earlier, at the exact end of a read, stays handed out)."""
    secs = [1000 + (step if i >= jump_at else 0) for i in range(20)]
    got, err = _outcome([_stream(secs)], first_sec)
    frames = ([first_sec] if first_sec is not None else []) + secs
    bad = jump_at + (1 if first_sec is not None else 0)  # index of the bad header in frames
    if abs(step) <= MAX_TIME_STEP or bad == 0:
        assert err is None and got == frames
        return
    assert err is not None and err.startswith("bad_header: corrupt header: tai_sec=")
    assert got == frames[:max(bad - 1, 1 if first_sec is not None else 0)]
