"""A labbridge Publisher in its own process, for memory and CPU measurements
(tests/bus/test_limits.py). Not a test module.

Prints its URL, then publishes ``good.tick`` every 10 ms and answers one JSON line per
command line on stdin: ``stats`` -> RSS (KiB), CPU seconds, the publisher's counters;
``settled`` -> the same after a garbage collection and ``malloc_trim(0)`` (the allocator gives
back the memory it keeps freed), so that RSS counts what is still held.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import resource
import sys
import time

from labbridge.bus.publisher import Publisher


def trim() -> None:
    """Collect garbage and return the allocator's free memory to the system (glibc)."""
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc_trim(0)


def status_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    pub = Publisher("127.0.0.1", 0, name="limits-pub")
    await pub.start()
    print(pub.url, flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def tick() -> None:
        n = 0
        while True:
            n += 1
            pub.publish("good.tick", n)
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        while line := await reader.readline():
            if line.strip() in (b"stats", b"settled"):
                if line.strip() == b"settled":
                    trim()
                ru = resource.getrusage(resource.RUSAGE_SELF)
                print(json.dumps({
                    "rss_kib": status_kib("VmRSS"), "peak_kib": status_kib("VmHWM"), "cpu": ru.ru_utime + ru.ru_stime,
                    "wall": time.monotonic(),
                    "subscriptions": pub.subscription_count(),
                    "subscription_bytes": pub.subscription_bytes,
                    "peers_dropped": pub.peers_dropped, "disconnects": pub.disconnects,
                    "peers": len(pub._peers)}), flush=True)
    finally:
        ticker.cancel()
        pub.close()


if __name__ == "__main__":
    asyncio.run(main())
