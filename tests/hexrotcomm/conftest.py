"""Fixtures shared by the hexrotcomm tests."""

from __future__ import annotations

import logging

import pytest

from tests.cli_helpers import run_cli


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


@pytest.fixture(scope="package")
def site(tmp_path_factory):
    """(Made once for the hexrotcomm tests.) A site CA with certificates for the node, a CSC, alice and bob; another CA's mallory."""
    d = tmp_path_factory.mktemp("site")
    other = tmp_path_factory.mktemp("other")
    for args in (("tls-ca", "--dir", str(d)),
                 ("tls-cert", "node", "--dir", str(d), "--host", "127.0.0.1"),
                 ("tls-cert", "csc", "--dir", str(d)),
                 ("tls-cert", "alice", "--dir", str(d)),
                 ("tls-cert", "bob", "--dir", str(d)),
                 ("tls-ca", "--dir", str(other)),
                 ("tls-cert", "mallory", "--dir", str(other))):
        result = run_cli("keys", *args)
        assert result.returncode == 0, result.stderr
    return d, other
