"""Drop folders run on Cloud Kotta (the emulator) through the real ``syncd run``: outcomes, cancel, crashes, an
outage of the service, refused tokens."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def kotta_site(tmp_path, kotta_service):
    """``build(**backend_overrides)`` → (config path, the Kotta user) for a site whose one inbox runs on Kotta."""

    def build(user=None, **overrides):
        user = user or kotta_service.add_user()
        section = {
            "type": "kotta",
            "url": kotta_service.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "default_walltime": "1h",
            "connect_timeout": "1s",
            "request_timeout": "5s",
            **overrides,
        }
        return make_config(
            tmp_path / "site", backend="kotta", max_parallel=4, extra={"backends": {"kotta": section}}
        ), user

    return build


def test_run_jobs_on_kotta_succeed_fail_and_time_out_with_outputs_logs_and_records(kotta_site, kotta_service):
    site, _ = kotta_site()
    daemon = SyncdProcess(site, env=ENV).start()
    try:
        drop_job(
            daemon.inbox,
            "sorts",
            {"command": "sort data/in.txt > out/sorted.txt; echo sorted", "env": {"X": "1"}},
            {"data/in.txt": "b\nc\na\n", "out/.keep": ""},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo partial > partial.txt; echo oops >&2; exit 7"})
        drop_job(daemon.inbox, "too long", {"command": "echo begun; sleep 60", "timeout": "1s"})
        results = {name: daemon.result(name, timeout=60) for name in ("sorts", "fails", "too long")}
    finally:
        daemon.stop()
    out = daemon.outbox / "results"
    ok = results["sorts"]
    assert (ok["state"], ok["exit_code"], ok["remote_state"], ok["backend"]) == ("succeeded", 0, "completed", "kotta")
    assert (out / "sorts" / "out" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert (out / "sorts" / "syncd-stdout.txt").read_text() == "sorted\n"
    assert [o["path"] for o in ok["outputs"]] == ["out/sorted.txt"], "unchanged inputs are not outputs"
    (record,) = kotta_service.named(ok["submit_key"])
    assert record["job_id"] == ok["remote_id"] and record["walltime"] == 3600
    failed = results["fails"]
    assert (failed["state"], failed["exit_code"], failed["remote_state"]) == ("failed", 7, "failed")
    assert (out / "fails" / "partial.txt").read_text() == "partial\n"
    assert (out / "fails" / "syncd-stderr.txt").read_text() == "oops\n"
    late = results["too long"]
    assert late["state"] == "timed_out" and "walltime (1 min)" in late["message"], late
    assert (out / "too long" / "syncd-stdout.txt").read_text() == "begun\n"


def test_run_cancel_is_refused_by_kotta_and_the_job_is_delivered_cancelled(kotta_site, kotta_service):
    site, _ = kotta_site()
    daemon = SyncdProcess(site, env=ENV).start()
    try:
        drop_job(daemon.inbox, "unstoppable", {"command": "sleep 4; echo ran to the end > end.txt"})
        drop_job(daemon.inbox, "stopped on kotta", {"command": "echo begun; sleep 60"})
        wait_for(lambda: daemon.log().count("submitted to backend kotta") >= 2, timeout=30, what="submission")
        said = daemon.cli("cancel", "unstoppable").stdout
        assert "backend kotta cannot cancel jobs" in said and "marked cancelled" in said, said
        remote = json.loads(daemon.cli("status", "--json").stdout)
        (job_id,) = [j["remote_id"] for j in remote if j["name"] == "stopped on kotta"]
        wait_for(lambda: kotta_service.table.get(job_id)["status"] == "processing", timeout=30, what="running")
        kotta_service.web_cancel(job_id)
        unstoppable = daemon.result("unstoppable", timeout=60)
        stopped = daemon.result("stopped on kotta", timeout=60)
    finally:
        daemon.stop()
    assert unstoppable["state"] == "cancelled" and "could not stop the job" in unstoppable["message"], unstoppable
    assert (daemon.outbox / "results" / "unstoppable" / "end.txt").read_text() == "ran to the end\n"
    assert stopped["state"] == "cancelled", stopped


def test_run_kill_9_at_each_kotta_phase_then_restart_runs_every_job_exactly_once(
    kotta_site, kotta_service, monkeypatch
):
    site, user = kotta_site()
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])  # the chaos helper's daemons get the test's environment
    points = ["after:submitting", "submitted-unrecorded", "after:running"]
    kills = kill_at_each_point_then_finish(site, points, per_life=1, timeout=90)
    assert len(kills) == len(points) + 1, kills
    names = [r["jobname"] for r in kotta_service.records() if r["i_user_id"] == user["user_id"]]
    assert len(names) == len(points) + 1 and len(set(names)) == len(names), f"a job was submitted twice: {names}"


def test_run_kotta_down_for_a_while_then_every_job_finishes_once(kotta_site, kotta_service, tmp_path):
    site, user = kotta_site()
    ledger = tmp_path / "ledger.txt"
    daemon = SyncdProcess(site, env=ENV).start()
    names = [f"outage-{i}" for i in range(4)]
    try:
        for name in names[:2]:
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 2; echo {name} > out.txt"})
        wait_for(lambda: daemon.log().count("submitted to backend kotta") >= 2, timeout=30, what="submission")
        kotta_service.stop_frontend()
        try:
            for name in names[2:]:  # arrive while Kotta is down: submission waits, it does not fail
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo {name} > out.txt"})
            wait_for(lambda: "backend kotta is not answering" in daemon.log(), timeout=30, what="the breaker")
            time.sleep(3)
        finally:
            kotta_service.start_frontend()
        results = {name: daemon.result(name, timeout=60) for name in names}
    finally:
        daemon.stop()
    assert {r["state"] for r in results.values()} == {"succeeded"}, results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    assert all(len(kotta_service.named(r["submit_key"])) == 1 for r in results.values()), "none submitted twice"
    assert "backend kotta answers again" in daemon.log()


def test_run_refused_token_pauses_the_backend_and_resumes_when_fixed(kotta_site, kotta_service, tmp_path):
    user = kotta_service.add_user()
    kotta_service.expire(user["access_token"])
    token = tmp_path / "access-token"
    token.write_text(user["access_token"])
    site, _ = kotta_site(user, access_token={"token_file": str(token)}, refresh_token=None)
    daemon = SyncdProcess(site, env=ENV).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend kotta paused" in daemon.log(), timeout=30, what="the backend to pause")
        # staging needs Kotta too (upload_url): the job waits there, neither failed nor held
        assert json.loads(daemon.cli("status", "--json").stdout)[0]["state"] in ("staging", "staged", "submitting")
        token.write_text(
            f"https://kotta.example.org/handle_login?access_token="
            f"{kotta_service.new_access_token(user['user_id']).replace('|', '%7C')}&expires_in=3600\n"
        )
        result = daemon.result("waits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "accepts the credentials again" in daemon.log()
    assert user["access_token"] not in daemon.log()
