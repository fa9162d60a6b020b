"""Section.get_float rejects NaN and infinity (NaN passes every min/max comparison) with the
usual file:line: field error, both in the getter and through `labbridge check`."""

from __future__ import annotations

import math

import pytest

from labbridge.node.config import ConfigError, Section, parse_yaml
from tests.cli_helpers import run_cli


def _section(text: str) -> Section:
    return Section(parse_yaml(text, "node.yaml"), file="node.yaml")


@pytest.mark.parametrize("literal", [".nan", ".NaN", ".inf", "-.inf", "+.Inf"])
@pytest.mark.parametrize("bounds", [{}, {"min": 0.05, "max": 86400.0}, {"min": 0.0}])
def test_get_float_rejects_non_finite(literal, bounds):
    sec = _section(f"node: n\nstale_after: {literal}\n")
    with pytest.raises(ConfigError) as info:
        sec.get_float("stale_after", 10.0, **bounds)
    text = str(info.value)
    assert "node.yaml:2: stale_after" in text and "finite" in text, text


def test_get_float_rejects_an_integer_too_large_for_a_float():
    sec = _section("node: n\nx: " + "9" * 400 + "\n")
    with pytest.raises(ConfigError) as info:
        sec.get_float("x")
    assert "node.yaml:2: x" in str(info.value)


def test_get_float_still_accepts_finite_values_and_infinite_defaults():
    sec = _section("node: n\na: 2.5\nb: 3\nc: -1.0e+300\n")
    assert sec.get_float("a", min=0.0) == 2.5
    assert sec.get_float("b") == 3.0
    assert sec.get_float("c") == -1e300
    # A caller's own default (an unbounded stage travel) is not a config value: kept as is.
    assert sec.get_float("max", math.inf) == math.inf


def test_check_rejects_nan_stale_after(tmp_path):
    cfg = tmp_path / "web.yaml"
    cfg.write_text("node: n\nservices:\n  - kind: web_dashboard\n    name: web\n"
                   "    port: 0\n    stale_after: .nan\n")
    r = run_cli("check", str(cfg))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "web.yaml:6: services[0].stale_after" in r.stderr, r.stderr
    assert "finite" in r.stderr and "Traceback" not in r.stderr
