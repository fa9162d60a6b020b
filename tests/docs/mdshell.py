"""The shell commands of a markdown file, as the docs test runs them (docs/doc-tests.md).

* Commands live in fenced blocks whose info string is ``bash``, ``sh`` or ``shell``; blocks are
  taken in document order, lines in block order. A line ending in ``\\`` continues on the next.
* A ``#`` that starts a line or follows a blank (outside quotes) starts a comment. In the
  comment of a command:

  - ``-> TEXT``: TEXT is a line of the command's output (stdout or stderr, surrounding blanks
    ignored); ``...`` in TEXT stands for any text. A comment line ``# -> TEXT`` right after a
    command adds one more expected line.
  - ``[exit N]`` or ``exit code N``: the expected exit status (default 0).
  - ``[untested: REASON]``: the command is not run; REASON says why and must not be empty.

This module only parses (no I/O besides reading the file); tests/docs/runner.py executes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

SHELL_INFOS = frozenset({"bash", "sh", "shell"})

#: Subcommands that run until Ctrl-C, and the flag that makes each one finish by itself.
LONG_RUNNING = {"serve": None, "dashboard": None, "demo": "--exit-after-sequence",
                "monitor": "--once", "watch": "--count", "record": "--count"}
#: How a long-running subcommand says it is ready: its ready file ($LABBRIDGE_READY_FILE),
#: or its first line of output.
READY_BY_FILE = frozenset({"serve", "demo", "dashboard", "record"})

_EXIT = re.compile(r"\[exit (\d+)\]|\bexit code (\d+)\b")
_UNTESTED = re.compile(r"\[untested:([^\]]*)\]")
_GLOBAL_OPTIONS_WITH_VALUE = frozenset({"--log-level"})


@dataclass
class Command:
    """One command line of a shell block."""

    doc: str
    line: int  # 1-based line in the markdown file
    text: str  # the command as written, without its comment
    comment: str = ""
    expect: list[str] = field(default_factory=list)
    exit_code: int = 0
    untested: str | None = None  # the reason, when marked [untested: ...]

    @property
    def parts(self) -> list[str]:
        """The ``&&``-separated commands of the line, in order."""
        return split_and(self.text)

    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Block:
    doc: str
    line: int  # line of the opening fence
    info: str
    commands: list[Command]


def split_comment(line: str) -> tuple[str, str]:
    """``(command, comment)``: the comment starts at a ``#`` at the line start or after a
    blank, outside single and double quotes."""
    quote: str | None = None
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
            continue
        if ch == "\\" and quote != "'":
            escaped = True
            continue
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def split_and(text: str) -> list[str]:
    """Top-level ``&&`` parts of a command line (quotes respected)."""
    parts: list[str] = []
    quote: str | None = None
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif text.startswith("&&", i):
            parts.append(text[start:i].strip())
            start = i + 2
            i += 1
        i += 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def expectation(comment: str) -> str | None:
    """The TEXT of ``-> TEXT`` in a comment (markers removed), or None."""
    if "->" not in comment:
        return None
    text = comment.split("->", 1)[1]
    text = _UNTESTED.sub("", re.sub(r"\[exit \d+\]", "", text)).strip()
    return text or None


def parse_comment(cmd: Command) -> None:
    c = cmd.comment
    m = _UNTESTED.search(c)
    if m is not None:
        cmd.untested = m.group(1).strip()
    m2 = _EXIT.search(c)
    if m2 is not None:
        cmd.exit_code = int(m2.group(1) or m2.group(2))
    exp = expectation(c)
    if exp is not None:
        cmd.expect.append(exp)


def parse_block(doc: str, first_line: int, content: str) -> list[Command]:
    """Commands of a shell block whose first content line is ``first_line`` (1-based)."""
    commands: list[Command] = []
    pending = ""
    pending_line = 0
    for offset, raw in enumerate(content.splitlines()):
        line_no = first_line + offset
        if pending:
            raw = pending + " " + raw.strip()
        elif not raw.strip():
            continue
        text, comment = split_comment(raw)
        if text.endswith("\\") and not comment:
            pending = text[:-1].rstrip()
            pending_line = pending_line or line_no
            continue
        start = pending_line or line_no
        pending, pending_line = "", 0
        if not text:
            # A comment line: "# -> TEXT" adds to the previous command's expected output.
            exp = expectation(comment) if comment.lstrip().startswith("->") else None
            if exp is not None and commands:
                commands[-1].expect.append(exp)
            continue
        cmd = Command(doc, start, text, comment)
        parse_comment(cmd)
        commands.append(cmd)
    return commands


def _tokens(path: Path) -> list:  # type: ignore[type-arg]
    return MarkdownIt("commonmark").parse(path.read_text(encoding="utf-8"))


def shell_blocks(path: Path, doc: str | None = None) -> list[Block]:
    """Every shell block of a markdown file, with its commands."""
    name = doc or str(path)
    out = []
    for tok in _tokens(path):
        if tok.type != "fence" or tok.map is None:
            continue
        info = tok.info.strip().split(" ")[0].lower()
        if info in SHELL_INFOS:
            out.append(Block(name, tok.map[0] + 1, info,
                             parse_block(name, tok.map[0] + 2, tok.content)))
    return out


#: A line that starts like a command a reader would type (a diagram's or an output's lines do
#: not): labbridge, pip, python with -m / -c / a script, an export, EPICS and system tools.
_COMMANDS_SHOWN = re.compile(r"^\s*(\$ )?(labbridge|pip3?|python3?(\s+-m|\s+-c|\s+\S+\.py)"
                             r"|export\s+\w+=|curl|caget|caput|pvget|camonitor|sudo|systemctl"
                             r"|docker|git)\b")
#: Box-drawing characters and arrows: a line of a diagram, not a command.
_DRAWING = re.compile("[\u2190-\u21ff\u2500-\u257f]")


def lint(path: Path, doc: str | None = None) -> list[str]:
    """Problems of the convention: commands shown outside shell blocks (where no test runs
    them), ``[untested]`` without a reason."""
    name = doc or str(path)
    problems = []
    for tok in _tokens(path):
        if tok.map is None:
            continue
        info = tok.info.strip().split(" ")[0].lower() if tok.type == "fence" else ""
        if tok.type in ("fence", "code_block") and info not in SHELL_INFOS \
                and info in ("", "text", "console", "shell-session"):
            for offset, ln in enumerate(tok.content.splitlines()):
                if _COMMANDS_SHOWN.match(ln) and not _DRAWING.search(ln):
                    start = tok.map[0] + (2 if tok.type == "fence" else 1)
                    kind = "an indented code block" if tok.type == "code_block" else \
                        f"a ```{info} block" if info else "a fence without a language"
                    problems.append(f"{name}:{start + offset}: {ln.strip()!r} is in {kind}: "
                                    "put commands in a ```bash block (docs/doc-tests.md)")
    for block in shell_blocks(path, name):
        for cmd in block.commands:
            if cmd.untested is not None and not cmd.untested:
                problems.append(f"{cmd.where()}: [untested:] needs a reason")
    return problems


def subcommand(part: str) -> tuple[str | None, list[str]]:
    """``(subcommand, its arguments)`` of a ``labbridge ...`` command, else ``(None, [])``."""
    try:
        words = shlex.split(part)
    except ValueError:
        return None, []
    if not words or words[0] != "labbridge":
        return None, []
    i = 1
    while i < len(words) and words[i].startswith("-"):
        i += 2 if words[i] in _GLOBAL_OPTIONS_WITH_VALUE else 1
    if i >= len(words):
        return None, []
    return words[i], words[i + 1:]


def option_value(part: str, option: str) -> str | None:
    """The value of ``--option VALUE`` (or ``--option=VALUE``) in a command, else None."""
    try:
        words = shlex.split(part)
    except ValueError:
        return None
    for i, w in enumerate(words):
        if w == option and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(option + "="):
            return w.split("=", 1)[1]
    return None


def long_running(part: str) -> str | None:
    """The subcommand when ``part`` runs until Ctrl-C, else None."""
    sub, args = subcommand(part)
    if sub is None or sub not in LONG_RUNNING:
        return None
    finisher = LONG_RUNNING[sub]
    if finisher is not None and any(a == finisher or a.startswith(finisher + "=")
                                    for a in args):
        return None
    return sub


def pip_extras(part: str) -> list[str] | None:
    """For ``pip install`` of this package (``-e .``, ``'.[dev]'``, ``'labbridge[plot]'``):
    the extras it names; None for any other command (or a pip install of something else)."""
    try:
        words = shlex.split(part)
    except ValueError:
        return None
    if words[:1] == ["python"] and words[1:3] == ["-m", "pip"]:
        words = ["pip", *words[3:]]
    if words[:2] != ["pip", "install"]:
        return None
    targets = [w for w in words[2:] if not w.startswith("-")]
    if not targets:
        return None
    extras: list[str] = []
    for t in targets:
        m = re.fullmatch(r"(\.|labbridge)(\[([\w,\- ]+)\])?", t)
        if m is None:
            return None  # installs something else: the docs must mark it untested
        if m.group(3):
            extras.extend(e.strip() for e in m.group(3).split(","))
    return extras
