"""Every command docs/pymodaq.md shows works as written (house rule). Listening ports are the
one substitution: a test binds port 0, never the documented 6341."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np

from tests.cli_helpers import run_cli, serving
from tests.conftest import REPO
from tests.pymodaq.test_cli import _first_frame, _grab_from_example_camera

DOC = REPO / "docs" / "pymodaq.md"


def documented_commands() -> set[str]:
    text = DOC.read_text()
    block = re.findall(r"^    ((?:labbridge|python) [^#\n]*?)\s*(?:#.*)?$", text, re.M)
    inline = re.findall(r"`((?:labbridge|python) [^`]*)`", text)
    return {c.strip() for c in block + inline}


EXPECTED = {
    "labbridge serve examples/pymodaq-camera.yaml",
    "labbridge grab 127.0.0.1:6341 --out frame.png",
    "labbridge serve examples/pymodaq-server.yaml",
    "labbridge grab --help",
    "python bench/frames.py",
    "python -m pytest -q tests/pymodaq",
    "python -m pytest -q tests/pymodaq -m interop",
}


def test_the_doc_shows_exactly_the_commands_tested_here():
    assert documented_commands() == EXPECTED


def test_quick_start_grab_from_the_camera_node(tmp_path):
    """``labbridge serve examples/pymodaq-camera.yaml`` + ``labbridge grab 127.0.0.1:6341
    --out frame.png``, on a free port; its output line is the documented one."""
    stdout, out = _grab_from_example_camera(tmp_path)
    line = stdout.strip().splitlines()[-1]
    doc = re.search(r"# (frame\.png: .*)$", DOC.read_text(), re.M)
    assert doc is not None
    assert line.replace(str(out.parent) + "/", "") == doc.group(1)
    assert np.array_equal(np.load(out.with_suffix(".npy")), _first_frame())


def test_serve_the_server_example(tmp_path):
    with serving(REPO / "examples/pymodaq-server.yaml", tmp_path) as (proc, info):
        assert any(s["service"] == "pymodaq-server" for s in info["services"])
        assert proc.poll() is None


def test_grab_help_lists_the_documented_options():
    res = run_cli("grab", "--help")
    assert res.returncode == 0
    for opt in ("--dim", "--stretch", "--png16", "--no-npy", "--timeout", "--ready-file"):
        assert opt in res.stdout


def test_bench_and_pytest_commands_exist():
    # the bench takes ~30 s and the pytest commands are this suite: check they would run
    res = subprocess.run([sys.executable, "bench/frames.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (REPO / "tests" / "pymodaq").is_dir()
    assert "interop:" in (REPO / "pyproject.toml").read_text()
