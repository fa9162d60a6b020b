"""A publisher with a broken clock cannot lose a recorder batch or crash `labbridge history`:
a NaN, infinite or absurd envelope timestamp is stored as the receive time (and counted); a
recording that already holds such a time prints and plots without a traceback."""

from __future__ import annotations

import json
import math
import time

import pytest

from labbridge.bus.publisher import Publisher
from labbridge.bus.recorder import Recorder, RecordStore
from labbridge.cli import main
from labbridge.cli.bus import _stamp
from labbridge.protocol.telemetry.envelope import Encoding
from tests.bus.helpers import until_joined

BAD = [math.nan, math.inf, -math.inf, 1e300, -5.0]


async def test_implausible_timestamps_are_stored_as_receive_time(tmp_path, capsys):
    db = tmp_path / "bad.sqlite"
    pub = Publisher(port=0)
    pub.open()
    rec = Recorder(db, pub.url, ("lab.",))
    await rec.start()
    t0 = time.time()
    try:
        await until_joined(rec.subscriber, lambda: pub.publish("lab.join.marker", 0))
        pub.publish("lab.good.x", 1.0, ts=1_700_000_000.0)
        for i, ts in enumerate(BAD):
            pub.publish("lab.bad.x", float(i), ts=ts)
        pub.publish("lab.good.x", 2.0, ts=1_700_000_001.0)
        await rec.subscriber.wait_for(lambda t, p, m: t == "lab.good.x" and m.seq == 2,
                                      timeout=10)
        await rec.flush()
    finally:
        await rec.stop()
        pub.close()
    t1 = time.time()

    assert rec.bad_ts == len(BAD)
    assert rec.lost == 0
    store = RecordStore(db, readonly=True)
    try:
        good = store.query("lab.good.x")
        assert [(r.time, r.number()) for r in good] == [(1_700_000_000.0, 1.0),
                                                        (1_700_000_001.0, 2.0)]
        bad = store.query("lab.bad.x")
        assert [r.number() for r in bad] == [float(i) for i in range(len(BAD))]
        for r in bad:
            assert r.time == r.received and t0 - 1 <= r.time <= t1 + 1
    finally:
        store.close()

    capsys.readouterr()
    assert main(["history", "lab.bad.x", "--db", str(db), "--since", "1h"]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == len(BAD)


def test_history_survives_an_absurd_stored_time(tmp_path, capsys):
    """An older recording may hold 1e300 (stored before the recorder checked)."""
    db = tmp_path / "old.sqlite"
    store = RecordStore(db)
    try:
        store.write([(1e300, 1_700_000_000.0, "lab.f.t", 1, 1, int(Encoding.JSON), b"21.5",
                      None),
                     (1_700_000_001.0, 1_700_000_001.0, "lab.f.t", 1, 2, int(Encoding.JSON),
                      b"22.5", None)], [])
    finally:
        store.close()
    capsys.readouterr()
    assert main(["history", "lab.f.t", "--db", str(db)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 2 and "Traceback" not in out.err
    assert lines[1].startswith("<time 1e+300> lab.f.t #1 21.5")


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, 1e300, -1e300])
def test_stamp_of_a_time_that_is_no_date(ts):
    assert _stamp(ts) == f"<time {ts!r}>"


def test_plausible_ts():
    from labbridge.bus.recorder import plausible_ts

    assert plausible_ts(1_700_000_000.0) and plausible_ts(0.0)
    assert not any(plausible_ts(t) for t in [None, *BAD])


# -- ready files (kept here with the bus CLI's: `labbridge grab --ready-file`) -----------------
async def test_grab_ready_file_is_written_atomically(tmp_path):
    """`grab` writes its ready file with devices.state_file.write_json_atomic: a unique temp
    name (a leftover ``grab.json.tmp`` is no obstacle) and a parent directory created."""
    from labbridge.cli.pymodaq import grab_once

    ready = tmp_path / "run" / "grab.json"
    ready.parent.mkdir()
    (tmp_path / "run" / "grab.json.tmp").mkdir()  # what a fixed temp name collides with
    with pytest.raises(TimeoutError):  # no GRABBER connects: the ready file is what counts
        await grab_once("127.0.0.1", 0, dim="2D", timeout=0.05, ready_file=str(ready))
    info = json.loads(ready.read_text(encoding="utf-8"))
    assert info["host"] == "127.0.0.1" and 0 < info["port"] <= 65535
    assert sorted(p.name for p in ready.parent.iterdir()) == ["grab.json", "grab.json.tmp"]

    nested = tmp_path / "new" / "dir" / "grab.json"
    with pytest.raises(TimeoutError):
        await grab_once("127.0.0.1", 0, dim="2D", timeout=0.05, ready_file=str(nested))
    assert json.loads(nested.read_text(encoding="utf-8"))["port"] > 0
