"""Under ``CI=true`` a skip is a failure: a test that needs a service must start it, not skip.

Both kinds of skip count: a test's own (``pytest.skip`` in a test or fixture) and a whole module's at
collection (``pytest.skip(..., allow_module_level=True)``, a module-level ``pytest.importorskip``), which
otherwise never reaches a test report. An expected failure (xfail) is left as it is.
"""

from __future__ import annotations

import os

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI") == "true"


def _reason(report) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (skips are failures in CI): {_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _in_ci() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped at collection under CI=true (skips are failures in CI): " + (
            _reason(report)
        )
