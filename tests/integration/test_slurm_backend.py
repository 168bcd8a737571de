"""Slurm's own cases beyond the conformance suite, against the real slurmrestd of the session."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from syncd.backends.base import RemoteState
from syncd.errors import AuthError, TransientError
from tests.conformance.test_slurm import slurm_harness as _harness
from tests.support.slurm import MIN_JOB_AGE

pytestmark = pytest.mark.slurm


@pytest.fixture
def harness(slurm_cluster, tmp_path):
    return _harness(slurm_cluster, tmp_path)


def test_version_defaults_to_the_newest_the_server_offers(harness):
    assert harness.backend.version() == "v0.0.38"


def test_submit_puts_the_key_in_name_and_comment(harness, slurm_cluster):
    spec = harness.spec("sleep 2")
    ref = harness.run(spec)
    shown = slurm_cluster.run("scontrol", "show", "job", ref.remote_id)
    assert f"JobName={spec.submit_key}" in shown and f"Comment={spec.submit_key}" in shown


def test_command_text_is_never_spliced_into_the_batch_script(harness):
    hostile = "echo '$(touch /tmp/syncd-pwned)'; printf '%s\\n' \"it's; fine\" > out.txt"
    spec = harness.spec(hostile)
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    batch = (Path(ref.handle["dir"]) / "ctrl" / "batch.sh").read_text()
    assert "syncd-pwned" not in batch and "fine" not in batch
    assert (Path(ref.handle["dir"]) / "work" / "out.txt").read_text() == "it's; fine\n"


def test_resources_map_onto_the_job(harness, slurm_cluster):
    spec = harness.spec("sleep 2", resources={"cpus": 2, "memory": 100 * 1024 * 1024, "walltime": 600})
    assert harness.backend.check(spec) == []
    ref = harness.run(spec)
    shown = slurm_cluster.run("scontrol", "show", "job", ref.remote_id)
    assert "MinCPUsNode=2" in shown and "MinMemoryNode=100M" in shown and "TimeLimit=00:11:00" in shown


def test_check_refuses_what_the_cluster_cannot_honour(harness):
    problems = harness.backend.check(harness.spec("true", resources={"cpus": 4096, "gpus": 2}))
    assert any(p.startswith("resources.cpus: 4096 is more than any node has") for p in problems)
    assert any(p.startswith("resources.gpus: 2 requested but no node") for p in problems)


def test_bad_token_is_an_auth_error_not_an_outage(slurm_cluster, tmp_path):
    bad = tmp_path / "token"
    bad.write_text("not-a-valid-token")
    harness = _harness(slurm_cluster, tmp_path, token={"file": str(bad)}, api_version="v0.0.38")
    with pytest.raises(AuthError) as caught:
        harness.backend.poll([])
    assert "refused user 'root'" in str(caught.value)


def test_stopped_slurmrestd_is_transient(slurm_cluster, tmp_path):
    harness = _harness(slurm_cluster, tmp_path, connect_timeout="1s")
    harness.backend.version()
    slurm_cluster.rest("stop")
    try:
        with pytest.raises(TransientError):
            harness.backend.poll([])
    finally:
        slurm_cluster.rest("start")
    harness.backend.poll([])


@pytest.mark.slow
def test_forgotten_job_outcome_comes_from_its_exit_status_file(harness, slurm_cluster):
    ok = harness.run(harness.spec("exit 0"))
    bad = harness.run(harness.spec("exit 4"))
    for ref in (ok, bad):
        harness.wait(ref)
    deadline = time.monotonic() + MIN_JOB_AGE + 120
    while slurm_cluster.run("squeue", "-h", "-t", "all", "-j", f"{ok.remote_id},{bad.remote_id}").strip():
        assert time.monotonic() < deadline, "slurmctld never forgot the jobs"
        time.sleep(2)
    statuses = harness.backend.poll([ok, bad])
    assert (statuses[ok.remote_id].state, statuses[ok.remote_id].exit_code) == (RemoteState.SUCCEEDED, 0)
    assert (statuses[bad.remote_id].state, statuses[bad.remote_id].exit_code) == (RemoteState.FAILED, 4)
    assert statuses[ok.remote_id].native == "FORGOTTEN"


@pytest.mark.slow
def test_slurm_time_limit_reports_timed_out(harness):
    spec = harness.spec("sleep 300")
    harness.stage(spec)
    # Bypass the +60 s margin the backend adds for the engine's own timeout: a 1-minute Slurm limit.
    spec = type(spec)(**{**spec.__dict__, "resources": {"walltime": 1}})
    ref = harness.backend.submit(spec)
    harness.timeout = 240
    status = harness.wait(ref)
    assert status.state is RemoteState.TIMED_OUT and status.native == "TIMEOUT", status
