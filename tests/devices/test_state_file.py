"""Atomic JSON state files and the tolerant loader (devices/state_file.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from labbridge.devices import state_file
from labbridge.devices.state_file import CoalescingWriter, load_json_tolerant, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "s.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [True]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [True]}
    assert os.listdir(path.parent) == ["s.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not JSON-serialisable, mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["s.json"]


def test_tolerant_load(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    assert load_json_tolerant(path) is None  # missing: quiet (info)
    cases = {b"{oops": "corrupt", b"\xff\xfe": "cannot read", b"[]": "JSON object"}
    for content, words in cases.items():
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert load_json_tolerant(path) is None
        assert words in caplog.text
    monkeypatch.setattr(state_file, "MAX_STATE_FILE_BYTES", 10)
    path.write_text('{"x": "' + "y" * 20 + '"}')
    with caplog.at_level(logging.WARNING):
        assert load_json_tolerant(path) is None
    assert "limit" in caplog.text
    monkeypatch.undo()
    path.write_text('{"x": 1}')
    assert load_json_tolerant(path) == {"x": 1}


async def test_coalescing_writer_ends_with_latest_state(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    state = {"n": 0}
    w = CoalescingWriter(path, lambda: dict(state))
    for i in range(1, 101):
        state["n"] = i
        w.schedule()
    await w.wait()
    assert json.loads(path.read_text()) == {"n": 100}
    assert 1 <= w.writes < 100  # coalesced, not one write per change
    state["n"] = 101
    w.schedule()
    await w.flush()
    assert json.loads(path.read_text()) == {"n": 101}


def test_coalescing_writer_without_a_loop_writes_now(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    w = CoalescingWriter(path, lambda: {"k": "v"})
    w.schedule()
    assert json.loads(path.read_text()) == {"k": "v"} and w.writes == 1


async def test_saved_waits_for_its_generation_and_changes_share_writes(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    state = {"n": 0}
    w = CoalescingWriter(path, lambda: dict(state))
    gens = []
    for i in range(1, 51):
        state["n"] = i
        gens.append(w.schedule())
    assert gens == list(range(1, 51))
    await asyncio.wait_for(asyncio.gather(*(w.saved(g) for g in gens)), 10)
    assert json.loads(path.read_text()) == {"n": 50}
    assert 1 <= w.writes < 50
    await asyncio.wait_for(w.saved(), 10)  # nothing new: returns at once
    assert w.writes < 50
