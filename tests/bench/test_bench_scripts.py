"""Each bench script's quick mode runs and reports every figure the README shows (keys present
and finite; no timing is asserted). bench/tls.py and bench/epics.py are run by
tests/pychron/test_bench_tls.py and tests/epics/test_bench.py, which check the same."""

from __future__ import annotations

import pytest

from tests.bench.helpers import check_report, run_quick


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bench", ["rpc", "bus", "moog", "durability"])
def test_quick_mode_reports_every_figure(bench: str) -> None:
    lines, result = run_quick(bench)
    check_report(bench, lines, result)
    if bench == "rpc":  # the baselines run on the loop labbridge runs on, at both ends
        assert result["server_event_loop"] == result["env"]["event_loop"] == loop_name()


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_frames_quick_mode_reports_every_size() -> None:
    import pymodaq_utils  # noqa: F401  (the dev extra: missing means failing, not skipping)
    lines, result = run_quick("frames")
    check_report("frames", lines, result)
    assert result["sizes"] == [256, 1024, 2048]
    assert sum(ln.startswith("round ") for ln in lines) == 3  # one round per size


@pytest.mark.timeout(300)
def test_pymodaq_tls_quick_mode() -> None:
    import cryptography  # noqa: F401  (the dev extra: missing means failing, not skipping)
    lines, result = run_quick("pymodaq_tls")
    check_report("pymodaq_tls", lines, result)
