"""examples/kotta works against the Kotta emulator once its variables and credentials file are in place."""

from __future__ import annotations

import json

import pytest

from tests.support.example_site import copy_example, run_example_job

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


def test_examples_kotta_config_and_job_run_on_kotta(tmp_path, kotta_service):
    site = copy_example("kotta", tmp_path)
    user = kotta_service.add_user()
    credentials = site / "kotta-credentials.json"  # as Kotta's /refresh_token page shows them
    credentials.write_text(
        json.dumps(
            {
                "access_token": user["access_token"],
                "refresh_token": user["refresh_token"],
                "token_type": "bearer",
                "expires_in": 3600,
            }
        )
    )
    credentials.chmod(0o600)
    run = run_example_job(site, "word-count", {"KOTTA_URL": kotta_service.url})
    assert run.result["state"] == "succeeded", run.result
    counts = dict(line.split()[::-1] for line in (run.outbox / "counts" / "words.txt").read_text().splitlines())
    assert (counts["rain"], counts["the"], counts["drop"]) == ("2", "2", "1")
    assert f"counted on Kotta job {run.result['remote_id']}" in (run.outbox / "syncd-stdout.txt").read_text()
    assert user["refresh_token"] not in run.log
