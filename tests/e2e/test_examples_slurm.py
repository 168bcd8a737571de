"""examples/slurm works against a real slurmrestd once its environment variables are set."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
EXAMPLE = Path(__file__).parents[2] / "examples" / "slurm"


def test_examples_slurm_config_and_job_run_on_the_cluster(tmp_path, slurm_cluster):
    site = tmp_path / "slurm-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text((site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s"))
    shared = tmp_path / "shared"
    shared.mkdir()
    env = {
        "SLURMRESTD_URL": slurm_cluster.url,
        "SLURM_USER": slurm_cluster.user,
        "SLURM_TOKEN_COMMAND": " ".join(slurm_cluster.token_command()),
        "SLURM_WORKDIR_ROOT": str(shared),
    }
    checked = subprocess.run(
        [*SYNCD, "validate", str(site / "syncd.yaml")],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemon = SyncdProcess(site / "syncd.yaml", env=env).start()
    try:
        job = tmp_path / "sort-on-slurm"
        shutil.copytree(site / "jobs" / "sort-on-slurm", job)
        job.rename(site / "inbox" / "sort-on-slurm")
        result = daemon.result("sort-on-slurm", timeout=90)
    finally:
        daemon.stop()
    out = site / "outbox" / "results" / "sort-on-slurm"
    assert result["state"] == "succeeded", result
    assert (out / "sorted.txt").read_text() == "3\n7\n19\n42\n"
    assert f"as job {result['remote_id']}" in (out / "syncd-stdout.txt").read_text()
