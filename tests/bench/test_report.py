"""bench/report.py: the README's performance tables are generated from bench/figures.json."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from bench import report
from tests.conftest import REPO


def test_readme_tables_are_what_figures_json_gives() -> None:
    res = subprocess.run([sys.executable, str(REPO / "bench" / "report.py"), "check"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "match bench/figures.json" in res.stdout


def _figures() -> dict:
    return json.loads((REPO / "bench" / "figures.json").read_text())


def test_every_figure_names_its_baseline_goal_and_runs() -> None:
    figures = _figures()
    text = report.render(figures)
    for fig in report.FIGURES_SHOWN:
        if fig.bench not in figures["benches"]:
            continue
        row = next(line for line in text.splitlines() if line.startswith(f"| `{fig.key}`"))
        assert fig.baseline in row and fig.goal_text() in row
        runs = figures["benches"][fig.bench]
        for r in runs:  # every run's own value is shown
            assert report._fmt(float(r[fig.key]), fig.digits) in row


def test_a_changed_result_changes_the_table_and_check_notices() -> None:
    figures = _figures()
    bench = next(iter(figures["benches"]))
    fig = next(f for f in report.FIGURES_SHOWN if f.bench == bench)
    changed = copy.deepcopy(figures)
    for r in changed["benches"][bench]:
        r[fig.key] = 12345.0
    assert report.render(changed) != report.render(figures)
    assert "12,345" in report.render(changed)


def test_goal_verdicts() -> None:
    lower = report.Figure("b", "k", "w", "base", 1.3, "lower")
    higher = report.Figure("b", "k", "w", "base", 0.8, "higher")
    assert lower.met(1.2) and not lower.met(1.4)
    assert higher.met(0.9) and not higher.met(0.5)
    assert report.Figure("b", "k", "w", "base", None, "lower").met(5.0) is None


def test_markers_replace_only_between() -> None:
    text = f"head\n{report.START}\nold table\n{report.END}\ntail\n"
    out = report.replace_between_markers(text, "new table")
    assert out == f"head\n{report.START}\nnew table\n{report.END}\ntail\n"
    assert report.replace_between_markers(out, "new table") == out
    with pytest.raises(SystemExit):
        report.replace_between_markers("no markers", "x")


def test_the_pymodaq_round_trip_note_says_nagle() -> None:
    figures = _figures()
    if "frames" not in figures["benches"]:
        pytest.skip("no frames results in bench/figures.json")
    text = report.render(figures)
    assert "Nagle" in text and "TCP_NODELAY" in text
