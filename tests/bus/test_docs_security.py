"""The commands of docs/security.md, "The bus", work as written (house rule).

The section's ``bash`` blocks run in a fresh directory, in order, as a user would type them:
the key commands, then the node file of the section's ``yaml`` block is served (the first line
of the second block) and the other lines are run against it. Tests never bind fixed ports, so
the node file's ``port: 5555`` becomes ``port: 0`` and ``:5555`` in the calls the port the
node got; and the public key the user is told to paste is pasted. Those are the only changes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

from tests.cli_helpers import labbridge_cmd, port_of, serving
from tests.conftest import REPO

DOC = REPO / "docs" / "security.md"
SECTION = DOC.read_text().split("## The bus (notifier, dashboard server)", 1)[1]
SECTION = SECTION.split("\n## ", 1)[0]
BASH = re.findall(r"```bash\n(.*?)```", SECTION, re.S)
YAML = re.findall(r"```yaml\n(.*?)```", SECTION, re.S)
PASTE = "<the recorder's public key>"


def _run(argv: list[str], cwd) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "labbridge", argv
    return subprocess.run(labbridge_cmd(*argv[1:]), cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_bus_section_has_the_blocks_this_test_runs():
    assert len(BASH) == 2 and len(YAML) == 1
    assert PASTE in YAML[0] and "port: 5555" in YAML[0]


def test_the_bus_section_commands_work_as_written(tmp_path):
    for line in BASH[0].strip().splitlines():
        res = _run(shlex.split(line, comments=True), tmp_path)
        assert res.returncode == 0, (line, res.stdout, res.stderr)
    assert oct(os.stat(tmp_path / "keys" / "recorder.key_secret").st_mode & 0o777) == "0o600"
    public = re.search(r'public-key = "(.{40})"',
                       (tmp_path / "keys" / "recorder.key").read_text()).group(1)
    assert public in res.stdout  # the line to paste, as printed
    lines = [ln for ln in BASH[1].strip().splitlines() if ln.strip()]
    serve = shlex.split(lines[0], comments=True)
    assert serve[:2] == ["labbridge", "serve"]
    node_file = tmp_path / serve[2]
    node_file.write_text(YAML[0].replace(PASTE, public).replace("port: 5555", "port: 0"))
    with serving(node_file, tmp_path / "serve") as (_, info):
        port = port_of(info, "zmq-pub")
        outputs = {}
        for line in lines[1:]:
            argv = [a.replace(":5555", f":{port}") for a in shlex.split(line, comments=True)]
            res = _run(argv, tmp_path)
            assert res.returncode == 0, (line, res.stdout, res.stderr)
            assert "Traceback" not in res.stderr
            outputs[argv[1]] = res
    assert len(outputs["watch"].stdout.splitlines()) == 3  # --count 3: three messages
    assert "valve-controller.notifier.heartbeat" in outputs["watch"].stdout
    assert "stored 3 messages" in outputs["record"].stderr
    assert "messages;" in outputs["history"].stderr  # its summary line
