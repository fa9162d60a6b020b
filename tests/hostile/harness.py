"""Cheap hostile clients and the health checks every hostile test ends with (issue 13).

Each test runs real ``labbridge serve`` node processes (the node files of the demo lab), drives
one listening endpoint kind with hostile clients, then checks that the node

* is alive,
* serves a new well-behaved client within :data:`DEADLINE`,
* does not spin: its CPU time over a quiet interval (measured by waiting on the process's own
  exit event with a timeout, no sleep) stays under :data:`MAX_CPU_SHARE` of that interval,
* grew its RSS (``/proc/<pid>/status``) by at most :data:`MAX_RSS_GROWTH_KIB`,
* changed no device state.

The hostile clients:

* **trickle** -- connections that send a partial message, then one byte at a time;
* **hog** -- many connections that hold a slot and send nothing;
* **huge** -- messages that declare a huge length (or are huge) and send a little of it;
* **never-read** -- peers that send requests and never read a reply;
* **half-closed** -- partial requests followed by EOF, held open during the quiet interval
  (a server that loops on EOF would spin there).

All of them stay connected while the well-behaved client is served and through the quiet
interval; RSS is read after they are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from labbridge.node.demo import COMPONENTS
from tests.conftest import REPO

#: A well-behaved client must be served within this many seconds after the attack.
DEADLINE = 10.0
#: Seconds of quiet over which CPU use is measured.
QUIET = 2.0
#: Generous: a node doing its normal housekeeping uses a few percent.
MAX_CPU_SHARE = 0.5
#: RSS growth allowed over the whole attack (all connections closed again).
MAX_RSS_GROWTH_KIB = 64 * 1024
#: Connections per hog attack: more than a default 1024-slot server holds (and more than a
#: quarter of it, the default per-address cap), far more than any small server's slots.
HOGS = 1100
TRICKLERS = 100


def demo_config(key: str) -> dict[str, Any]:
    """The node file the demo lab writes for component ``key`` (one that needs no other)."""
    component = next(c for c in COMPONENTS if c.key == key)
    return component.build({})


@dataclass
class Node:
    """A ``labbridge serve`` subprocess and what its ready file says."""

    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def endpoint(self, protocol: str, service: str | None = None) -> tuple[str, int]:
        for s in self.info["services"]:
            if s["protocol"] == protocol and (service is None or s["service"] == service):
                host = str(s.get("host") or "127.0.0.1")
                return ("127.0.0.1" if host in ("0.0.0.0", "*") else host), int(s["port"])
        raise KeyError((protocol, service))

    def path(self, service: str | None = None) -> str:
        for s in self.info["services"]:
            if s["protocol"] == "unix" and s.get("role", "listen") == "listen" and (
                    service is None or s["service"] == service):
                return str(s["path"])
        raise KeyError(("unix", service))

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def cpu_seconds(self) -> float:
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def quiet_cpu_share(self, seconds: float = QUIET) -> float:
        """CPU time / wall time over ``seconds`` of quiet: the wait is the process's exit
        event with a timeout (it must not exit)."""
        cpu0, t0 = self.cpu_seconds(), time.monotonic()
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
        else:
            raise AssertionError(f"the node exited during the quiet interval; see {self.log}")
        cpu1, t1 = self.cpu_seconds(), time.monotonic()
        return (cpu1 - cpu0) / (t1 - t0)


@contextlib.contextmanager
def serve(config: dict[str, Any], workdir: Path, name: str) -> Iterator[Node]:
    """Run ``labbridge serve`` on ``config`` until the block ends (SIGTERM, then SIGKILL)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    ready = workdir / f"{name}.ready.json"
    ready.unlink(missing_ok=True)
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "labbridge", "--log-level", "info", "serve", str(path),
             "--ready-file", str(ready), "--state-dir", str(workdir / f"{name}-state")],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # the ready file is the only readiness event of a child
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}: "
                                     f"{log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not ready in 30 s; see {log}")
            time.sleep(0.02)
        yield Node(proc, json.loads(ready.read_text()), log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- hostile clients ------------------------------------------------------------------------------
class _Sink(asyncio.Protocol):
    """A client connection that discards what it gets (or never reads: ``read=False``)."""

    def __init__(self, read: bool) -> None:
        self.read = read
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.read:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return True  # keep our side open: we decide when to go

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)


