"""Fixtures shared by the hexrotcomm tests (tests/conftest.py restores the root logger
after each test, for these too)."""

from __future__ import annotations

import pytest

from tests.cli_helpers import run_cli


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
