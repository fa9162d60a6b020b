"""A hostile subscriber in its own process (tests/bus/test_limits.py). Not a test module.

    python attacker_proc.py URL big        one subscription of 2 MiB
    python attacker_proc.py URL flood N    N distinct subscriptions of 120 bytes

It is a plain libzmq SUB socket. It keeps polling its socket, which makes libzmq send every
subscription again after each reconnect: the attack goes on until the process is killed.
Prints "ready" once its subscriptions are queued. (Its own process: libzmq frees a 2 MiB
subscription recursively and may crash at exit, which must not take the test runner along.)
"""

from __future__ import annotations

import sys
import time

import zmq


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SNDHWM, 0)  # queue every subscription (the default drops past 1000)
    sub.connect(url)
    if mode == "big":
        sub.setsockopt(zmq.SUBSCRIBE, b"a" * (2 << 20))
    else:
        for i in range(int(sys.argv[3])):
            # the digits reversed: prefixes differ from their first bytes, as costly as it gets
            sub.setsockopt(zmq.SUBSCRIBE, (b"%0120d" % (i * 2654435761 % 10**15))[::-1])
    print("ready", flush=True)
    while True:
        if sub.poll(50):
            sub.recv()
        time.sleep(0.001)


if __name__ == "__main__":
    main()
