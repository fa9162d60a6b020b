"""``labbridge`` with an actuation probe, for nodes run by the fault suite.

    python -m tests.faults.probe serve NODE.yaml ...      (same arguments as ``labbridge``)

With ``LB_PROBE_DIR`` set, every ``set_output`` of a simulated valve backend in this process
(each physical actuation) is appended to ``$LB_PROBE_DIR/actuations.log`` as one line
``enter <address> <level>`` when it starts and ``done <address> <level>`` when it returns.
If ``$LB_PROBE_DIR/hold-<address>`` exists when an actuation starts, the line ``held
<address>`` is written and the actuation waits (at most 60 s) until that file is removed: a
test uses this to know that a request has reached the valve and to cut the network before
the reply is sent, without racing a timer.

This is test instrumentation only: the node is the real ``labbridge`` CLI, unchanged, with one
observer wrapped around the simulated hardware.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from labbridge.devices.backends.sim import SimValveBackend


def install(probe_dir: Path) -> None:
    log_path = probe_dir / "actuations.log"
    original = SimValveBackend.set_output

    def write(line: str) -> None:
        with log_path.open("a", encoding="utf-8") as f:
            f.write(f"{line}\n")

    async def set_output(self: SimValveBackend, address: str, level: bool) -> None:
        write(f"enter {address} {int(level)}")
        hold = probe_dir / f"hold-{address}"
        if hold.exists():
            write(f"held {address}")
            deadline = time.monotonic() + 60.0
            # The test's only channel into this process is the file system: poll it.
            while hold.exists() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await original(self, address, level)
        write(f"done {address} {int(level)}")

    SimValveBackend.set_output = set_output  # type: ignore[method-assign]


def main() -> int:
    probe = os.environ.get("LB_PROBE_DIR")
    if probe:
        install(Path(probe))
    from labbridge.cli import main as cli_main

    return int(cli_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
