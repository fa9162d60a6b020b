"""The docs test's reading of markdown (tests/docs/mdshell.py): which lines are commands, what
their comments promise, which subcommands run until Ctrl-C."""

from __future__ import annotations

import pytest

from tests.docs.mdshell import (
    lint,
    long_running,
    option_value,
    parse_block,
    pip_extras,
    shell_blocks,
    split_and,
    split_comment,
)

DOC = """# Title

Some prose with `labbridge call 1.2.3.4:1 X` inline (not run).

```bash
labbridge serve examples/valve-controller.yaml     # a node
labbridge call 127.0.0.1:1061 Open A               # -> OK
labbridge call 127.0.0.1:1061 GetValveState Z      # [exit 1]
# -> ERROR 005 : Z is not a registered valve name
labbridge call --framing plain 127.0.0.1:1061 \\
    GetValveStates                                 # -> A1,...
python3 -m venv /opt/x                             # [untested: writes to /opt]
```

```python
print("not shell")
```

```sh
echo '# not a comment' # a comment
```
"""


def test_blocks_commands_and_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    blocks = shell_blocks(doc, "doc.md")
    assert [b.info for b in blocks] == ["bash", "sh"]
    cmds = blocks[0].commands
    assert [c.line for c in cmds] == [6, 7, 8, 10, 12]
    assert cmds[0].text == "labbridge serve examples/valve-controller.yaml"
    assert (cmds[1].expect, cmds[1].exit_code) == (["OK"], 0)
    assert (cmds[2].expect, cmds[2].exit_code) == (
        ["ERROR 005 : Z is not a registered valve name"], 1)
    assert cmds[3].text == "labbridge call --framing plain 127.0.0.1:1061 GetValveStates"
    assert cmds[3].expect == ["A1,..."]
    assert cmds[4].untested == "writes to /opt"
    assert blocks[1].commands[0].text == "echo '# not a comment'"
    assert lint(doc, "doc.md") == []


def test_lint_finds_commands_outside_shell_blocks(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# T\n\n```\nlabbridge serve x.yaml\n```\n\nText:\n\n    labbridge call a:1 B\n"
                   "\n```bash\nlabbridge ports x.yaml  # [untested: ]\n```\n\n```\n"
                   "labbridge serve a.yaml   <\u2500\u2500\u2500  labbridge serve b.yaml\n```\n")
    problems = lint(doc, "doc.md")
    assert problems[0].startswith("doc.md:4: 'labbridge serve x.yaml' is in a fence without a "
                                  "language")
    assert problems[1].startswith("doc.md:9: 'labbridge call a:1 B' is in an indented code "
                                  "block")
    assert problems[2] == "doc.md:12: [untested:] needs a reason"
    assert len(problems) == 3  # the diagram line is not a command


def test_lint_finds_python_and_export_lines_too(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```\nexport EPICS_CA_ADDR_LIST=127.0.0.1:5064\n"
                   "python -c \"import epics\"\npython -m p4p.client.cli get X\n"
                   "python examples/bluesky/plan.py run\npython is a language\n"
                   "export is a word\n```\n")
    problems = lint(doc, "doc.md")
    assert [p.split(":", 2)[1] for p in problems] == ["2", "3", "4", "5"]


@pytest.mark.parametrize(("line", "command", "comment"), [
    ("labbridge call a:1 Open A   # -> OK", "labbridge call a:1 Open A", "-> OK"),
    ("echo 'a # b' \"c # d\" # e", "echo 'a # b' \"c # d\"", "e"),
    ("echo a#b", "echo a#b", ""),
    ("# only a comment", "", "only a comment"),
])
def test_split_comment(line, command, comment):
    assert split_comment(line) == (command, comment)


def test_split_and():
    assert split_and("pip install -e . && labbridge demo") == ["pip install -e .",
                                                              "labbridge demo"]
    assert split_and("echo 'a && b' && true") == ["echo 'a && b'", "true"]


@pytest.mark.parametrize(("part", "sub"), [
    ("labbridge serve x.yaml", "serve"),
    ("labbridge --log-level debug serve x.yaml", "serve"),
    ("labbridge demo", "demo"),
    ("labbridge demo --exit-after-sequence", None),
    ("labbridge monitor 127.0.0.1:1061", "monitor"),
    ("labbridge monitor --once 127.0.0.1:1061", None),
    ("labbridge watch 127.0.0.1:5555", "watch"),
    ("labbridge watch --count 3 127.0.0.1:5555", None),
    ("labbridge record a:1 --db x.sqlite", "record"),
    ("labbridge dashboard examples/dashboard-web.yaml", "dashboard"),
    ("labbridge call a:1 Open A", None),
    ("python -m labbridge serve x", None),
])
def test_long_running(part, sub):
    assert long_running(part) == sub


@pytest.mark.parametrize(("part", "extras"), [
    ("pip install -e .", []),
    ("pip install -e '.[dev]'", ["dev"]),
    ("pip install 'labbridge[modbus,fast]'", ["modbus", "fast"]),
    ("python -m pip install labbridge", []),
    ("pip install numpy", None),
    ("pip install ./dist/labbridge-0.1.0-py3-none-any.whl", None),
    ("labbridge serve x", None),
])
def test_pip_extras(part, extras):
    assert pip_extras(part) == extras


def test_option_value():
    assert option_value("labbridge serve x --ready-file r.json", "--ready-file") == "r.json"
    assert option_value("labbridge serve x --ready-file=r.json", "--ready-file") == "r.json"
    assert option_value("labbridge serve x", "--ready-file") is None


def test_a_continued_line_keeps_its_first_line_number():
    cmds = parse_block("d.md", 10, "labbridge call \\\n  a:1 \\\n  Open A  # -> OK\nls\n")
    assert [(c.line, c.text) for c in cmds] == [(10, "labbridge call a:1 Open A"), (13, "ls")]
