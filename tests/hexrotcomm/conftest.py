"""Fixtures shared by the hexrotcomm tests."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _restore_logging():
    """``labbridge.cli.main()`` (run in-process by some tests here) replaces the root logger's
    handlers and level: put them back, so a handler bound to a test's captured stderr does not
    outlive the test and write into a later one's."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
