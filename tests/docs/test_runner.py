"""The docs runner fails what it should: a wrong exit status, missing output, a command that
never finishes, a background command that dies or ignores Ctrl-C, an unmarked pytest or pip
line. (No fixed port here: it runs in the suite's own network.)"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO
from tests.docs import runner
from tests.docs.runner import DocRun, matches


def run_doc(tmp_path, body: str) -> dict[str, dict]:
    work = tmp_path / "repo"
    shutil.copytree(REPO / "examples", work / "examples")
    doc = work / "doc.md"
    doc.write_text(body)
    return {r.command: r for r in DocRun("doc.md", doc, work).run()}


def test_one_shot_commands(tmp_path):
    results = run_doc(tmp_path, """```bash
echo hi                         # -> hi
echo hi                         # -> bye
echo 'a b c'                    # -> a ... c
false
sh -c 'exit 3'                  # [exit 3]
sh -c 'echo oops >&2; exit 3'   # exit code 3 -> oops
python -m pytest -q
pip install numpy
pip install -e .                # the suite's own installation
pip install 'labbridge[nosuchextra]'
rm -rf /                        # [untested: never]
```
""")
    status = {k: (r.status, r.reason) for k, r in results.items()}
    assert status["echo hi"][0] == "failed"  # the second one (same text) overwrote the first
    assert "expected output not shown: ['bye']" in status["echo hi"][1]
    assert status["echo 'a b c'"] == ("ok", "")
    assert status["false"] == ("failed", "exit code 1, expected 0")
    assert status["sh -c 'exit 3'"] == ("ok", "")
    assert status["sh -c 'echo oops >&2; exit 3'"] == ("ok", "")
    assert status["python -m pytest -q"][0] == "failed"
    assert "[untested: ...]" in status["python -m pytest -q"][1]
    assert status["pip install numpy"][0] == "failed"
    assert status["pip install -e ."][0] == "ok"
    assert status["pip install 'labbridge[nosuchextra]'"][0] == "failed"
    assert status["pip install 'labbridge[nosuchextra]'"][1].endswith(
        "not installed: nosuchextra (no such extra)")
    assert status["rm -rf /"] == ("untested", "never")


def test_exported_variables_reach_the_next_commands(tmp_path):
    results = run_doc(tmp_path, """```bash
export LB_DOC_A=1 LB_DOC_B="two words"
echo "$LB_DOC_A/$LB_DOC_B"              # -> 1/two words
```

```bash
export LB_DOC_C=$LB_DOC_A-3
sh -c 'echo "$LB_DOC_C"'                # -> 1-3
export 1BAD=x
```
""")
    assert results['echo "$LB_DOC_A/$LB_DOC_B"'].status == "ok"
    assert results["sh -c 'echo \"$LB_DOC_C\"'"].status == "ok"
    bad = results["export 1BAD=x"]
    assert bad.status == "failed" and "not a valid identifier" in bad.stderr


def test_a_command_that_never_finishes(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "ONE_SHOT_TIMEOUT", 1.0)
    results = run_doc(tmp_path, "```bash\nsleep 60\n```\n")
    assert results["sleep 60"].status == "failed"
    assert results["sleep 60"].reason == "did not finish within 1 s"


def test_background_commands(tmp_path):
    results = run_doc(tmp_path, """```bash
labbridge serve examples/valve-controller.yaml --port 0 --state-dir state
labbridge serve nope.yaml
labbridge monitor --timeout 0.2 127.0.0.1:9   # -> monitoring the valves on 127.0.0.1:9 (Ctrl-C to stop)
```
""")
    serve = results["labbridge serve examples/valve-controller.yaml --port 0 --state-dir state"]
    assert (serve.status, serve.reason, serve.exit_code) == ("ok", "ran until Ctrl-C", 0)
    nope = results["labbridge serve nope.yaml"]
    assert (nope.status, nope.reason) == ("failed", "exited with code 1 before it was ready")
    mon = results["labbridge monitor --timeout 0.2 127.0.0.1:9"]
    assert mon.status == "ok", mon


def test_a_background_command_that_ignores_ctrl_c(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "STOP_TIMEOUT", 1.0)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "labbridge").write_text("#!/bin/sh\ntrap '' INT\necho started\nexec sleep 30\n")
    (fake / "labbridge").chmod(0o755)
    work = tmp_path / "repo"
    work.mkdir()
    doc = work / "doc.md"
    doc.write_text("```bash\nlabbridge watch 127.0.0.1:5555\n```\n")
    run = DocRun("doc.md", doc, work)
    run.env["PATH"] = f"{fake}:{run.env['PATH']}"
    [result] = run.run()
    assert (result.status, result.reason) == ("failed", "did not stop within 1 s of Ctrl-C")


@pytest.mark.parametrize(("expected", "line", "ok"), [
    ("OK", "OK", True), ("OK", "  OK  ", True), ("OK", "ok", False),
    ("A1,...", "A1,B0,C0f3e2", True), ("H2,...,CDD,...", "H2,1.0,H1,2,CDD,3", True),
    ("a ... c", "a b c", True), ("a ... c", "a b d", False),
])
def test_matches(expected, line, ok):
    assert matches(expected, line) is ok
