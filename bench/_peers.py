"""Baseline servers for the benchmarks, each run in its own process.

    python bench/_peers.py braced-echo   # raw asyncio Protocol echo of braced frames
    python bench/_peers.py zmq-rep       # raw pyzmq REP echo, blocking receive

Each prints its TCP port on stdout, then serves until stdin closes. Both are the fastest
plain way to do the transport's part of the work: the echo parses the braced framing
(``{LLLL}payload\\r\\n``, length in hex, CRLF at the declared end) and writes each frame back;
the REP server blocks in ``recv`` (no poller in between) and sends each message back.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

from _common import run


class BracedEcho(asyncio.Protocol):
    """Frames are echoed as they are parsed; a bad frame drops the connection."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while end - pos >= 6:
            n = int(buf[pos + 1:pos + 5], 16)
            if end - pos < n:
                break
            if buf[pos:pos + 1] != b"{" or buf[pos + n - 2:pos + n] != b"\r\n":
                self.transport.abort()
                return
            pos += n
        if pos:
            self.transport.write(buf[:pos] if pos < end else buf)
        self.buf = buf[pos:]


async def echo_main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BracedEcho, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def zmq_main():
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    # The main thread only receives and sends; stdin closing ends the process.
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    recv, send = sock.recv, sock.send
    while True:
        send(recv())


if __name__ == "__main__":
    if sys.argv[1] == "braced-echo":
        run(echo_main())
    elif sys.argv[1] == "zmq-rep":
        zmq_main()
    else:
        raise SystemExit(f"unknown peer {sys.argv[1]!r}")