@dataclass
class Attack:
    """Everything the hostile clients of one test opened, closed together at the end."""

    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    closers: list[Callable[[], Any]] = field(default_factory=list)
    refused: int = 0

    async def connect(self, host: str, port: int | None = None, first: bytes = b"", *,
                      read: bool = True, unix: bool = False, hold: bool = False,
                      rcvbuf: int | None = None) -> _Sink | None:
        loop = asyncio.get_running_loop()
        try:
            if unix:
                _, proto = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: _Sink(read), host), DEADLINE)
            elif rcvbuf is not None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), DEADLINE)
                _, proto = await loop.create_connection(lambda: _Sink(read), sock=sock)
            else:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _Sink(read), host, port), DEADLINE)
        except (OSError, TimeoutError):
            self.refused += 1
            return None
        assert proto.transport is not None
        self.transports.append(proto.transport)
        if first:
            proto.transport.write(first)
        return proto

    async def hog(self, host: str, port: int | None = None, n: int = HOGS, first: bytes = b"",
                  *, unix: bool = False) -> None:
        """``n`` connections that hold a slot (``first`` bytes, then nothing)."""
        for _ in range(n):
            await self.connect(host, port, first, unix=unix)

    async def trickle(self, host: str, port: int | None = None, head: bytes = b"",
                      byte: bytes = b"A", n: int = TRICKLERS, seconds: float = 2.0,
                      interval: float = 0.1, *, unix: bool = False) -> None:
        """``n`` connections sending ``head``, then one ``byte`` each per ``interval``."""
        protos = [p for p in [await self.connect(host, port, head, unix=unix)
                              for _ in range(n)] if p is not None]
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for p in protos:
                if p.transport is not None and not p.transport.is_closing():
                    p.transport.write(byte)
            await asyncio.sleep(interval)  # the trickle's own pace

    async def half_closed(self, host: str, port: int | None = None, partial: bytes = b"",
                          n: int = 20, *, unix: bool = False) -> None:
        """Partial requests followed by EOF, kept open through the quiet interval."""
        for _ in range(n):
            p = await self.connect(host, port, partial, unix=unix)
            if p is not None and p.transport is not None and p.transport.can_write_eof():
                p.transport.write_eof()

    async def never_read(self, host: str, port: int | None, payload: bytes, *,
                         limit: int = 64 * 1024 * 1024, unix: bool = False) -> int:
        """Send ``payload`` over and over, never reading, until the peer stops reading us
        (our write blocks for a second) or ``limit`` bytes went out; returns bytes sent."""
        loop = asyncio.get_running_loop()
        if unix:
            _reader, writer = await asyncio.open_unix_connection(host)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
            _reader, writer = await asyncio.open_connection(sock=sock)
        writer.transport.pause_reading()
        self.transports.append(writer.transport)
        block = payload * max(1, 65536 // max(1, len(payload)))
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < limit:
                writer.write(block)
                sent += len(block)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break
        return sent

    def later(self, closer: Callable[[], Any]) -> None:
        self.closers.append(closer)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t
        self.tasks.clear()
        for tr in self.transports:
            with contextlib.suppress(AttributeError):  # already gone (asyncio clears _loop)
                tr.abort()
        self.transports.clear()
        for c in self.closers:
            result = c()
            if asyncio.iscoroutine(result):
                with contextlib.suppress(Exception):
                    await result
        self.closers.clear()
        await asyncio.sleep(0)  # let the aborts go out


async def udp_flood(host: str, port: int, payloads: list[bytes], count: int = 2000) -> None:
    """Datagrams from one socket that never reads the replies."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for i in range(count):
            with contextlib.suppress(BlockingIOError):
                sock.sendto(payloads[i % len(payloads)], (host, port))
            if i % 200 == 0:
                await asyncio.sleep(0)
    finally:
        sock.close()


# -- the end of every test ------------------------------------------------------------------------
async def check_health(node: Node, attack: Attack, rss_before_kib: int,
                       good: Callable[[], Awaitable[Any]],
                       state: Callable[[], Awaitable[Any]], state_before: Any) -> None:
    """The checks of the module docstring, in order. The hostile connections stay open while
    the well-behaved client is served and through the quiet interval (a lockout or a spin
    caused by them shows there); they are closed before RSS is read (memory kept after a
    connection ends shows there)."""
    assert node.alive(), f"the node died; see {node.log}"
    await asyncio.wait_for(good(), DEADLINE)
    share = await asyncio.to_thread(node.quiet_cpu_share)
    assert share < MAX_CPU_SHARE, f"CPU {share:.0%} of a quiet interval: spinning?"
    await attack.close()
    await asyncio.wait_for(good(), DEADLINE)  # every close processed before RSS is read
    grew = node.rss_kib() - rss_before_kib
    assert grew < MAX_RSS_GROWTH_KIB, f"RSS grew by {grew / 1024:.0f} MiB"
    assert await asyncio.wait_for(state(), DEADLINE) == state_before
    assert node.alive(), f"the node died; see {node.log}"


async def ask_plain(host: str, port: int, text: str, timeout: float = DEADLINE) -> str:
    """One Pychron-style request on a new connection, reply read until the server closes."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(text.encode() + b"\r")
        return (await asyncio.wait_for(reader.read(), timeout)).decode()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
