"""examples/chime-swarm works against the frb-master emulator once its variables are in place."""

from __future__ import annotations

import pytest

from tests.support.example_site import copy_example, run_example_job

pytestmark = pytest.mark.e2e


def test_examples_chime_swarm_config_and_job_run_on_the_swarm(tmp_path, chime_swarm_service):
    site = copy_example("chime-swarm", tmp_path, extra_config="poll: {first: 0.2s, max: 1s}\n")
    user = chime_swarm_service.add_user()
    env = {
        "CHIME_FRB_URL": chime_swarm_service.url,
        "CHIME_FRB_ACCESS_TOKEN": user["access_token"],
        "CHIME_FRB_REFRESH_TOKEN": user["refresh_token"],
        "CHIME_SWARM_FOLDER": str(tmp_path / "site-storage"),
    }
    run = run_example_job(site, "dm-sweep", env)
    result = run.result
    assert result["state"] == "succeeded", result
    assert (run.outbox / "summary" / "by-dm.txt").read_text() == "100 10\n250 15\n560 9\n"
    assert (run.outbox / "syncd-stdout.txt").read_text() == "summed for job dm-sweep, attempt 1\n"
    assert result["remote_id"] == result["submit_key"] and result["remote_state"] == "complete"
    assert chime_swarm_service.record(result["remote_id"]) is None, "the swarm job is removed once delivered"
    assert user["refresh_token"] not in run.log and user["access_token"] not in run.log
