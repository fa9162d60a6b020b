"""``current_tai`` keeps the offset it found last with the span it holds for: it must give
what ``tai_from_utc`` gives at every time, across leap seconds, in either direction."""

from __future__ import annotations

import pytest

from labbridge.protocol.hexrotcomm import tai


@pytest.mark.parametrize("times", [
    [1483228799.5, 1483228800.0, 1483228800.5, 1483228799.9, 2_000_000_000.0],
    [0.0, 63072000.0, 1230767999.0, 1230768000.0, 1341100800.0, 1.0],
    [-1e9, 1e10, 1435708799.999, 1435708800.0],
])
def test_current_tai_equals_tai_from_utc(monkeypatch: pytest.MonkeyPatch,
                                         times: list[float]) -> None:
    for t in times + times[::-1]:
        monkeypatch.setattr(tai.time, "time", lambda t=t: t)
        assert tai.current_tai() == tai.tai_from_utc(t), t
