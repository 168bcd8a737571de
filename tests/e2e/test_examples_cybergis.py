"""examples/cybergis works against the gateway emulator once its environment variables are set, and the emulator
runs the example's runner as the gateway would run it, cloned from examples/cybergis/runner."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.cybergis]
EXAMPLE = Path(__file__).parents[2] / "examples" / "cybergis"


def test_examples_cybergis_config_and_job_run_through_the_gateway(tmp_path, cybergis_service):
    site = tmp_path / "cybergis-example"
    shutil.copytree(EXAMPLE, site)
    config = site / "syncd.yaml"
    assert config.read_text().count("settle: 5s") == 1
    config.write_text(config.read_text().replace("settle: 5s", "settle: 0.3s"))
    shared = tmp_path / "shared"
    env = {
        "CYBERGIS_URL": cybergis_service.url,
        "JUPYTERHUB_HOST": cybergis_service.HUB,
        "JUPYTERHUB_API_TOKEN": cybergis_service.TOKEN,
        "CYBERGIS_HPC": cybergis_service.HPC,
        "CYBERGIS_RUNNER": cybergis_service.RUNNER,
        "CYBERGIS_DATA_PATH": str(shared),
        "CYBERGIS_SERVER_DATA_PATH": str(shared),
        "CYBERGIS_RESULTS_PATH": str(cybergis_service.root / "hpc"),
    }
    checked = subprocess.run(
        [*SYNCD, "validate", str(config)], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = SyncdProcess(config, env=env).start()
    try:
        job = tmp_path / "word-count"
        shutil.copytree(site / "jobs" / "word-count", job)
        job.rename(site / "inbox" / "word-count")
        result = daemon.result("word-count", timeout=60)
    finally:
        daemon.stop()
    out = site / "outbox" / "results" / "word-count"
    assert result["state"] == "succeeded", result
    assert (out / "count.txt").read_text().strip() == "9"
    assert "counted on" in (out / "syncd-stdout.txt").read_text()
    job_on_gateway = next(j for j in cybergis_service.jobs() if j["id"] == result["remote_id"])
    assert job_on_gateway["slurm"] == {"cpu_per_task": 1, "memory": "1G", "time": "00:06:00"}
