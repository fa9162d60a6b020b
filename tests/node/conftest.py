"""Fixtures of the node tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import lab_with_keys


@pytest.fixture(scope="session")
def lab_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding examples/lab with its keys made (tests.cli_helpers.lab_with_keys):
    the lab's node files name key files that a checkout does not have."""
    return lab_with_keys(tmp_path_factory.mktemp("lab-repo"))
