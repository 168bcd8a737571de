"""examples/arc works against the real A-REX of scripts/arc-site with the variables its env file holds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.arc]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "arc"


def test_examples_arc_config_and_job_run_on_the_ce(tmp_path, arc_site):
    site = tmp_path / "arc-example"
    shutil.copytree(EXAMPLE, site)
    (site / "syncd.yaml").write_text(
        (site / "syncd.yaml").read_text().replace("settle: 5s", "settle: 0.3s")
        + "http: {listen: '127.0.0.1:0'}\npoll: {first: 0.5s, max: 1s}\n"
    )
    env = {
        "ARC_URL": arc_site.url,
        "ARC_CERT": str(arc_site.cert),
        "ARC_KEY": str(arc_site.key),
        "ARC_CA_DIR": str(arc_site.ca_dir),
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
    assert f"as {arc_site.job_user}" in (out / "syncd-stdout.txt").read_text()
