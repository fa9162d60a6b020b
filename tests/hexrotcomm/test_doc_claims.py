"""Every command shown in docs/hexrotcomm.md works as written (house rule).

The ``sh`` blocks are read from the document: the first line of each serves a node, the others
are ``labbridge`` calls run with the same argument parsing as the shell (``shlex``) through
``labbridge.cli.main``. Tests never bind fixed ports, so the node is served on a free port and
the documented port (5570, 5560) is replaced by it in the calls; that is the only change. A
call whose comment says "exit code 1" must exit with 1, every other one with 0. The Python
example runs as a script against the served mock, with the same port replacement.
"""

from __future__ import annotations

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
    cfg = yaml.safe_load((REPO / serve[2]).read_text())
    assert cfg["devices"][0]["generation"] == "A"
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


BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", TEXT, re.S)


def test_tls_recipe(tmp_path, capsys, monkeypatch):
    """The TLS block of "Access and TLS" as written, in a fresh directory holding the two
    example node files: the keys commands, the mock served (on a free port instead of 5570),
    the rotator calls with their documented exit codes and output, and the CSC node; the
    mock's audit names the certificate as the document says."""
    assert len(BASH_BLOCKS) == 1
    lines = BASH_BLOCKS[0].splitlines()
    examples = tmp_path / "examples" / "hexrot-tls"
    examples.mkdir(parents=True)
    for name in ("rotator-mock.yaml", "rotator-csc.yaml"):
        (examples / name).write_text((REPO / "examples" / "hexrot-tls" / name).read_text())
    monkeypatch.chdir(tmp_path)  # the document runs at the top of the repository
    mock: NodeProc | None = None
    port = 0
    try:
        for i, ln in enumerate(lines):
            if not ln.strip() or ln.startswith("#"):
                continue
            argv = shlex.split(ln, comments=True)
            assert argv[0] == "labbridge", ln
            if argv[1] == "keys":
                assert main(["--log-level", "error", *argv[1:]]) == 0, ln
                continue
            if argv[1] == "serve" and "rotator-mock" in argv[2]:
                # NodeProc serves its own copy of the file, next to the original.
                cfg = yaml.safe_load((tmp_path / argv[2]).read_text())
                mock = NodeProc(examples, cfg, "--port", "0", log_level="info")
                port = mock.ready()["services"][0]["port"]
                continue
            if argv[1] == "serve":  # the CSC node, pointed at the mock's port
                text = (tmp_path / argv[2]).read_text().replace("port: 5570", f"port: {port}")
                (examples / "csc").mkdir()
                assert mock is not None
                served = mock.count("connected")
                csc = NodeProc(examples / "csc", yaml.safe_load(
                    text.replace("../../keys", "../../../keys")), log_level="info")
                try:
                    csc.ready()
                    # The mock serves it: the handshake and the gate let the CSC in.
                    assert "client 127.0.0.1:" in mock.wait_line("connected", n=served + 1)
                finally:
                    assert csc.stop() == 0, "\n".join(csc.lines[-20:])
                assert not any("FAULT" in x for x in csc.lines), "\n".join(csc.lines[-20:])
                continue
            expected = 1 if "[exit 1]" in ln else 3 if "[exit 3]" in ln else 0
            args = [a.replace(":5570", f":{port}") for a in argv[1:]]
            code = main(["--log-level", "error", *args])
            out = capsys.readouterr()
            assert code == expected, (ln, out.out[-400:], out.err[-400:])
            # "# -> TEXT" on the next line: a line of stderr; "-> ..." on the line: stdout.
            for x in lines[i + 1:i + 2]:
                if x.startswith("# -> "):
                    want = x[len("# -> "):].replace(":5570", f":{port}")
                    assert want in out.err.splitlines(), (want, out.err)
            if '-> ..."state": "ENABLED"...' in ln:
                assert '"state": "ENABLED"' in out.out, out.out
        assert mock is not None
        line = mock.wait_line("done: SET_STATE")
        assert ("done: SET_STATE rotator (ENABLE) by csc@127.0.0.1 as operator via "
                "rotator-controller/tls") in line
        assert ("done: SET_STATE rotator (ENABLE) by csc@127.0.0.1 as operator via "
                "rotator-controller/tls") in TEXT.replace("\n", " ")
        refused = mock.wait_line("refused: SET_ENABLED_SUBSTATE")
        assert "by olivia@127.0.0.1 as observer" in refused
        assert mock.alive
    finally:
        if mock is not None:
            rc = mock.stop()
            assert rc == 0, "\n".join(mock.lines[-20:])
