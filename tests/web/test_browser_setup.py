"""Without the system Chromium the browser tests FAIL with instructions; they never skip."""

from __future__ import annotations

import pytest

from tests.web import browser


def test_missing_chromium_fails_with_install_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        browser.require_browser()


def test_system_chromium_is_what_the_tests_launch():
    browser.require_browser()  # fails (not skips) when missing
    assert str(browser.CHROMIUM) == "/usr/bin/chromium"
    assert "--headless" in browser.ARGS and "--no-sandbox" in browser.ARGS
