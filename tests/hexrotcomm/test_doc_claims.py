"""What docs/hexrotcomm.md shows that tests/docs does not check.

tests/docs runs every shell block of the document as written (exit codes, the ``-> TEXT``
output lines: one JSON object per call, the ports table, the TLS refusals). It runs no Python
block, and it cannot see what a node it serves in the background writes after it is ready. So
here: the Python example runs as a script against a served mock (on a free port instead of
5570, the only change), and the audit lines the "Access and TLS" section quotes are the ones
the mock writes when the CSC's certificate enables it and an observer's is refused.
"""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from labbridge.cli import main
from tests.conftest import REPO
from tests.hexrotcomm.node_proc import NodeProc

DOC = REPO / "docs" / "hexrotcomm.md"
TEXT = DOC.read_text()
PY_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)


def test_python_example(tmp_path):
    assert len(PY_BLOCKS) == 1
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


def test_tls_audit_lines_the_document_quotes(tmp_path, capsys, monkeypatch):
    """The example TLS mock (keys made as the document says, in a fresh directory), the CSC's
    certificate enabling it and olivia's (observer) stopping it: the mock's audit names each
    certificate, in the words the document quotes."""
    examples = tmp_path / "examples" / "hexrot-tls"
    examples.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for args in (["tls-ca"], ["tls-cert", "rotator-mock", "--host", "127.0.0.1"],
                 ["tls-cert", "csc"], ["tls-cert", "olivia"]):
        assert main(["--log-level", "error", "keys", *args]) == 0, args
    cfg = yaml.safe_load((REPO / "examples" / "hexrot-tls" / "rotator-mock.yaml").read_text())
    mock = NodeProc(examples, cfg, "--port", "0", log_level="info")
    try:
        port = mock.ready()["services"][0]["port"]
        tls = ["--tls-ca", "keys/ca.crt"]
        assert main(["--log-level", "error", "rotator", *tls, "--tls-cert", "keys/csc.crt",
                     "--tls-key", "keys/csc.pem", f"127.0.0.1:{port}", "enable"]) == 0
        assert main(["--log-level", "error", "rotator", *tls, "--tls-cert", "keys/olivia.crt",
                     "--tls-key", "keys/olivia.pem", f"127.0.0.1:{port}", "stop"]) == 1
        capsys.readouterr()
        done = mock.wait_line("done: SET_STATE")
        quoted = ("done: SET_STATE rotator (ENABLE) by csc@127.0.0.1 as operator via "
                  "rotator-controller/tls")
        assert quoted in done
        assert quoted in " ".join(TEXT.split())
        assert "by olivia@127.0.0.1 as observer" in mock.wait_line("refused: SET_ENABLED_SUBSTATE")
        assert mock.alive
    finally:
        rc = mock.stop()
    assert rc == 0, "\n".join(mock.lines[-20:])
