"""bench/report.py: the README's performance tables are generated from bench/figures.json."""

from __future__ import annotations

import copy
import json
import string
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
    """The frames rows and the note under the tables (Nagle, TCP_NODELAY, the three round
    trips), from a frames run made up from the figure definitions: it does not depend on
    bench/figures.json holding frames results."""
    figs = [f for f in report.FIGURES_SHOWN if f.bench == "frames"]
    assert figs, "bench/report.py shows no frames figure"
    keys = {f.key for f in figs} | {name for f in figs
                                    for _, name, _, _ in string.Formatter().parse(f.detail)
                                    if name}
    run: dict = {k: 1000.0 + i for i, k in enumerate(sorted(keys))}
    run.update(rtt_us_p50_pymodaq_client_to_our_server=2000.0, rtt_us_p50_pymodaq=3000.0,
               rtt_us_p50_ours=500.0,
               source={"finished": "2026-01-01T00:00:00", "commit": "abc1234", "dirty": False},
               env={"cpus": 2, "event_loop": "uvloop"})
    text = report.render({"benches": {"frames": [run]}})
    assert "Nagle" in text and "TCP_NODELAY" in text
    assert ("takes 2.00 ms against our server and 3.00 ms against their own server in these "
            "runs; labbridge at both ends takes 0.50 ms") in text
    for fig in figs:  # every frames figure has its row, with its values filled in
        row = next(line for line in text.splitlines() if line.startswith(f"| `{fig.key}`"))
        assert "n/a" not in row and "nan" not in row, row
        assert report._fmt(run[fig.key], fig.digits) in row
    assert "Nagle" not in report.render({"benches": {"rpc": [run]}})  # only with frames runs
