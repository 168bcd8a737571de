"""examples/qarnot, used as its README says, against the Qarnot emulator."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
EXAMPLE = Path(__file__).parents[2] / "examples" / "qarnot"


def test_examples_qarnot_config_and_job_run_on_qarnot(tmp_path, qarnot):
    site = tmp_path / "qarnot-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text((site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s"))
    env = {"QARNOT_CLUSTER_URL": qarnot.url, "QARNOT_CLIENT_TOKEN": qarnot.token}
    checked = subprocess.run(
        [*SYNCD, "validate", str(site / "syncd.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = SyncdProcess(site / "syncd.yaml", env=env).start()
    try:
        job = tmp_path / "word-count"
        shutil.copytree(site / "jobs" / "word-count", job)
        job.rename(site / "inbox" / "word-count")
        result = daemon.result("word-count", timeout=60)
    finally:
        daemon.stop()
    out = site / "outbox" / "results" / "word-count"
    assert (result["state"], result["exit_code"]) == ("succeeded", 0), result
    assert (out / "counts.txt").read_text().split() == ["10", "text.txt"]
    assert "counted on Qarnot" in (out / "syncd-stdout.txt").read_text()
