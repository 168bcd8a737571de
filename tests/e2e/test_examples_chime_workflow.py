"""examples/chime-workflow works against the buckets emulator and its site runner once its variables and token file
are in place."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "chime-workflow"


def test_examples_chime_workflow_config_and_job_run_in_a_bucket(tmp_path, chime_workflow_service):
    site = tmp_path / "workflow-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text(
        (site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s") + "http: {listen: '127.0.0.1:0'}\n"
    )
    token = site / "workflow-token"
    token.write_text(chime_workflow_service.token + "\n")
    token.chmod(0o600)
    env = {
        "WORKFLOW_BUCKETS_URL": chime_workflow_service.url,
        "WORKFLOW_TOKEN_FILE": str(token),
        "WORKFLOW_SHARED": str(site / "shared"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    checked = subprocess.run(
        [*SYNCD, "validate", str(site / "syncd.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for folder in ("inbox", "outbox", "failed"):
        (site / folder).mkdir()
    daemon = SyncdProcess(site / "syncd.yaml", env=env).start()
    try:
        job = tmp_path / "word-count"
        shutil.copytree(site / "jobs" / "word-count", job)
        job.rename(site / "inbox" / "word-count")
        result = daemon.result("word-count", timeout=60)
    finally:
        daemon.stop()
    out = site / "outbox" / "results" / "word-count"
    assert result["state"] == "succeeded", result
    counts = dict(line.split()[::-1] for line in (out / "counts" / "words.txt").read_text().splitlines())
    assert (counts["rain"], counts["the"], counts["drop"]) == ("2", "2", "1")
    assert "counted as job word-count" in (out / "syncd-stdout.txt").read_text()
    assert chime_workflow_service.tagged(result["submit_key"]) == [], "the Work is deleted once delivered"
    assert chime_workflow_service.token not in daemon.log()
