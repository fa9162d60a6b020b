"""The recorder against a busy database and unwritable paths (issue 13; ADR 0124).

* another process holds the SQLite write lock for longer than a statement waits: nothing is
  dropped, the batch is retried with backoff; one log line when writing stops, one when it
  works again;
* if the outage outlasts ``max_pending`` waiting messages, the rest are recorded as a
  "not stored" gap, which `labbridge history` shows;
* a lock that outlasts stop(): stop() returns within ``stop_timeout`` and says what was lost;
* a read-only or missing directory: one line naming the path (recorder, `labbridge record`,
  a node's recorder service, `labbridge history`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labbridge.bus.publisher import Publisher
from labbridge.bus.recorder import NOT_STORED, Recorder, RecorderError, RecordStore
from labbridge.bus.sockets import BusError
from labbridge.cli import main
from labbridge.node.node import StartError, build_node
from tests.bus.helpers import until_joined

REC_LOGGER = "labbridge.bus.recorder"
TOPIC = "lab.p.v"

LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
print("released", flush=True)
"""


@contextlib.asynccontextmanager
async def locked(db: Path):
    """Another process holding the database's write lock until the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(db), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"locked\n"
        yield
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"released\n"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def recording(db: Path, **kw):
    pub = Publisher(port=0)
    pub.open()
    rec = Recorder(db, pub.url, flush_interval=0.05, busy_timeout=0.2, **kw)
    await rec.start()
    try:
        await until_joined(rec.subscriber, lambda: pub.publish("lab.join.marker", 0))
        await rec.flush()  # the markers are written: what follows is the test's
        yield pub, rec
    finally:
        await rec.stop()
        pub.close()


async def publish_all(pub: Publisher, rec: Recorder, n: int, start: int = 0) -> None:
    for i in range(start, n):
        pub.publish(TOPIC, i)
    await rec.subscriber.wait_for(lambda t, p, m: t == TOPIC and m.seq == n, timeout=30)


def rec_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == REC_LOGGER]


async def test_busy_database_is_retried_not_dropped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=REC_LOGGER)
    db = tmp_path / "bus.sqlite"
    async with recording(db) as (pub, rec):
        async with locked(db):
            await publish_all(pub, rec, 300)
            await asyncio.wait_for(rec.stalled.wait(), 30)   # a write found the lock
            failures = rec.write_failures
        await rec.flush()                                    # the lock is gone: all written
        assert rec.write_failures >= failures >= 1 and not rec.stalled.is_set()
    assert rec.dropped == 0 and rec.lost == 0
    store = RecordStore(db, readonly=True)
    try:
        assert [r.value for r in store.query(TOPIC)] == list(range(300))
        assert store.gaps(TOPIC) == []
    finally:
        store.close()
    lines = rec_lines(caplog)
    assert len(lines) == 2, lines  # one when writing stopped, one when it worked again
    assert "is locked by another program" in lines[0] and str(db) in lines[0]
    assert "again" in lines[1]


async def test_overflow_while_busy_is_a_not_stored_gap_that_history_shows(tmp_path, capsys):
    db = tmp_path / "bus.sqlite"
    async with recording(db, max_pending=100) as (pub, rec):
        async with locked(db):
            await publish_all(pub, rec, 150)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await rec.flush()   # a write attempt in the middle of the outage
            await publish_all(pub, rec, 300, start=150)
        await rec.flush()
        assert rec.dropped == 200
    store = RecordStore(db, readonly=True)
    try:
        assert [r.value for r in store.query(TOPIC)] == list(range(100))
        gaps = store.gaps(TOPIC)
    finally:
        store.close()
    # one gap for the outage -- or two adjoining ones, when a write was under way as the
    # lock went away (what it carried is one gap, what came meanwhile the next)
    assert 1 <= len(gaps) <= 2 and all(g.reason == NOT_STORED for g in gaps)
    assert gaps[0].expected == 101 and gaps[-1].got == 301
    assert all(a.got == b.expected for a, b in itertools.pairwise(gaps))
    assert sum(g.missed for g in gaps) == 200
    capsys.readouterr()
    assert main(["history", TOPIC, "--db", str(db)]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 100 + len(gaps)
    if len(gaps) == 1:
        assert lines[-1].endswith(f"{TOPIC} ! 200 messages received but not stored "
                                  "(#101..#300): writing was stuck")
    assert all("! " in x and "received but not stored" in x for x in lines[100:])
    assert out.err.strip() == ("100 messages; 0 gaps (0 missed); 200 messages received but "
                               f"not stored ({len(gaps)} gaps)")


async def test_lock_outlasting_stop_is_bounded_and_said_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=REC_LOGGER)
    db = tmp_path / "bus.sqlite"
    pub = Publisher(port=0)
    pub.open()
    rec = Recorder(db, pub.url, flush_interval=0.05, busy_timeout=0.2, stop_timeout=0.5)
    await rec.start()
    try:
        await until_joined(rec.subscriber, lambda: pub.publish("lab.join.marker", 0))
        await rec.flush()
        async with locked(db):
            await publish_all(pub, rec, 50)
            await asyncio.wait_for(rec.stalled.wait(), 30)
            await asyncio.wait_for(rec.stop(), 30)   # returns although the lock stays
    finally:
        await rec.stop()
        pub.close()
    assert rec.lost == 50
    errors = [r.getMessage() for r in caplog.records
              if r.name == REC_LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "50 messages could not be written" in errors[0]
    assert str(db) in errors[0]


# -- paths that cannot be written ---------------------------------------------------------------
@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write to -- root included (chattr +i), since tests may run as
    root."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a directory read-only for root here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=False)


def one_line(text: str) -> str:
    assert "\n" not in text.strip() and "Traceback" not in text, text
    return text.strip()


async def test_recorder_in_a_readonly_directory_is_one_line(readonly_dir):
    path = readonly_dir / "bus.sqlite"
    rec = Recorder(path, "tcp://127.0.0.1:1")
    with pytest.raises(RecorderError) as info:
        await rec.start()
    text = one_line(str(info.value))
    assert text.startswith(f"cannot record into {path}: ")
    assert "choose another path (path: in the node file, or --db)" in text
    assert isinstance(info.value, BusError)
    await rec.stop()


async def test_recorder_under_a_missing_directory_is_one_line(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    path = blocker / "lab" / "bus.sqlite"
    rec = Recorder(path, "tcp://127.0.0.1:1")
    with pytest.raises(RecorderError) as info:
        await rec.start()
    text = one_line(str(info.value))
    assert text.startswith(f"cannot record into {path}: cannot create {path.parent}: ")
    await rec.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labbridge", *args], capture_output=True,
                          text=True, timeout=60)


def test_record_command_readonly_directory_prints_one_line(readonly_dir):
    db = readonly_dir / "lab.sqlite"
    r = run_cli("record", "127.0.0.1:1", "--db", str(db), "--duration", "5")
    assert r.returncode == 1, r
    err = one_line(r.stderr)
    assert err.startswith(f"Error: cannot record into {db}: ") and r.stdout == ""


def test_history_of_something_that_is_no_recording_prints_one_line(tmp_path):
    junk = tmp_path / "notes.sqlite"
    junk.write_text("these are not the rows you are looking for\n" * 100)
    r = run_cli("history", "lab.", "--prefix", "--db", str(junk))
    assert r.returncode == 1, r
    assert one_line(r.stderr).startswith(f"Error: cannot read the recording {junk}: ")


async def test_node_recorder_in_a_readonly_state_directory(tmp_path, readonly_dir):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("node: lab\nservices:\n"
                   "  - {kind: notifier, name: bus, host: 127.0.0.1, port: 0}\n"
                   "  - {kind: recorder, name: rec, connect: [bus], path: bus.sqlite}\n")
    node = build_node(cfg, state_dir=readonly_dir)
    with pytest.raises(StartError) as info:  # names the node and the part; cause chained
        await node.start()
    assert isinstance(info.value.cause, BusError)
    assert str(info.value).startswith("cannot start node lab: service rec: cannot record into")
    text = one_line(str(info.value))
    assert str(readonly_dir / "bus.sqlite") in text


async def test_stop_during_a_write_keeps_the_rows(tmp_path):
    """stop() while a batch is handed to the writer thread but not written yet (the thread is
    busy, as on a loaded machine): the batch is written, not dropped. (Cancelling the flush
    cancelled the queued write, and the batch was lost without a word: the 100,000-message
    test found 5,140 rows missing under CPU load.)"""
    import threading

    db = tmp_path / "r.sqlite"
    pub = Publisher(port=0)
    pub.open()
    rec = Recorder(db, pub.url, (TOPIC,), flush_interval=0.05)
    await rec.start()
    blocker = threading.Event()
    stopping: asyncio.Task[None] | None = None
    try:
        await until_joined(rec.subscriber, lambda: pub.publish(TOPIC, -1))
        await rec.flush()
        before = rec.stored
        assert rec._executor is not None
        rec._executor.submit(blocker.wait, 60)  # the writer thread is busy
        for i in range(50):
            pub.publish(TOPIC, i)
        await rec.subscriber.wait_for(lambda t, p, m: bytes(p) == b"49", timeout=30)
        async with asyncio.timeout(30):
            while rec._in_flight == 0:  # noqa: ASYNC110 - the flush loop takes the batch
                await asyncio.sleep(0.01)
        stopping = asyncio.create_task(rec.stop())
        async with asyncio.timeout(30):  # stop() has cancelled the flush loop
            while rec._flusher is not None and not rec._flusher.cancelling():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        blocker.set()
        if stopping is None:
            await rec.stop()
        else:
            await asyncio.wait_for(stopping, 30)
        pub.close()
    assert rec.lost == 0
    store = RecordStore(db, readonly=True)
    try:
        assert [r.value for r in store.query(TOPIC)][-50:] == list(range(50))
        assert rec.stored == before + 50  # each once
        assert [g.reason for g in store.gaps(TOPIC) if g.reason] == []  # none "not stored"
    finally:
        store.close()
