"""Baseline servers for the benchmarks, each run in its own process.

    python bench/_peers.py echo      # raw asyncio length-prefixed echo (4-byte big-endian)
    python bench/_peers.py zmq-rep   # raw pyzmq REP echo

Each prints its TCP port on stdout, then serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import threading


def _loop_run(coro):  # uvloop when installed, as labbridge itself does
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray()
        sock = transport.get_extra_info("socket")
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        buf = self.buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from(">I", buf, pos)
            if len(buf) - pos < 4 + n:
                break
            out.append(bytes(buf[pos:pos + 4 + n]))
            pos += 4 + n
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))


async def echo_main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


def zmq_main():
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            sock.send(sock.recv())
    sock.close(0)
    ctx.term()


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        _loop_run(echo_main())
    elif sys.argv[1] == "zmq-rep":
        zmq_main()
    else:
        raise SystemExit(f"unknown peer {sys.argv[1]!r}")
