"""The dashboard's reader of a recorder file: bounded (thinned in SQLite), field series of
records, no frames decoded, devices' last metadata."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from labbridge.bus.recorder import RecordStore
from labbridge.protocol.telemetry.envelope import Encoding, encode_meta_fields
from labbridge.web import history as history_mod
from labbridge.web.history import RecorderHistory

NOW = 1_800_000_000.0


def _row(t: float, topic: str, value: object) -> tuple[object, ...]:
    return (t, t, topic, 1, 1, int(Encoding.JSON), json.dumps(value).encode(), None)


@pytest.fixture
def recording(tmp_path):
    path = tmp_path / "rec.sqlite"
    store = RecordStore(path)
    rows = []
    # 600 s at 100 Hz on one topic: 60 000 rows
    rows += [_row(NOW - 600 + i * 0.01, "lab.gauges.IG", 1e-9 * (1 + i % 7))
             for i in range(60_000)]
    rows += [_row(NOW - 300 + i, "lab.argus.scan", {"H1": 1.0 + i, "AX": 2.0})
             for i in range(300)]
    rows += [_row(NOW - 10 + i, "lab.notifier.heartbeat", {"kind": "heartbeat"})
             for i in range(10)]
    rows += [_row(NOW - 5, "lab.valves.A", {"state": 1, "locked": 0, "owner": ""})]
    rows += [_row(NOW - 60, "lab.gauges.meta", {"kind": "gauge_controller", "n": 1}),
             _row(NOW - 30, "lab.gauges.meta", {"kind": "gauge_controller", "n": 2})]
    frame = np.zeros((4, 4), np.uint16)
    rows.append((NOW - 2, NOW - 2, "lab.cam.frame", 1, 1, int(Encoding.NDARRAY),
                 frame.tobytes(), encode_meta_fields(Encoding.NDARRAY, 1, 1, NOW - 2,
                                                     "<u2", (4, 4))))
    store.write(rows, [])
    store.close()
    reader = RecorderHistory(path)
    yield reader
    reader.close()


def test_topics_are_the_plottable_ones(recording):
    topics = recording.topics(NOW - 700, NOW + 1)
    assert topics == ["lab.argus.scan", "lab.cam.frame", "lab.gauges.IG", "lab.valves.A"]


def test_series_are_thinned_in_the_database(recording, monkeypatch):
    decoded = 0
    real = history_mod._record

    def counting(row):
        nonlocal decoded
        decoded += 1
        return real(row)

    monkeypatch.setattr(history_mod, "_record", counting)
    out = recording.series(["lab.gauges.IG"], NOW - 600, NOW + 60, 500)
    pts = out["lab.gauges.IG"]
    assert 400 <= len(pts) <= 501 and decoded <= 501  # not 60 000 rows into Python
    assert pts[0][0] < NOW - 590 and pts[-1][0] == pytest.approx(NOW - 600 + 59_999 * 0.01)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(pts))


def test_every_series_of_the_window_with_record_fields_and_nothing_else(recording):
    out = recording.series(None, NOW - 600, NOW + 60, 50)
    assert set(out) == {"lab.gauges.IG", "lab.argus.scan.H1", "lab.argus.scan.AX"}
    assert out["lab.argus.scan.H1"][-1] == [NOW - 1, 300.0]
    # one field asked for: read from its record's topic
    assert set(recording.series(["lab.argus.scan.AX"], NOW - 600, NOW + 60, 50)) == {
        "lab.argus.scan.AX"}


def test_latest_metadata_per_device(recording):
    (meta,) = recording.latest_meta(NOW - 600)
    assert meta[0] == "lab.gauges.meta" and meta[2]["n"] == 2


def test_a_missing_file_is_no_history(tmp_path):
    reader = RecorderHistory(tmp_path / "none.sqlite")
    assert reader.series(None, 0, 1, 10) == {} and reader.topics(0, 1) == []
    assert reader.latest_meta(0) == []
