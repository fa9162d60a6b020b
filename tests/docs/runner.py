"""Run the shell commands of one markdown file the way a reader would (docs/doc-tests.md).

``python -m tests.docs.runner DOC --workdir W --results R.json`` runs DOC's shell blocks in
order with ``bash`` in W (a copy of the repository) and writes one JSON result per command.
tests/docs/test_docs.py starts it in a private network namespace with a private /tmp
(tests/netns.py), so the documented ports (1061, 5555, 8080...) and /tmp paths are used as
written without meeting anything else on the machine.

* A one-shot command must finish within ``ONE_SHOT_TIMEOUT`` with the expected exit status and
  expected output lines.
* A long-running command (``labbridge serve``, ``dashboard``, ``demo``, ``monitor``, ``watch``,
  ``record``) runs in the background, as in a terminal of its own; the next command runs once it
  is ready (its ready file for ``serve``, ``demo``, ``dashboard`` and ``record``, else its
  first line of output) and has shown every expected output line. At the end of its block it
  gets Ctrl-C (SIGINT) and must exit with the expected status (0).
* ``export NAME=VALUE`` sets the variable for the file's next commands, as in the reader's
  terminal (every other command runs in a ``bash`` of its own).
* ``pip install`` of this package is the installation the suite already runs in: the extras it
  names must be installed; nothing is installed again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tests.docs.mdshell import (
    READY_BY_FILE,
    Block,
    Command,
    long_running,
    option_value,
    pip_extras,
    shell_blocks,
)

ONE_SHOT_TIMEOUT = 120.0
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
_TAIL = 1500


@dataclass
class Result:
    where: str
    command: str
    status: str  # "ok", "failed", "untested"
    reason: str = ""
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


def matches(expected: str, line: str) -> bool:
    """``expected`` (with ``...`` for any text) equals ``line`` (blanks around ignored)."""
    pattern = ".*".join(re.escape(p) for p in expected.strip().split("..."))
    return re.fullmatch(pattern, line.strip()) is not None


def missing_lines(expected: list[str], output: str) -> list[str]:
    lines = output.splitlines()
    return [e for e in expected if not any(matches(e, ln) for ln in lines)]


class Background:
    """A long-running command: its process, its output so far, and events on new output."""

    def __init__(self, cmd: Command, part: str, sub: str, cwd: Path, env: dict[str, str],
                 ready_file: Path | None, *, set_env: bool = True) -> None:
        self.cmd = cmd
        self.part = part
        self.sub = sub
        self.ready_file = ready_file
        self.started = time.monotonic()
        if ready_file is not None and set_env:
            env = {**env, "LABBRIDGE_READY_FILE": str(ready_file)}
        self.proc = subprocess.Popen(["bash", "-c", "exec " + part], cwd=cwd, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self.out),
                                      (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self.changed:
                into.append(raw.decode("utf-8", "replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def _ready(self) -> bool:
        if self.ready_file is not None and not self.ready_file.exists():
            return False
        if self.ready_file is None and not (self.out or self.err):
            return False
        return not missing_lines(self.cmd.expect, self.stdout + self.stderr)

    def wait_ready(self, timeout: float) -> str:
        """"" when ready, else why not."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self._ready():
                if self.proc.poll() is not None:
                    return f"exited with code {self.proc.returncode} before it was ready"
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = missing_lines(self.cmd.expect, self.stdout + self.stderr)
                    what = (f"expected output {missing!r}" if missing else
                            "its ready file" if self.ready_file is not None else "any output")
                    return f"not ready within {timeout:g} s (waiting for {what})"
                # The ready file has no event of its own (another process writes it): look
                # again at least every 50 ms; output lines wake this at once.
                self.changed.wait(min(left, 0.05 if self.ready_file is not None else left))
        return ""

    def stop(self) -> int | None:
        """Ctrl-C, as a reader ends a command in its terminal; the exit status or None when
        it did not stop."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                for t in self._readers:
                    t.join(5)
                return None
        for t in self._readers:
            t.join(5)
        return self.proc.returncode


def check_pip(part: str) -> str:
    """"" when the package and the extras named are installed, else what is missing."""
    extras = pip_extras(part)
    if extras is None:
        return ("installs something other than this package: mark it [untested: ...] "
                "(the docs test does not install)")
    try:
        dist = metadata.distribution("labbridge")
    except metadata.PackageNotFoundError:
        return "labbridge is not installed in the test environment"
    missing = []
    for extra in extras:
        if extra not in (dist.metadata.get_all("Provides-Extra") or []):
            missing.append(f"{extra} (no such extra)")
            continue
        for req in dist.requires or []:
            name, _, marker = req.partition(";")
            if f'extra == "{extra}"' not in marker:
                continue
            dep = re.split(r"[\s\[<>=!~;]", name.strip(), maxsplit=1)[0]
            if dep == "labbridge":
                continue
            try:
                metadata.distribution(dep)
            except metadata.PackageNotFoundError:
                missing.append(f"{dep} (extra {extra})")
    return f"not installed: {', '.join(missing)}" if missing else ""


def tail(text: str) -> str:
    return text[-_TAIL:]


def head_and_tail(text: str) -> str:
    """A failed command's stderr for the report: its first lines say what failed, its last
    ones what the program was doing (a demo node that is late: its threads' stacks)."""
    if len(text) <= 4 * _TAIL:
        return text
    return f"{text[:_TAIL]}\n[... {len(text) - 4 * _TAIL} characters cut ...]\n" \
        f"{text[-3 * _TAIL:]}"


class DocRun:
    def __init__(self, doc: str, path: Path, workdir: Path) -> None:
        self.doc = doc
        self.path = path
        self.workdir = workdir
        self.results: list[Result] = []
        bindir = str(Path(sys.executable).parent)
        # Its own temporary directory, with a short path (Unix socket paths are short).
        self.tmp = Path(tempfile.mkdtemp(prefix="lbdoc-"))
        tmp = self.tmp
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                    "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        for key in ("LABBRIDGE_READY_FILE", "PYTHONPATH"):
            self.env.pop(key, None)
        self._n = 0

    def run(self) -> list[Result]:
        try:
            for block in shell_blocks(self.path, self.doc):
                self.run_block(block)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.results

    def run_block(self, block: Block) -> None:
        background: list[Background] = []
        try:
            for cmd in block.commands:
                if cmd.untested is not None:
                    self.results.append(Result(cmd.where(), cmd.text, "untested",
                                               cmd.untested))
                    continue
                self.run_command(cmd, background)
        finally:
            for bg in reversed(background):
                self.finish(bg)

    def run_command(self, cmd: Command, background: list[Background]) -> None:
        t0 = time.monotonic()
        parts = cmd.parts
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if pip_extras(part) is not None or part.split()[:2] == ["pip", "install"]:
                why = check_pip(part)
                if why:
                    self.fail(cmd, t0, f"{part!r}: {why}")
                    return
                if last:
                    self.results.append(Result(cmd.where(), cmd.text, "ok",
                                               "installed already (the suite's environment)",
                                               seconds=time.monotonic() - t0))
                continue
            if re.match(r"^export\s", part):
                if not self.export(cmd, part, t0):
                    return
                if last:
                    self.results.append(Result(cmd.where(), cmd.text, "ok", "", 0,
                                               seconds=time.monotonic() - t0))
                continue
            if re.match(r"^(python3? -m )?pytest\b", part):
                self.fail(cmd, t0, "runs the test suite from inside itself: mark it "
                          "[untested: ...] with the reason")
                return
            sub = long_running(part)
            if sub is not None:
                if not last:
                    self.fail(cmd, t0, f"{part!r} runs until Ctrl-C, so what follows '&&' "
                              "never runs")
                    return
                self._n += 1
                ready, given = None, False
                if sub in READY_BY_FILE:
                    named = option_value(part, "--ready-file")
                    given = named is not None
                    ready = self.workdir / named if named is not None else \
                        self.workdir / ".ready" / f"{self._n}.json"
                    ready.parent.mkdir(parents=True, exist_ok=True)
                    ready.unlink(missing_ok=True)
                bg = Background(cmd, part, sub, self.workdir, self.env, ready,
                                set_env=not given)
                background.append(bg)
                why = bg.wait_ready(READY_TIMEOUT)
                if why:
                    bg.stop()
                    background.remove(bg)
                    self.fail(cmd, t0, why, bg.proc.returncode, bg.stdout, bg.stderr)
                return
            if not self.one_shot(cmd, part, last, t0):
                return

    def export(self, cmd: Command, part: str, t0: float) -> bool:
        """``export NAME=VALUE ...``: the variables are set for the file's next commands, as in
        the reader's terminal (each command runs in a bash of its own)."""
        try:
            names = [w.split("=", 1)[0] for w in shlex.split(part)[1:] if not w.startswith("-")]
        except ValueError as exc:
            self.fail(cmd, t0, f"cannot parse {part!r}: {exc}")
            return False
        proc = subprocess.run(["bash", "-c", part + "\nenv -0"], cwd=self.workdir, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=ONE_SHOT_TIMEOUT)
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0 or err:
            self.fail(cmd, t0, f"exit code {proc.returncode}", proc.returncode, "", err)
            return False
        now = dict(item.split("=", 1) for item in proc.stdout.decode("utf-8", "replace")
                   .split("\0") if "=" in item)
        for name in names:
            if name in now:
                self.env[name] = now[name]
        return True

    def one_shot(self, cmd: Command, part: str, last: bool, t0: float) -> bool:
        proc = subprocess.Popen(["bash", "-c", part], cwd=self.workdir, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out_b, err_b = proc.communicate(timeout=ONE_SHOT_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out_b, err_b = proc.communicate()
            self.fail(cmd, t0, f"did not finish within {ONE_SHOT_TIMEOUT:g} s", None,
                      out_b.decode("utf-8", "replace"), err_b.decode("utf-8", "replace"))
            return False
        out, err = out_b.decode("utf-8", "replace"), err_b.decode("utf-8", "replace")
        want = cmd.exit_code if last else 0
        if proc.returncode != want:
            self.fail(cmd, t0, f"exit code {proc.returncode}, expected {want}",
                      proc.returncode, out, err)
            return False
        if last:
            missing = missing_lines(cmd.expect, out + err)
            if missing:
                self.fail(cmd, t0, f"expected output not shown: {missing!r}", proc.returncode,
                          out, err)
                return False
            if "Traceback (most recent call last)" in err:
                self.fail(cmd, t0, "printed a traceback", proc.returncode, out, err)
                return False
            self.results.append(Result(cmd.where(), cmd.text, "ok", "", proc.returncode,
                                       tail(out), tail(err), time.monotonic() - t0))
        return True

    def finish(self, bg: Background) -> None:
        """End of the block: Ctrl-C, then the exit status and the output it had to show."""
        code = bg.stop()
        out, err = bg.stdout, bg.stderr
        cmd = bg.cmd
        if code is None:
            self.fail(cmd, bg.started, f"did not stop within {STOP_TIMEOUT:g} s of Ctrl-C",
                      None, out, err)
        elif code != cmd.exit_code:
            self.fail(cmd, bg.started, f"exit code {code} after Ctrl-C, expected "
                      f"{cmd.exit_code}", code, out, err)
        elif "Traceback (most recent call last)" in err:
            self.fail(cmd, bg.started, "printed a traceback", code, out, err)
        else:
            self.results.append(Result(cmd.where(), cmd.text, "ok", "ran until Ctrl-C", code,
                                       tail(out), tail(err), time.monotonic() - bg.started))

    def fail(self, cmd: Command, t0: float, reason: str, code: int | None = None,
             out: str = "", err: str = "") -> None:
        self.results.append(Result(cmd.where(), cmd.text, "failed", reason, code, tail(out),
                                   head_and_tail(err), time.monotonic() - t0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("doc", help="the markdown file, relative to --workdir")
    ap.add_argument("--workdir", required=True, type=Path)
    ap.add_argument("--results", required=True, type=Path)
    args = ap.parse_args(argv)
    run = DocRun(args.doc, args.workdir / args.doc, args.workdir)
    results = run.run()
    args.results.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
