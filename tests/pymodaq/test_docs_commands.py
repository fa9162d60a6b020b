"""Every command docs/pymodaq.md shows works as written (house rule). Listening ports are the
one substitution: a test binds port 0, never the documented 6341."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli_helpers import labbridge_cmd, port_of, run_cli, serving
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
    "python bench/pymodaq_tls.py",
    *(TLS_KEYS := (
        "labbridge keys tls-ca --dir examples/pymodaq-tls/keys",
        "labbridge keys tls-cert main --dir examples/pymodaq-tls/keys --host 127.0.0.1",
        "labbridge keys tls-cert camera-pc --dir examples/pymodaq-tls/keys",
    )),
    "labbridge serve examples/pymodaq-tls/main.yaml",
    "labbridge serve examples/pymodaq-tls/camera.yaml",
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
    for opt in ("--dim", "--stretch", "--png16", "--no-npy", "--timeout", "--ready-file",
                "--allow"):
        assert opt in res.stdout


def test_bench_and_pytest_commands_exist():
    # the bench takes ~30 s and the pytest commands are this suite: check they would run
    for bench in ("bench/frames.py", "bench/pymodaq_tls.py"):
        res = subprocess.run([sys.executable, bench, "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    assert (REPO / "tests" / "pymodaq").is_dir()
    assert "interop:" in (REPO / "pyproject.toml").read_text()


def test_tls_recipe(tmp_path):
    """The "Access and TLS" recipe, in a copy of the examples (the keys are written beside
    them): the keys commands, then both nodes; the main node logs the registration by the
    camera's certificate identity, as the page says."""
    pytest.importorskip("cryptography")
    work = tmp_path / "repo"
    tls_dir = work / "examples" / "pymodaq-tls"
    tls_dir.mkdir(parents=True)
    for name in ("main.yaml", "camera.yaml"):
        shutil.copy(REPO / "examples" / "pymodaq-tls" / name, tls_dir / name)
    for command in TLS_KEYS:
        res = subprocess.run(labbridge_cmd(*shlex.split(command)[1:]), cwd=work,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    line = re.search(r"logs `(done: register .*?)`", " ".join(DOC.read_text().split()))
    assert line is not None
    (tmp_path / "main").mkdir()
    (tmp_path / "cam").mkdir()
    with serving(tls_dir / "main.yaml", tmp_path / "main") as (_main, info):
        port = port_of(info, service="pymodaq-tls")
        cam = tls_dir / "camera.yaml"
        cam.write_text(cam.read_text().replace("127.0.0.1:6342", f"127.0.0.1:{port}"))
        with serving(cam, tmp_path / "cam"):
            # The node's output goes to a file (tests/cli_helpers.serving); it is polled with
            # a deadline, as the ready file is: there is no other channel to a subprocess.
            log = tmp_path / "main" / "serve.log"
            deadline = time.monotonic() + 30
            while line.group(1) not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, "no registration in the main node's log"
                time.sleep(0.05)
