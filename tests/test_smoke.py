"""The package imports and the console script answers."""

import subprocess
import sys

from labbridge import __version__
from labbridge.cli import main


def test_version_option(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "labbridge", "--help"], capture_output=True,
                         text=True, timeout=30, check=True)
    assert "serve" in out.stdout
