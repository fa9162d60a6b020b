"""A blocking facade for scripts: one private event loop in a background thread.

Scripts that do not use asyncio call ``portal.call(coro_fn, *args)``; the coroutine runs on
the portal's loop (the single event loop of that process) and the result or exception comes
back to the caller's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class BlockingPortal:
    """Runs an asyncio loop in a daemon thread until :meth:`close`."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labbridge-portal", daemon=True)
        self._thread.start()
        self._ready.wait()
        self._closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()
        # Cancel whatever is left, then close.
        pending = asyncio.all_tasks(self._loop)
        for t in pending:
            t.cancel()
        if pending:
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any,
             timeout: float | None = None) -> T:
        if self._closed:
            raise RuntimeError("portal is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("BlockingPortal.call() from inside its own loop would deadlock")

        async def runner() -> T:
            return await fn(*args)

        fut = asyncio.run_coroutine_threadsafe(runner(), self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> BlockingPortal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
