"""Drop folders run on the CHIME/FRB analysis cluster (the frb-master emulator) through the real ``syncd run``:
outcomes, cancel, crashes, an outage of the service, a refused refresh token."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def swarm_site(tmp_path, chime_swarm_service):
    """``build(user=None, **backend_overrides)`` → (config path, the user) for a site whose inbox runs on the swarm."""

    def build(user=None, **overrides):
        user = user or chime_swarm_service.add_user()
        section = {
            "type": "chime-swarm",
            "url": chime_swarm_service.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "image": "chimefrb/syncd-test:latest",
            "work_folder": str(tmp_path / "site-storage"),
            "connect_timeout": "1s",
            "request_timeout": "5s",
            **overrides,
        }
        return make_config(
            tmp_path / "site", backend="chime", max_parallel=4, extra={"backends": {"chime": section}}
        ), user

    return build


def test_run_jobs_on_the_swarm_succeed_fail_time_out_and_cancel_with_outputs_and_logs(swarm_site, chime_swarm_service):
    site, _ = swarm_site()
    daemon = SyncdProcess(site, env=ENV).start()
    try:
        drop_job(
            daemon.inbox,
            "sorts",
            {"command": "sort data/in.txt > out/sorted.txt; echo sorted", "resources": {"cpus": 2}},
            {"data/in.txt": "b\nc\na\n", "out/.keep": ""},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo partial > partial.txt; echo oops >&2; exit 7"})
        drop_job(daemon.inbox, "too long", {"command": "echo begun; sleep 60", "timeout": "1s"})
        drop_job(daemon.inbox, "stopped", {"command": "echo begun; sleep 60"})
        wait_for(lambda: daemon.log().count("submitted to backend chime") >= 4, timeout=30, what="submission")
        remote = json.loads(daemon.cli("status", "--json").stdout)
        (key,) = [j["remote_id"] for j in remote if j["name"] == "stopped"]
        chime_swarm_service.wait_for(key, ("running",))
        daemon.cli("cancel", "stopped")
        results = {name: daemon.result(name, timeout=60) for name in ("sorts", "fails", "too long", "stopped")}
    finally:
        daemon.stop()
    out = daemon.outbox / "results"
    ok = results["sorts"]
    assert (ok["state"], ok["exit_code"], ok["remote_state"], ok["backend"]) == ("succeeded", 0, "complete", "chime")
    assert (out / "sorts" / "out" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert (out / "sorts" / "syncd-stdout.txt").read_text() == "sorted\n"
    assert [o["path"] for o in ok["outputs"]] == ["out/sorted.txt"], "unchanged inputs are not outputs"
    failed = results["fails"]
    assert (failed["state"], failed["exit_code"], failed["remote_state"]) == ("failed", 7, "failed")
    assert (out / "fails" / "partial.txt").read_text() == "partial\n"
    assert (out / "fails" / "syncd-stderr.txt").read_text() == "oops\n"
    assert results["too long"]["state"] == "timed_out", results["too long"]
    assert (out / "too long" / "syncd-stdout.txt").read_text() == "begun\n"
    assert results["stopped"]["state"] == "cancelled", results["stopped"]
    for result in results.values():
        assert chime_swarm_service.record(result["submit_key"]) is None, "every job is removed from the swarm"


def test_run_kill_9_at_each_phase_then_restart_runs_every_job_exactly_once(
    swarm_site, chime_swarm_service, monkeypatch
):
    site, _ = swarm_site()
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])  # the chaos helper's daemons get the test's environment
    points = ["after:submitting", "submitted-unrecorded", "after:running"]
    spawns = chime_swarm_service.count("/v1/swarm/spawn-job")
    kills = kill_at_each_point_then_finish(site, points, per_life=1, timeout=90)
    assert len(kills) == len(points) + 1, kills
    assert chime_swarm_service.count("/v1/swarm/spawn-job") - spawns == len(points) + 1, "a job was spawned twice"


def test_run_swarm_down_for_a_while_then_every_job_finishes_once(swarm_site, chime_swarm_service, tmp_path):
    site, _ = swarm_site()
    ledger = tmp_path / "ledger.txt"
    daemon = SyncdProcess(site, env=ENV).start()
    names = [f"outage-{i}" for i in range(4)]
    spawns = chime_swarm_service.count("/v1/swarm/spawn-job")
    try:
        for name in names[:2]:
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 2; echo {name} > out.txt"})
        wait_for(lambda: daemon.log().count("submitted to backend chime") >= 2, timeout=30, what="submission")
        chime_swarm_service.stop_frontend()
        try:
            for name in names[2:]:  # arrive while frb-master is down: submission waits, it does not fail
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo {name} > out.txt"})
            wait_for(lambda: "backend chime is not answering" in daemon.log(), timeout=30, what="the breaker")
            wait_for(
                lambda: {j["name"] for j in json.loads(daemon.cli("status", "--json").stdout)} >= set(names),
                timeout=30,
                what="the jobs dropped during the outage to be claimed",
            )
        finally:
            chime_swarm_service.start_frontend()
        results = {name: daemon.result(name, timeout=60) for name in names}
    finally:
        daemon.stop()
    assert {r["state"] for r in results.values()} == {"succeeded"}, results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    assert chime_swarm_service.count("/v1/swarm/spawn-job") - spawns == len(names), "none spawned twice"
    assert "backend chime answers again" in daemon.log()


def test_run_refused_refresh_pauses_the_backend_and_resumes_with_new_tokens(swarm_site, chime_swarm_service, tmp_path):
    user = chime_swarm_service.add_user()
    chime_swarm_service.revoke(user["refresh_token"])
    token = tmp_path / "access-token"
    token.write_text(chime_swarm_service.access_token(user["user"], life=-10))  # expired
    site, _ = swarm_site(user, access_token={"token_file": str(token)})
    daemon = SyncdProcess(site, env=ENV).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend chime paused" in daemon.log(), timeout=30, what="the backend to pause")
        assert "refused the refresh token" in daemon.log()
        token.write_text(chime_swarm_service.access_token(user["user"]))  # the user logged in again
        result = daemon.result("waits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded", result
    assert (daemon.outbox / "results" / "waits" / "hello.txt").read_text() == "hello\n"
    assert user["refresh_token"] not in daemon.log()
