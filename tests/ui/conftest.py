"""Fixtures of the UI tests: a Chromium executable (installed if missing and possible)."""

from __future__ import annotations

import os

import pytest

from tests.ui.browser import ENSURE_SCRIPT, ensure_chromium


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path. Missing in CI: a failure (CI must run this test); elsewhere a skip
    only when it cannot be installed here."""
    path = ensure_chromium()
    if path:
        return path
    message = f"chromium is not installed and could not be installed: run `bash {ENSURE_SCRIPT}`"
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)
