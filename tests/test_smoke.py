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


def test_every_extra_is_used():
    """An optional extra exists for code that imports it (issue 15: 'visa' was used by nothing)."""
    import re
    import tomllib

    from tests.conftest import REPO

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    code = "\n".join(p.read_text(encoding="utf-8")
                     for d in ("src", "tests", "bench", "examples")
                     for p in (REPO / d).rglob("*.py"))
    unused = []
    for extra, reqs in extras.items():
        names = [re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower().replace("-", "_")
                 for r in reqs if not r.startswith("labbridge")]
        if names and not any(re.search(rf"^\s*(import|from) {n}\b", code, re.M) for n in names):
            unused.append(extra)
    assert not unused, f"extras nothing imports: {unused}"
