"""Drop folders run through a real Slurm cluster (slurmrestd + JWT), through outages and crashes."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import (
    SyncdProcess,
    drop_job,
    http_port,
    make_config,
    readyz,
    wait_for,
)
from tests.support.slurm import MIN_JOB_AGE

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]


@pytest.fixture
def slurm_site(tmp_path, slurm_cluster):
    def build(**backend_overrides):
        shared = tmp_path / "shared"
        shared.mkdir(exist_ok=True)
        section = slurm_cluster.backend_section(shared, **backend_overrides)
        return make_config(tmp_path / "site", backend="slurm", extra={"backends": {"slurm": section}})

    return build


def test_run_drop_folder_through_slurm_to_the_outbox(slurm_site):
    daemon = SyncdProcess(slurm_site()).start()
    try:
        drop_job(
            daemon.inbox,
            "on slurm",
            {"command": "sort data/in.txt > sorted.txt; echo ran on $SLURM_JOB_ID"},
            {"data/in.txt": "b\nc\na\n"},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo oops >&2; exit 7"})
        result = daemon.result("on slurm", timeout=60)
        failed = daemon.result("fails", timeout=60)
    finally:
        daemon.stop()
    out = daemon.outbox / "results" / "on slurm"
    assert result["state"] == "succeeded" and result["backend"] == "slurm", result
    assert result["remote_id"].isdigit() and result["remote_state"] == "COMPLETED"
    assert (out / "sorted.txt").read_text() == "a\nb\nc\n"
    assert f"ran on {result['remote_id']}" in (out / "syncd-stdout.txt").read_text()
    assert (failed["state"], failed["exit_code"]) == ("failed", 7)
    assert "oops" in (daemon.outbox / "results" / "fails" / "syncd-stderr.txt").read_text()


def test_run_slurmrestd_outage_mid_flight_every_job_finishes_exactly_once(slurm_site, slurm_cluster, tmp_path):
    ledger = tmp_path / "ledger.txt"
    daemon = SyncdProcess(slurm_site(connect_timeout="1s")).start()
    names = [f"outage-{i}" for i in range(4)]
    try:
        for name in names[:2]:
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 3"})
        wait_for(lambda: daemon.log().count("submitted to backend slurm") >= 2, timeout=60, what="submission")
        slurm_cluster.rest("stop")
        try:
            for name in names[2:]:  # arrive while slurmrestd is down: submission must wait, not fail
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 1"})
            time.sleep(6)
        finally:
            slurm_cluster.rest("start")
        results = {name: daemon.result(name, timeout=90) for name in names}
    finally:
        daemon.stop()
    assert all(r["state"] == "succeeded" for r in results.values()), results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    assert "cannot reach slurmrestd" in daemon.log()


@pytest.mark.slow
def test_run_daemon_killed_until_slurm_forgot_the_jobs_still_gets_outcomes_right(slurm_site, slurm_cluster):
    site = slurm_site()
    daemon = SyncdProcess(site).start()
    drop_job(daemon.inbox, "forgotten-ok", {"command": "sleep 2; echo fine > fine.txt"})
    drop_job(daemon.inbox, "forgotten-bad", {"command": "sleep 2; exit 5"})
    wait_for(lambda: daemon.log().count("submitted to backend slurm") >= 2, timeout=60, what="submission")
    daemon.kill9()
    job_ids = [
        line.rsplit(" as ", 1)[1].strip() for line in daemon.log().splitlines() if "submitted to backend slurm" in line
    ]
    deadline = time.monotonic() + MIN_JOB_AGE + 150
    while slurm_cluster.run("squeue", "-h", "-t", "all", "-j", ",".join(job_ids)).strip():
        assert time.monotonic() < deadline, "slurmctld never forgot the jobs"
        time.sleep(2)
    again = SyncdProcess(site).start()
    try:
        ok = again.result("forgotten-ok", timeout=60)
        bad = again.result("forgotten-bad", timeout=60)
    finally:
        again.stop()
    assert (ok["state"], ok["exit_code"], ok["remote_state"]) == ("succeeded", 0, "FORGOTTEN")
    assert (again.outbox / "results" / "forgotten-ok" / "fine.txt").read_text() == "fine\n"
    assert (bad["state"], bad["exit_code"]) == ("failed", 5)


def test_run_timeout_is_enforced_by_syncd_below_slurms_minute(slurm_site):
    daemon = SyncdProcess(slurm_site()).start()
    try:
        drop_job(daemon.inbox, "too-long", {"command": "echo begun; sleep 120", "timeout": "2s"})
        result = daemon.result("too-long", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "timed_out", result
    assert "begun" in (daemon.outbox / "results" / "too-long" / "syncd-stdout.txt").read_text()


def test_run_refused_token_pauses_the_backend_and_resumes_when_fixed(slurm_site, slurm_cluster, tmp_path):
    token = tmp_path / "token"
    token.write_text("expired-or-wrong")
    daemon = SyncdProcess(slurm_site(token={"file": str(token)}, api_version="v0.0.38")).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend slurm paused" in daemon.log(), timeout=60, what="the backend to pause")
        state = json.loads(daemon.cli("status", "--json").stdout)[0]["state"]
        # The pre-flight probe (or the submit itself) met the refusal: the job waits before submission.
        assert state in ("staged", "submitting"), f"the job waits; it is neither failed nor held ({state})"
        assert "paused" in daemon.cli("status").stdout
        port = http_port(daemon)
        code, body = readyz(port)
        assert code == 503 and "credentials refused" in body["problems"]["backend slurm"]
        token.write_text(slurm_cluster.run(*slurm_cluster.token_command()).strip())
        result = daemon.result("waits", timeout=60)
        wait_for(lambda: readyz(port)[0] == 200, timeout=60, what="/readyz to recover")
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "accepts the credentials again" in daemon.log()


@pytest.mark.slow
def test_run_kill_9_at_every_slurm_phase_then_restart_runs_every_job_exactly_once(slurm_site):
    """The points where Slurm holds state syncd has not recorded yet, or the reverse."""
    points = [
        "after:submitting",
        "submitted-unrecorded",
        "after:submitted",
        "after:running",
        "delivered-unrecorded",
        "archived-unrecorded",
    ]
    kills = kill_at_each_point_then_finish(slurm_site(), points, per_life=1)
    assert len(kills) == len(points) + 1, kills
