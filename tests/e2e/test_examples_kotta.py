"""examples/kotta works against the Kotta emulator once its variables and credentials file are in place."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kotta"


def test_examples_kotta_config_and_job_run_on_kotta(tmp_path, kotta_service):
    site = tmp_path / "kotta-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text(
        (site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s") + "http: {listen: '127.0.0.1:0'}\n"
    )
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
    env = {
        "KOTTA_URL": kotta_service.url,
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
    assert f"counted on Kotta job {result['remote_id']}" in (out / "syncd-stdout.txt").read_text()
    assert user["refresh_token"] not in daemon.log()
