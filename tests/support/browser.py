"""Headless Chromium from Debian, driven by Playwright, one per test session.

``scripts/chromium`` installs Debian's package when it is missing (Playwright never downloads a browser
here: the test runs on hosts without internet access to a browser CDN). Outside CI a host without the
browser or Playwright skips; under ``CI=true`` that skip is a failure (see tests/conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def chromium():
    """A running headless Chromium (a Playwright ``Browser``: tests open their own contexts)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs Playwright (pip install -e '.[test]')")
    found = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=600)
    if found.returncode != 0:
        pytest.skip(f"scripts/chromium could not provide Chromium: {found.stderr.strip()[-500:]}")
    executable = found.stdout.strip().splitlines()[-1]
    with sync_playwright() as playwright:
        # launch() gives Chromium a fresh temporary user-data-dir of its own, removed at close
        browser = playwright.chromium.launch(executable_path=executable, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
