"""Drop folders run on Qarnot (its emulator, tests/support/qarnot_service.py) through the real ``syncd run``:
results, failures, timeouts, cancels, kill -9, an outage, a refused token, and each refusal Qarnot has."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import SyncdProcess, drop_job, http_port, make_config, readyz, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


@pytest.fixture
def qarnot_site(tmp_path, qarnot, seaweedfs):
    """``build(same_s3=…, **backend options)`` → (config, bucket). With ``same_s3`` syncd's storage is the S3
    that Qarnot's buckets are on (outputs are copied there server-side), else a file storage."""

    def build(same_s3: bool = True, **backend):
        extra: dict = {"backends": {"qarnot": qarnot.backend_section(**backend)}}
        if not same_s3:
            return make_config(tmp_path / "site", backend="qarnot", extra=extra), "results"
        bucket = f"qe2e-{uuid.uuid4().hex[:10]}"
        extra["storages"] = {
            "local": {"type": "file", "root": "buckets"},
            "s3": seaweedfs.storage_options(create_buckets=True),
        }
        return make_config(tmp_path / "site", backend="qarnot", storage="s3", bucket=bucket, extra=extra), bucket

    return build


def task_exists(qarnot, shortname: str) -> bool:
    answer = requests.get(f"{qarnot.url}/tasks/{shortname}", headers={"Authorization": qarnot.token}, timeout=5)
    return answer.status_code == 200


def job_state(daemon: SyncdProcess, name: str) -> str | None:
    jobs = json.loads(daemon.cli("status", "--json").stdout)
    return next((j["state"] for j in jobs if j["name"] == name), None)


def test_run_drop_folder_through_qarnot_to_the_outbox(qarnot_site, qarnot, seaweedfs):
    config, bucket = qarnot_site()
    daemon = SyncdProcess(config).start()
    try:
        drop_job(
            daemon.inbox,
            "on qarnot",
            {"command": "sort data/in.txt > sorted.txt; echo ran on $SYNCD_JOB_ID"},
            {"data/in.txt": "b\nc\na\n", "keep.txt": "unchanged\n"},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo oops >&2; exit 7"})
        result = daemon.result("on qarnot", bucket=bucket, timeout=60)
        failed = daemon.result("fails", bucket=bucket, timeout=60)
        short = result["submit_key"]
        wait_for(lambda: not task_exists(qarnot, short), timeout=30, what="the task deleted after delivery")
    finally:
        daemon.stop()
    out = daemon.outbox / bucket / "on qarnot"
    assert (result["state"], result["exit_code"], result["remote_state"]) == ("succeeded", 0, "Success"), result
    assert (out / "sorted.txt").read_text() == "a\nb\nc\n"
    assert f"ran on {result['id']}" in (out / "syncd-stdout.txt").read_text()
    assert not (out / "keep.txt").exists() and not (out / "data").exists(), "unchanged inputs are no outputs"
    assert not (out / ".syncd").exists(), "the wrapper's files are syncd's own"
    assert [o["path"] for o in result["outputs"]] == ["sorted.txt"]
    assert (failed["state"], failed["exit_code"], failed["remote_state"]) == ("failed", 7, "Failure")
    assert "oops" in (daemon.outbox / bucket / "fails" / "syncd-stderr.txt").read_text()
    buckets = {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}
    assert short not in buckets, "the task's result bucket is removed after delivery"
    assert qarnot.token not in daemon.log()


def test_run_timeout_aborts_the_task_and_cancel_stops_one(qarnot_site):
    config, bucket = qarnot_site(same_s3=False)
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, "too-long", {"command": "echo begun; sleep 120", "timeout": "2s"})
        drop_job(daemon.inbox, "stopped", {"command": "echo waiting; sleep 120"})
        wait_for(lambda: job_state(daemon, "stopped") == "running", timeout=30, what="the job to run")
        daemon.cli("cancel", "stopped")
        timed_out = daemon.result("too-long", timeout=60)
        cancelled = daemon.result("stopped", timeout=60)
    finally:
        daemon.stop()
    assert (timed_out["state"], timed_out["remote_state"]) == ("timed_out", "Cancelled"), timed_out
    assert "begun" in (daemon.outbox / bucket / "too-long" / "syncd-stdout.txt").read_text()
    assert (cancelled["state"], cancelled["remote_state"]) == ("cancelled", "Cancelled"), cancelled
    assert "waiting" in (daemon.outbox / bucket / "stopped" / "syncd-stdout.txt").read_text()


