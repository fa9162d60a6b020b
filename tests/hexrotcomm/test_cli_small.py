"""Small CLI fixes: `labbridge ports` on a rotator mock (issue 15 item 6) and `labbridge
rotator status` against telemetry whose substate is NaN."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import yaml

from labbridge.cli import main
from labbridge.devices.hexrot.mock import RotatorMockController
from labbridge.links.hexrotcomm.mock_server import MockControllerServer
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "rotator-mock.yaml"


def test_ports_describes_a_gen_d_mock_as_listening(capsys):
    assert main(["ports", str(EXAMPLE), "--json"]) == 0
    eps = json.loads(capsys.readouterr().out)
    assert [(e["role"], e["port"]) for e in eps] == [("listen", 5570)]
    assert main(["ports", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "listens on:" in out and "connects to:" not in out


def test_ports_describes_a_gen_a_mock_as_connecting(tmp_path, capsys):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["devices"][0]["generation"] = "A"
    node_file = tmp_path / "a.yaml"
    node_file.write_text(yaml.safe_dump(cfg))
    assert main(["ports", str(node_file), "--json"]) == 0
    eps = json.loads(capsys.readouterr().out)
    assert [(e["role"], e["port"]) for e in eps] == [("connect", 5570), ("connect", 5571)]


class _MockInThread:
    """A gen-D rotator mock on its own event loop (the CLI runs its own with asyncio.run)."""

    def __init__(self, mock: RotatorMockController) -> None:
        self.mock = mock
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = MockControllerServer(self.mock)
        await server.start()
        self.port = server.port
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()

    def __enter__(self) -> _MockInThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_status_with_nan_substate_reports_null_not_a_traceback(capsys):
    mock = RotatorMockController("rot", "D")
    mock.telemetry["enabled_substate"] = math.nan  # a controller in a strange state
    with _MockInThread(mock) as srv:
        code = main(["--log-level", "error", "rotator", f"127.0.0.1:{srv.port}", "status",
                     "--timeout", "10"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert out["enabled_substate"] is None and out["state"] == "STANDBY"
