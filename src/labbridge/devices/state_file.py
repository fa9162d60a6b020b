"""Small JSON state files that survive crashes and power cuts.

A valve controller on a Raspberry Pi loses power without warning; valve states and software
locks must come back after a restart (issue 2 item 4; the real pyValve pickles its locks to
``<hidden_dir>/<manager>_soft_lock_state``, spec pychron.md section 5). Two rules:

* **Atomic write**: write a temporary file in the same directory, flush, fsync, then
  ``os.replace`` it over the old one (and fsync the directory where the platform allows), so a
  reader sees either the whole old file or the whole new one, never a torn write.
* **Tolerant load**: a missing, unreadable or corrupt file is logged as a warning and reads
  as "no saved state"; the device starts from its configuration defaults and never crashes.

:class:`CoalescingWriter` adds the asyncio side: many changes in a burst produce at most one
pending write on the loop, the write itself runs in a worker thread (fsync on an SD card can
take tens of milliseconds, which must not stall other clients, ARCHITECTURE.md principle 7),
and :meth:`CoalescingWriter.flush` writes synchronously at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: A state file larger than this is not ours (or is corrupt): refuse to parse it.
MAX_STATE_FILE_BYTES = 4 * 1024 * 1024


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable; not possible on every platform (Windows), so best effort.
    with contextlib.suppress(OSError, AttributeError):
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_json_tolerant(path: Path) -> dict[str, Any] | None:
    """Read a JSON object from ``path``; None (and a warning) when missing or unusable."""
    try:
        size = path.stat().st_size
        if size > MAX_STATE_FILE_BYTES:
            log.warning("state file %s is %d bytes (limit %d): ignored, starting from "
                        "configuration defaults", path, size, MAX_STATE_FILE_BYTES)
            return None
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.info("no state file %s yet: starting from configuration defaults", path)
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read state file %s (%s): starting from configuration defaults",
                    path, exc)
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        log.warning("state file %s is corrupt (%s): starting from configuration defaults",
                    path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("state file %s does not hold a JSON object: starting from configuration "
                    "defaults", path)
        return None
    return data


class StateNotSaved(OSError):
    """A change could not be written to its state file (it is not durable)."""


class CoalescingWriter:
    """Writes ``snapshot()`` to ``path`` after changes, at most one write pending at a time.

    :meth:`schedule` may be called on every change; it marks the state dirty and starts one
    writer task if none is running. The task writes in a worker thread and loops while more
    changes arrived during the write, so the file always ends with the latest state.

    Every change gets a generation number (returned by :meth:`schedule`); :meth:`saved` waits
    until the file holds that generation or a later one -- written and fsynced -- and raises
    :class:`StateNotSaved` if the write failed. A caller that must not acknowledge a change
    before it is durable awaits it (issue 13: a reply that went out before the write was lost
    with the node). Concurrent changes share one write.
    """

    def __init__(self, path: Path, snapshot: Callable[[], Any]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._io_lock = threading.Lock()
        self._requested = 0  # generation of the latest change
        self._written = 0  # generation the file holds
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        #: Number of completed writes (for tests and diagnostics).
        self.writes = 0

    def schedule(self) -> int:
        """Note that the state changed; a write follows soon on the running loop. Returns the
        change's generation (for :meth:`saved`)."""
        self._requested += 1
        self._dirty = True
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (synchronous use): write now
                self._write_now()
                return self._requested
            self._task = loop.create_task(self._run(), name=f"state-writer {self.path.name}")
        return self._requested

    async def saved(self, generation: int | None = None) -> None:
        """Wait until change ``generation`` (default: every change so far) is on disk;
        :class:`StateNotSaved` if its write failed."""
        gen = self._requested if generation is None else generation
        if self._written >= gen:
            return
        if self._task is None or self._task.done():
            # Nothing is writing (a failed write ended the task): write now, in a thread.
            self._dirty = True
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"state-writer {self.path.name}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((gen, fut))
        await fut

    async def _run(self) -> None:
        while self._dirty:
            self._dirty = False
            gen = self._requested
            data = self._snapshot()
            try:
                await asyncio.to_thread(self._write, data, gen)
            except OSError as exc:
                log.error("cannot write state file %s: %s", self.path, exc)
                self._settle(gen, self._not_saved(exc))
            else:
                self._settle(gen, None)

    def _not_saved(self, exc: OSError) -> StateNotSaved:
        return StateNotSaved(f"change made but not saved: state file {self.path} not "
                             f"written: {exc}")

    def _settle(self, gen: int, error: StateNotSaved | None) -> None:
        keep = []
        for wgen, fut in self._waiters:
            if fut.done():
                continue
            if wgen <= gen:
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
            else:
                keep.append((wgen, fut))
        self._waiters = keep

    def _write(self, data: Any, gen: int) -> None:
        with self._io_lock:
            write_json_atomic(self.path, data)
            self.writes += 1
            self._written = max(self._written, gen)

    def _write_now(self) -> None:
        self._dirty = False
        gen = self._requested
        try:
            self._write(self._snapshot(), gen)
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.path, exc)
            self._settle(gen, self._not_saved(exc))
        else:
            self._settle(gen, None)

    async def wait(self) -> None:
        """Wait until every scheduled write has been attempted (never raises)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def flush(self) -> None:
        """Finish any write in progress, then write the current state synchronously."""
        task = self._task
        if task is not None and not task.done():
            # Let the thread finish: cancelling would leave it writing an older state that
            # could land after ours.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        self._task = None
        self._write_now()
