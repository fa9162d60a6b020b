"""Socket monitors never freeze ZeroMQ (ADR 0126).

libzmq sends monitor events with a blocking send from its I/O thread while holding the
monitored socket's lock. With pyzmq's ``get_monitor_socket`` that send blocks for ever once
the reading end is closed before the monitor is disabled, or once 2,000 events are unread:
the I/O thread stops (no connection anywhere in the process makes progress) and closing the
monitored socket then waits for the lock in C, where no signal (pytest-timeout) can reach it.
``sockets.Monitor`` has an unlimited queue and disables the monitor before closing.

Each scenario runs in a child process with a deadline, so a regression fails instead of
hanging the test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCENARIO = textwrap.dedent("""
    import zmq
    from labbridge.bus import sockets

    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription is reported
    pub.bind("tcp://127.0.0.1:0")
    url = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    mon = sockets.Monitor(pub, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
    sync = zmq.Context.shadow(ctx.underlying)
    spub = zmq.Socket.shadow(pub.underlying)  # blocking calls on the same socket

    def churn(n):
        # n connections made and dropped: 2 events each on the publisher's monitor
        for _ in range(n):
            s = sync.socket(zmq.SUB)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(url)
            s.subscribe(b"")
            assert spub.poll(5000), "no subscription arrived: the I/O thread is stuck"
            spub.recv(zmq.NOBLOCK)
            s.close()

    def roundtrip():
        # a fresh pair of sockets in the same context still works
        rep = sync.socket(zmq.REP)
        rep.setsockopt(zmq.LINGER, 0)
        port = rep.bind_to_random_port("tcp://127.0.0.1")
        req = sync.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(f"tcp://127.0.0.1:{port}")
        req.send(b"ping")
        assert rep.poll(5000), "the I/O thread is stuck"
        rep.recv()
        rep.send(b"echo")
        assert req.poll(5000) and req.recv() == b"echo"
        req.close()
        rep.close()

    MODE
    print("ok", flush=True)
""")


def run(mode: str) -> subprocess.CompletedProcess[str]:
    code = SCENARIO.replace("MODE", textwrap.dedent(mode).strip())
    return subprocess.run([sys.executable, "-c", "import zmq.asyncio\n" + code],
                          capture_output=True, text=True, timeout=120)


def test_unread_monitor_does_not_block_the_io_thread():
    """1,500 connections (3,000 events) nobody reads: the context keeps working."""
    r = run("""
        churn(1500)
        roundtrip()
        mon.close()
        pub.close()
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_closed_monitor_then_events_then_close_socket():
    """Closing the monitor first, then more connection events, then closing the socket."""
    r = run("""
        churn(3)
        mon.close()
        churn(20)
        roundtrip()
        pub.close()
        roundtrip()
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
