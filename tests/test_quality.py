"""Static checks run as tests, so a laptop and CI run the same ones: import-linter layer
contracts (ARCHITECTURE.md), ruff, and mypy (strict on labbridge.protocol)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_layers_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[dev]')")
    res = _run([exe])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "BROKEN" not in res.stdout


def test_ruff_clean():
    res = _run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_clean():
    res = _run([sys.executable, "-m", "mypy"])
    assert res.returncode == 0, res.stdout + res.stderr
