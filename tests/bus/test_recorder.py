"""Recorder: 100,000 messages stored without loss and read back through the query API and
`labbridge history`; gaps recorded; arrays and legacy lines kept."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import pytest

from labbridge.bus.publisher import Publisher
from labbridge.bus.recorder import Recorder, RecordStore
from labbridge.cli import main
from labbridge.cli.bus import parse_when
from labbridge.protocol.telemetry.envelope import Encoding
from tests.bus.helpers import until_joined

N = 100_000


async def _record(path, publish, *, topics=("",), **kw):
    """Start a publisher and a recorder, join, run ``publish(pub)``, stop the recorder."""
    pub = Publisher(port=0)
    pub.open()
    rec = Recorder(path, pub.url, topics, **kw)
    await rec.start()
    try:
        await until_joined(rec.subscriber, lambda: pub.publish("lab.join.marker", 0))
        await publish(pub, rec)
    finally:
        await rec.stop()
        pub.close()
    return rec


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 10 s idle; generous for a loaded CI machine
async def test_recorder_stores_100k_messages_without_loss(tmp_path, capsys):
    db = tmp_path / "bus.sqlite"
    t_start = time.time()

    async def flood(pub, rec):
        payload = {"v": 0, "pad": "x" * 40}
        for i in range(N):
            payload["v"] = i
            pub.publish("lab.gauge.p", payload)
            if i % 2000 == 0:
                await asyncio.sleep(0)   # as fast as the publisher goes, yielding now and then
        last = asyncio.ensure_future(rec.subscriber.wait_for(
            lambda t, p, m: t == "lab.gauge.p" and m.seq == N, timeout=240))
        await last

    rec = await _record(db, flood)
    assert rec.subscriber.received >= N + 1
    assert (rec.dropped, rec.lost, rec.subscriber.reconnects) == (0, 0, 0)

    store = RecordStore(db, readonly=True)
    try:
        rows = store.query("lab.gauge.p", since=t_start - 1)
        assert len(rows) == N
        assert [r.seq for r in rows] == list(range(1, N + 1))
        assert [r.value["v"] for r in rows[:3]] == [0, 1, 2] and rows[-1].value["v"] == N - 1
        assert store.count("lab.gauge.p") == N
        assert store.gaps("lab.gauge.p") == []
        assert len(store.query("lab.gauge.", prefix=True)) == N
        assert len(store.query("lab.gauge.p", limit=10)) == 10
    finally:
        store.close()

    capsys.readouterr()
    assert main(["history", "lab.gauge.p", "--db", str(db), "--since", "1h"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == N
    assert lines[0].split()[1:3] == ["lab.gauge.p", "#1"]
    assert json.loads(lines[-1].split(" ", 3)[3]) == {"pad": "x" * 40, "v": N - 1}
    assert f"{N} messages; 0 gaps" in out.err


async def test_gaps_arrays_and_legacy_are_recorded(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    img = np.arange(12, dtype=">i4").reshape(3, 4)

    async def mixed(pub, rec):
        pub.publish("lab.cam.frame", img, ts=1000.0)
        pub.encoder._seq["lab.valves.A"] = [b"lab.valves.A", 4]  # as if 5 messages were lost
        pub.publish("lab.valves.A", {"state": 1}, ts=1001.0)
        pub.publish_legacy(b"<Env,temp> 21.5")
        pub.publish_legacy(b'dashboard {"kind": "heartbeat", "ts": 5.0}')
        await rec.subscriber.wait_for(lambda t, p, m: t == "dashboard", timeout=10)
        live = await rec.query("lab.cam.frame")   # the async query API flushes first
        assert len(live) == 1 and live[0].value.shape == (3, 4)

    rec = await _record(db, mixed)
    assert rec.gap_count >= 1
    store = RecordStore(db, readonly=True)
    try:
        (frame,) = store.query("lab.cam.frame")
        assert frame.encoding is Encoding.NDARRAY and frame.time == 1000.0
        np.testing.assert_array_equal(frame.value, img)
        (valve,) = store.query("lab.valves.A")
        assert valve.seq == 5 and valve.number() == 1.0
        (gap,) = store.gaps("lab.valves.A")
        assert (gap.expected, gap.got, gap.missed, gap.late_join) == (1, 5, 4, True)
        (temp,) = store.query("<Env,temp>")
        assert temp.value == "21.5" and temp.number() == 21.5 and temp.seq is None
        (hb,) = store.query("dashboard")
        assert hb.value == {"kind": "heartbeat", "ts": 5.0}
        topics = dict(store.topics())
        assert topics["lab.cam.frame"] == 1
    finally:
        store.close()

    capsys.readouterr()
    assert main(["history", "lab.", "--prefix", "--db", str(db), "--format", "json"]) == 0
    out = capsys.readouterr()
    recs = [json.loads(x) for x in out.out.splitlines()]
    assert {r["topic"] for r in recs} >= {"lab.cam.frame", "lab.valves.A"}
    assert next(r for r in recs if r["topic"] == "lab.cam.frame")["value"] == img.tolist()
    assert main(["history", "lab.valves.A", "--db", str(db), "--format", "csv"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1].endswith(",lab.valves.A,5,1.0")
    assert "1 messages; 1 gaps (4 missed)" in out.err


async def test_history_png(tmp_path, capsys, monkeypatch):
    db = tmp_path / "p.sqlite"

    async def series(pub, rec):
        for i in range(50):
            pub.publish("lab.f.temp", 20.0 + i, ts=1_700_000_000.0 + i)
        await rec.subscriber.wait_for(lambda t, p, m: m.seq == 50, timeout=10)

    await _record(db, series)
    png = tmp_path / "out.png"
    with monkeypatch.context() as m:   # without the 'plot' extra: a clear message
        m.setitem(sys.modules, "matplotlib", None)
        assert main(["history", "lab.f.temp", "--db", str(db), "--png", str(png)]) == 1
        assert "pip install 'labbridge[plot]'" in capsys.readouterr().err
    import matplotlib  # noqa: F401  (the dev extra: missing means failing, not skipping)
    assert main(["history", "lab.f.temp", "--db", str(db), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["history", "lab.nothing", "--db", str(db), "--png", str(png)]) == 1


def test_history_errors(tmp_path, capsys):
    assert main(["history", "x", "--db", str(tmp_path / "missing.sqlite")]) == 1
    assert "no recording" in capsys.readouterr().err
    assert main(["history", "x", "--db", str(tmp_path / "m"), "--since", "yesterday-ish"]) == 2


@pytest.mark.parametrize("text, want", [
    ("now", 1000.0), ("10s", 990.0), ("2m", 880.0), ("1h", 1000.0 - 3600),
    ("1d", 1000.0 - 86400), ("@123.5", 123.5), ("30", 970.0),
])
def test_parse_when(text, want):
    assert parse_when(text, now=1000.0) == want


def test_parse_when_iso():
    assert parse_when("2026-01-31T12:00:00+00:00") == 1769860800.0
