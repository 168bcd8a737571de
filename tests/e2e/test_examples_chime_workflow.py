"""examples/chime-workflow works against the buckets emulator and its site runner once its variables and token file
are in place."""

from __future__ import annotations

import pytest

from tests.support.example_site import copy_example, run_example_job

pytestmark = [pytest.mark.e2e]


def test_examples_chime_workflow_config_and_job_run_in_a_bucket(tmp_path, chime_workflow_service):
    site = copy_example("chime-workflow", tmp_path)
    token = site / "workflow-token"
    token.write_text(chime_workflow_service.token + "\n")
    token.chmod(0o600)
    env = {
        "WORKFLOW_BUCKETS_URL": chime_workflow_service.url,
        "WORKFLOW_TOKEN_FILE": str(token),
        "WORKFLOW_SHARED": str(site / "shared"),
    }
    run = run_example_job(site, "word-count", env)
    assert run.result["state"] == "succeeded", run.result
    counts = dict(line.split()[::-1] for line in (run.outbox / "counts" / "words.txt").read_text().splitlines())
    assert (counts["rain"], counts["the"], counts["drop"]) == ("2", "2", "1")
    assert "counted as job word-count" in (run.outbox / "syncd-stdout.txt").read_text()
    assert chime_workflow_service.tagged(run.result["submit_key"]) == [], "the Work is deleted once delivered"
    assert chime_workflow_service.token not in run.log
