"""``buffer_updated`` says when a read only went on filling a frame's array (the stream then
skips asking for events): it must say so exactly while the array is incomplete, and the
message must come out whole, whatever the size of the reads."""

from __future__ import annotations

import numpy as np
import pytest

from labbridge.protocol.base import NEED_DATA
from labbridge.protocol.pymodaq import g3 as g3mod
from labbridge.protocol.pymodaq.objects import data_from_plugins, data_to_export


@pytest.mark.parametrize("read", [1000, 4096, 65536, 300_000])
def test_big_fill_reports_no_news_until_the_array_is_whole(read: int) -> None:
    a = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    msg = g3mod.encode_message(data_to_export("cam", [data_from_plugins("cam", [a])]))
    framer = g3mod.G3Framer(max_message=1 << 24)
    pos, events, quiet = 0, [], 0
    while pos < len(msg):
        buf = framer.get_buffer(-1)
        k = min(len(buf), len(msg) - pos, read)
        buf[:k] = msg[pos:pos + k]
        pos += k
        if framer.buffer_updated(k):
            while (ev := framer.next_event()) is not NEED_DATA:
                events.append(ev)
        else:
            quiet += 1
            assert framer.pending_big > 0  # only ever while an array is being filled
            assert framer.next_event() is NEED_DATA  # and asking would indeed give nothing
    while (ev := framer.next_event()) is not NEED_DATA:
        events.append(ev)
    assert len(events) == 1
    (arr,) = events[0].obj.data[0].data
    assert np.array_equal(arr, a)
    if read < 65536:
        assert quiet > 0  # the array's reads were recognised as such
