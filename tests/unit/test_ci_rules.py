"""The CI rule itself: under CI=true a skip fails the run, whether a test skips or a whole module does at
collection; outside CI both stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

SKIPPERS = {
    "test_module_level.py": 'import pytest\npytest.skip("no server here", allow_module_level=True)\n',
    "test_importorskip.py": 'import pytest\npytest.importorskip("syncd_no_such_module")\n',
    "test_in_a_test.py": 'import pytest\n\ndef test_needs_a_server():\n    pytest.skip("no server here")\n',
    "test_xfail.py": 'import pytest\n\n@pytest.mark.xfail(reason="known")\ndef test_known():\n    assert False\n',
}


def _pytest(folder: Path, ci: bool, name: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.ci_rules", name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("name", sorted(SKIPPERS))
def test_a_skip_fails_under_ci_and_stays_a_skip_outside(tmp_path, name):
    (tmp_path / name).write_text(SKIPPERS[name])
    outside, inside = _pytest(tmp_path, False, name), _pytest(tmp_path, True, name)
    # a module skipped whole leaves nothing to run: pytest says so with its own exit code, not a failure
    assert outside.returncode in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), outside.stdout
    if name == "test_xfail.py":
        assert inside.returncode == 0 and "1 xfailed" in inside.stdout, "an expected failure is not a skip"
        return
    assert "skipped" in outside.stdout
    assert inside.returncode in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED), inside.stdout
    assert "skips are failures in CI" in inside.stdout