def test_run_kill_9_at_each_qarnot_phase_then_restart_runs_every_job_exactly_once(qarnot_site):
    """Qarnot took the task but syncd had not recorded it; the task ran; results delivered, task not deleted."""
    config, _ = qarnot_site(same_s3=False)
    points = ["submitted-unrecorded", "after:running", "delivered-unrecorded"]
    kills = kill_at_each_point_then_finish(config, points, per_life=1, timeout=60)
    assert len(kills) == len(points) + 1, kills


def test_run_qarnot_down_for_a_while_then_every_job_finishes_once(qarnot_site, qarnot, tmp_path):
    ledger = tmp_path / "ledger.txt"
    config, bucket = qarnot_site(same_s3=False, connect_timeout="1s", request_timeout="2s")
    daemon = SyncdProcess(config).start()
    names = [f"outage-{i}" for i in range(4)]
    try:
        for name in names[:2]:
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 2"})
        wait_for(lambda: daemon.log().count("submitted to backend qarnot") >= 2, timeout=30, what="submission")
        qarnot.stop()
        try:
            for name in names[2:]:  # arrive while Qarnot is away: they wait, they do not fail
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}"})
            wait_for(lambda: "is not answering" in daemon.log(), timeout=30, what="the circuit to open")
        finally:
            qarnot.start()
        results = {name: daemon.result(name, timeout=60) for name in names}
    finally:
        daemon.stop()
    assert all(r["state"] == "succeeded" and r["attempts"] == 1 for r in results.values()), results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    assert "cannot reach Qarnot" in daemon.log()


def test_run_refused_token_pauses_the_backend_and_resumes_when_fixed(qarnot_site, qarnot, tmp_path):
    token = tmp_path / "token"
    token.write_text("not-the-token")
    token.chmod(0o600)
    config, bucket = qarnot_site(same_s3=False, token=None, token_file=str(token))
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend qarnot paused" in daemon.log(), timeout=30, what="the backend to pause")
        assert job_state(daemon, "waits") in ("staging", "staged", "submitting"), "it waits; neither failed nor held"
        code, body = readyz(http_port(daemon))
        assert code == 503 and "credentials refused" in body["problems"]["backend qarnot"]
        token.write_text(qarnot.token)
        result = daemon.result("waits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "accepts the credentials again" in daemon.log()


def test_run_out_of_credits_pauses_the_backend_until_there_are_some(qarnot_site, qarnot):
    qarnot.account(credits=0)
    config, bucket = qarnot_site(same_s3=False)
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, "needs credits", {"command": "echo paid"})
        wait_for(
            lambda: "not enough credits" in daemon.log() and "may not run jobs now" in daemon.log(),
            timeout=30,
            what="the backend to pause for credits",
        )
        assert job_state(daemon, "needs credits") in ("staged", "submitting"), "it waits; it is not failed"
        qarnot.account(credits=None)
        result = daemon.result("needs credits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded" and result["attempts"] == 1


def test_run_task_quota_reached_the_job_backs_off_until_a_task_ends(qarnot_site, qarnot):
    qarnot.account(max_task=qarnot.stats()["tasks"])
    config, bucket = qarnot_site(same_s3=False)
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, "over quota", {"command": "echo finally"})
        wait_for(lambda: "as many tasks as the account may have" in daemon.log(), timeout=30, what="the refusal")
        assert job_state(daemon, "over quota") == "submitting"
        qarnot.account(max_task=100000)
        result = daemon.result("over quota", timeout=90)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "finally" in (daemon.outbox / bucket / "over quota" / "syncd-stdout.txt").read_text()


@pytest.mark.parametrize(("status", "said"), [(429, "asks for fewer requests"), (503, "failed")])
def test_run_rate_limit_and_unavailable_on_submit_back_off_then_submit_once(qarnot_site, qarnot, status, said):
    qarnot.fail_next(
        status,
        "Too many requests" if status == 429 else "Service Unavailable",
        method="POST",
        path="/tasks",
        times=2,
        retry_after="1",
    )
    config, bucket = qarnot_site(same_s3=False)
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, f"busy-{status}", {"command": "echo through"})
        result = daemon.result(f"busy-{status}", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded" and result["attempts"] == 1
    assert f"HTTP {status}" in daemon.log() and said in daemon.log()
    assert qarnot.stats()["shortnames"].count(result["submit_key"]) <= 1
