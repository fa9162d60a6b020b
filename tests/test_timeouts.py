"""Test timeouts only catch hangs: with the thread method a timeout ends the whole run, so no
test gets less than tests/conftest.py's TIMEOUT_FLOOR (docs/adr/0144)."""

from __future__ import annotations

import tomllib

import pytest

from tests.conftest import REPO, TIMEOUT_FLOOR, _timeout_of


def test_the_default_is_the_floor():
    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert ini["timeout_method"] == "thread"
    assert float(ini["timeout"]) >= TIMEOUT_FLOOR


@pytest.mark.timeout(5)
def test_a_lower_mark_is_raised_to_the_floor(request):
    assert _timeout_of(request.node) == TIMEOUT_FLOOR


@pytest.mark.timeout(900)
def test_a_higher_mark_stays(request):
    assert _timeout_of(request.node) == 900


def test_no_collected_test_gets_less_than_the_floor(request):
    low = [item.nodeid for item in request.session.items
           if (limit := _timeout_of(item)) is not None and 0 < limit < TIMEOUT_FLOOR]
    assert low == []
