"""examples/chime-swarm works against the frb-master emulator once its variables are in place."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "chime-swarm"


def test_examples_chime_swarm_config_and_job_run_on_the_swarm(tmp_path, chime_swarm_service):
    site = tmp_path / "chime-swarm-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text(
        (site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s")
        + "http: {listen: '127.0.0.1:0'}\npoll: {first: 0.2s, max: 1s}\n"
    )
    user = chime_swarm_service.add_user()
    env = {
        "CHIME_FRB_URL": chime_swarm_service.url,
        "CHIME_FRB_ACCESS_TOKEN": user["access_token"],
        "CHIME_FRB_REFRESH_TOKEN": user["refresh_token"],
        "CHIME_SWARM_FOLDER": str(tmp_path / "site-storage"),
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
        job = tmp_path / "dm-sweep"
        shutil.copytree(site / "jobs" / "dm-sweep", job)
        job.rename(site / "inbox" / "dm-sweep")
        result = daemon.result("dm-sweep", timeout=60)
    finally:
        daemon.stop()
    out = site / "outbox" / "results" / "dm-sweep"
    assert result["state"] == "succeeded", result
    assert (out / "summary" / "by-dm.txt").read_text() == "100 10\n250 15\n560 9\n"
    assert (out / "syncd-stdout.txt").read_text() == "summed for job dm-sweep, attempt 1\n"
    assert result["remote_id"] == result["submit_key"] and result["remote_state"] == "complete"
    assert chime_swarm_service.record(result["remote_id"]) is None, "the swarm job is removed once delivered"
    assert user["refresh_token"] not in daemon.log() and user["access_token"] not in daemon.log()
