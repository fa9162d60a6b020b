"""Every command shown in docs/hexrotcomm.md works as written (house rule).

The ``sh`` blocks are read from the document: the first line of each serves a node, the others
are ``labbridge`` calls run with the same argument parsing as the shell (``shlex``) through
``labbridge.cli.main``. Tests never bind fixed ports, so the node is served on a free port and
the documented port (5570, 5560) is replaced by it in the calls; that is the only change. A
call whose comment says "exit code 1" must exit with 1, every other one with 0. The Python
example runs as a script against the served mock, with the same port replacement.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from labbridge.cli import main
from tests.conftest import REPO
from tests.hexrotcomm.node_proc import NodeProc
from tests.hexrotcomm.test_serve import _free_port_pair

DOC = REPO / "docs" / "hexrotcomm.md"
TEXT = DOC.read_text()
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", TEXT, re.S)
PY_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


@pytest.fixture(autouse=True)
def _restore_logging():
    """main() replaces the root logger's handlers and level: put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _calls(block: str) -> tuple[list[str], list[tuple[list[str], int]]]:
    """(serve argv, [(labbridge argv, expected exit code)]) of one sh block."""
    lines = [ln for ln in block.splitlines() if ln.strip()]
    serve = shlex.split(lines[0], comments=True)
    assert serve[:2] == ["labbridge", "serve"], lines[0]
    calls = []
    for ln in lines[1:]:
        argv = shlex.split(ln, comments=True)
        assert argv[0] == "labbridge", ln
        calls.append((argv[1:], 1 if "exit code 1" in ln else 0))
    return serve, calls


def _run_calls(calls: list[tuple[list[str], int]], doc_port: int, port: int,
               capsys: pytest.CaptureFixture[str]) -> None:
    for argv, expected in calls:
        argv = [a.replace(f":{doc_port}", f":{port}") for a in argv]
        code = main(["--log-level", "error", *argv])
        out = capsys.readouterr()
        assert code == expected, (argv, out.out[-400:], out.err[-400:])
        if argv[0] in ("rotator", "hexapod"):
            assert out.out.strip().startswith("{")  # one JSON object


def test_the_document_has_the_blocks_this_test_runs():
    assert len(SH_BLOCKS) == 3 and len(PY_BLOCKS) == 1
    assert "labbridge ports examples/rotator-mock.yaml" in TEXT


@pytest.mark.parametrize("index,doc_port", [(0, 5570), (2, 5560)])
def test_generation_d_blocks(tmp_path, capsys, index, doc_port):
    serve, calls = _calls(SH_BLOCKS[index])
    node_file = REPO / serve[2]
    node = NodeProc(tmp_path, yaml.safe_load(node_file.read_text()), "--port", "0",
                    log_level="warning")
    try:
        port = node.ready()["services"][0]["port"]
        _run_calls(calls, doc_port, port, capsys)
        assert node.alive
    finally:
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])


def test_generation_a_block(tmp_path, capsys):
    serve, calls = _calls(SH_BLOCKS[1])
    assert "generation: A in the node file" in SH_BLOCKS[1]
    cfg = yaml.safe_load((REPO / serve[2]).read_text())
    cfg["devices"][0]["generation"] = "A"  # as the document says
    port = _free_port_pair()
    cfg["services"][0]["port"] = port
    node = NodeProc(tmp_path, cfg, log_level="warning")
    try:
        node.ready()
        _run_calls(calls, 5570, port, capsys)
        assert node.alive
    finally:
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])


def test_python_example_and_ports(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the document's paths are relative to the repository
    assert main(["ports", "examples/rotator-mock.yaml"]) == 0
    assert "TCP      127.0.0.1:5570" in capsys.readouterr().out
    cfg = yaml.safe_load((REPO / "examples" / "rotator-mock.yaml").read_text())
    cfg["devices"][0]["config"].update({"velocity_limit": 3.5, "accel_limit": 1.0})
    node = NodeProc(tmp_path, cfg, "--port", "0", log_level="warning")
    try:
        port = node.ready()["services"][0]["port"]
        script = PY_BLOCKS[0].replace(", 5570,", f", {port},")
        assert script != PY_BLOCKS[0]
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "Change(" in res.stdout and "ENABLED" in res.stdout  # printed Change events
    finally:
        rc = node.stop()
    assert rc == 0, "\n".join(node.lines[-20:])
