"""examples/arc works against the real A-REX of scripts/arc-site with the variables its env file holds."""

from __future__ import annotations

import pytest

from tests.support.example_site import copy_example, run_example_job

pytestmark = [pytest.mark.e2e, pytest.mark.arc]


def test_examples_arc_config_and_job_run_on_the_ce(tmp_path, arc_site):
    site = copy_example("arc", tmp_path, extra_config="poll: {first: 0.5s, max: 1s}\n")
    env = {
        "ARC_URL": arc_site.url,
        "ARC_CERT": str(arc_site.cert),
        "ARC_KEY": str(arc_site.key),
        "ARC_CA_DIR": str(arc_site.ca_dir),
    }
    run = run_example_job(site, "word-count", env)
    assert run.result["state"] == "succeeded", run.result
    counts = dict(line.split()[::-1] for line in (run.outbox / "counts" / "words.txt").read_text().splitlines())
    assert (counts["rain"], counts["the"], counts["drop"]) == ("2", "2", "1")
    assert f"as {arc_site.job_user}" in (run.outbox / "syncd-stdout.txt").read_text()
