"""Every command shown in README.md and docs/ works as written (docs/doc-tests.md).

For each markdown file: its shell blocks run in order on the installed package, in a copy of
the repository, in a private network namespace (so the documented fixed ports are used as
written and meet nothing else on the machine); each command must exit as documented and show
the documented output. Commands shown outside shell blocks and citations of things that are not
in the repository (missing files, issue numbers, the customer's spec and seed documents) fail
too. One test per file, so a failure names the file whose commands broke.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.docs.mdshell import lint, shell_blocks
from tests.netns import private_network

DOCS = sorted([REPO / "README.md",
               *(p for p in (REPO / "docs").rglob("*.md") if "adr" not in p.parts)])
IDS = [str(p.relative_to(REPO)) for p in DOCS]
#: Where the copy of the repository goes: outside /tmp, which the commands get empty.
_WORK_BASE = "/var/tmp" if Path("/var/tmp").is_dir() else None
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                      ".labbridge-state", "test-artifacts", ".pytest_cache",
                                      ".mypy_cache", ".ruff_cache", "node_modules", "*.sqlite",
                                      "*.sqlite-*", "keys")
# ("keys": key folders a developer made by following the docs, e.g. examples/lab/keys; the
# docs make their own, and `labbridge keys` refuses to overwrite a key.)


def test_the_docs_are_found():
    names = set(IDS)
    assert {"README.md", "docs/pychron.md", "docs/bus.md", "docs/deploy/README.md"} <= names
    assert sum(len(shell_blocks(p)) for p in DOCS) >= 10


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_commands_are_in_shell_blocks(doc):
    problems = lint(doc, str(doc.relative_to(REPO)))
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_every_command_works_as_written(doc):
    rel = str(doc.relative_to(REPO))
    if not any(b.commands for b in shell_blocks(doc, rel)):
        return  # nothing to run in this file (its prose and citations are checked apart)
    # The copy lives outside /tmp (the commands get a private, empty /tmp) in a short
    # directory, as a clone usually does: Unix socket paths under it must stay short.
    base = Path(tempfile.mkdtemp(prefix="lbdocs-", dir=_WORK_BASE))
    try:
        work = base / "repo"
        shutil.copytree(REPO, work, ignore=_COPY_IGNORE, symlinks=True)
        results_file = base / "results.json"
        proc = subprocess.run(
            private_network([sys.executable, "-m", "tests.docs.runner", rel, "--workdir",
                             str(work), "--results", str(results_file)], private_tmp=True),
            cwd=REPO, capture_output=True, text=True, timeout=880)
        assert proc.returncode == 0 and results_file.exists(), proc.stderr[-3000:]
        results = json.loads(results_file.read_text())
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for r in results:  # -s shows what ran
        print(f"{r['status']:8} {r['seconds']:6.1f} s  {r['where']}  {r['command']}"
              + (f"  ({r['reason']})" if r["reason"] else ""))
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, "\n\n".join(
        f"{r['where']}: {r['command']}\n  -> {r['reason']}"
        + (f"\n  stdout: {r['stdout'][-800:]!r}" if r["stdout"] else "")
        + (f"\n  stderr:\n{r['stderr']}" if r["stderr"] else "")
        for r in failed)
    ran = {r["where"] for r in results}
    for block in shell_blocks(doc, rel):
        for cmd in block.commands:
            assert cmd.where() in ran, f"{cmd.where()} was never run: {cmd.text}"


# -- citations --------------------------------------------------------------------------------
_PATHISH = re.compile(r"(?<![\w/.-])((?:docs|examples|tests|src|bench|\.ci)/[\w./*-]+)")
_LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
#: Documents a reader of the repository cannot open: issue threads, the customer's spec and
#: seed files (facts from them are written into the docs, the ADRs and tests/vectors).
_ELSEWHERE = [
    (re.compile(r"\b[Ii]ssues? \d+\b"), "an issue number"),
    (re.compile(r"\bseeds? \d{3}\b"), "a seed document"),
    (re.compile(r"\bspec\b[ `§]*(?:[\w-]+\.md|\d|§)"), "the customer's spec"),
]


_WRITTEN = re.compile(r"--[\w-]+[ =]$")


def _cited_paths(text: str) -> list[tuple[int, str]]:
    """Repository paths a text names, except those a command is told to write
    (``--dir examples/pymodaq-tls/keys``, ``--out frame.png``)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in _PATHISH.finditer(line):
            if _WRITTEN.search(line[:m.start()]):
                continue
            out.append((n, m.group(1).rstrip(".,:;)")))
    return out


def _made_by_the_reader(target: str) -> bool:
    """A path under a folder that .gitignore names (``examples/lab/keys/``): the docs tell the
    reader to make it (``labbridge keys ...``), so it is not in a clone and that is right."""
    for line in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.endswith("/") or "*" in line or line.startswith("#"):
            continue
        folder = line.strip("/")
        if "/" in line.rstrip("/") or line.startswith("/"):  # anchored at the repository
            if target == folder or target.startswith(folder + "/"):
                return True
        elif folder in Path(target).parts:
            return True
    return False


def citation_problems(path: Path) -> list[str]:
    """What ``path`` cites that a reader of the repository cannot open."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(REPO)
    problems = []
    for n, target in _cited_paths(text):
        if "*" in target or "<" in target:
            if not list(REPO.glob(target.split("<")[0].rstrip("/") + ("" if "*" in target
                                                                     else "*"))):
                problems.append(f"{rel}:{n}: {target}: matches nothing in the repository")
            continue
        if (not (REPO / target).exists() and not list(REPO.glob(target + "-*"))
                and not _made_by_the_reader(target)):
            # (docs/adr/0023 names docs/adr/0023-valve-bank-edge-cases.md)
            problems.append(f"{rel}:{n}: {target}: no such file in the repository")
    for n, line in enumerate(text.splitlines(), 1):
        for m in _LINK.finditer(line):
            target = m.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                problems.append(f"{rel}:{n}: link to {target}: no such file")
        for pattern, what in _ELSEWHERE:
            for m in pattern.finditer(line):
                problems.append(f"{rel}:{n}: {m.group(0)!r} cites {what}, which is not in the "
                                "repository: say the fact, or cite a file that is")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=IDS)
def test_citations_are_in_the_repository(doc):
    problems = citation_problems(doc)
    assert not problems, "\n".join(problems)


EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*")
                  if p.is_file() and p.suffix in (".yaml", ".py") and "seed" not in p.parts)


def test_example_files_cite_what_is_in_the_repository():
    assert EXAMPLES
    problems = [p for f in EXAMPLES for p in citation_problems(f)]
    assert not problems, "\n".join(problems)
