"""Test-suite wide rules (ARCHITECTURE.md principle 9).

* Every async test fails if it leaves tasks running when it ends (leaked tasks).
* A global timeout is set in pyproject.toml (pytest-timeout), and no test gets less than
  ``TIMEOUT_FLOOR``; tests synchronise on events, never on sleeps, and bind to 127.0.0.1
  port 0.
* Vectors are the repository's own copy under tests/vectors/.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).parent / "vectors"
REPO = Path(__file__).resolve().parent.parent


def load_vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _restore_logging():
    """``labbridge.cli.main()``, run in-process by some tests, replaces the root logger's
    handlers and level: put them back, so a handler bound to one test's captured stderr does
    not outlive it and write 'Logging error' into a later test's output."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.fixture
async def _fail_on_leaked_tasks():
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    # Give cancelled tasks one loop turn to finish unwinding before judging.
    for _ in range(3):
        leaked = [t for t in asyncio.all_tasks() if t not in before and t is not current
                  and not t.done()]
        if not leaked:
            return
        await asyncio.sleep(0)
    for t in leaked:
        t.cancel()
    pytest.fail(f"test leaked {len(leaked)} running task(s): "
                + ", ".join(repr(t.get_coro()) for t in leaked[:5]))


#: No test is ended sooner than this many seconds. With pytest-timeout's thread method a
#: timeout ends the whole run, so a limit must never fire on a healthy test of a loaded
#: machine (2 cores shared by many jobs): it is there to catch hangs (docs/adr/0144). The
#: default (pyproject.toml) is this floor; an explicit ``@pytest.mark.timeout(N)`` below it
#: is raised to it.
TIMEOUT_FLOOR = 300.0


def _timeout_of(item: pytest.Item) -> float | None:
    mark = item.get_closest_marker("timeout")
    if mark is None:
        return None
    value = mark.args[0] if mark.args else mark.kwargs.get("timeout")
    return None if value is None else float(value)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and inspect.iscoroutinefunction(fn):
            item.fixturenames.insert(0, "_fail_on_leaked_tasks")
        limit = _timeout_of(item)
        if limit is not None and 0 < limit < TIMEOUT_FLOOR:
            item.add_marker(pytest.mark.timeout(TIMEOUT_FLOOR), append=False)
