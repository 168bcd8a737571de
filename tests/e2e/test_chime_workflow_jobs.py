"""Drop folders run as Works in a CHIME/FRB workflow bucket (the emulator and its site runner) through the real
``syncd run``: outcomes, cancel, crashes, an outage of the service, a refused token."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = [pytest.mark.e2e]
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
SUBMITTED = "submitted to backend chime-workflow"


@pytest.fixture
def workflow_site(tmp_path, chime_workflow_service):
    """``build(**backend_overrides)`` → the config path of a site whose one inbox runs in the emulator's bucket."""

    def build(**overrides):
        section = {
            "type": "chime-workflow",
            "url": chime_workflow_service.url,
            "token": chime_workflow_service.token,
            "pipeline": "syncd-jobs",
            "site": "local",
            "user": "e2e",
            "work_dir": str(tmp_path / "shared"),
            "connect_timeout": "1s",
            "request_timeout": "5s",
            **overrides,
        }
        return make_config(
            tmp_path / "site", backend="chime-workflow", max_parallel=4, extra={"backends": {"chime-workflow": section}}
        )

    return build


def test_run_jobs_succeed_fail_and_time_out_with_outputs_logs_and_records(workflow_site, chime_workflow_service):
    daemon = SyncdProcess(workflow_site(), env=ENV).start()
    try:
        drop_job(
            daemon.inbox,
            "sorts",
            {"command": "sort data/in.txt > out/sorted.txt; echo sorted; echo $X", "env": {"X": "from env"}},
            {"data/in.txt": "b\nc\na\n", "out/.keep": ""},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo partial > partial.txt; echo oops >&2; exit 7"})
        drop_job(daemon.inbox, "too long", {"command": "echo begun; sleep 60", "timeout": "1s"})
        results = {name: daemon.result(name, timeout=60) for name in ("sorts", "fails", "too long")}
    finally:
        daemon.stop()
    out = daemon.outbox / "results"
    ok = results["sorts"]
    assert (ok["state"], ok["exit_code"], ok["remote_state"], ok["backend"]) == (
        "succeeded",
        0,
        "success",
        "chime-workflow",
    )
    assert (out / "sorts" / "out" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert (out / "sorts" / "syncd-stdout.txt").read_text() == "sorted\nfrom env\n"
    assert [o["path"] for o in ok["outputs"]] == ["out/sorted.txt"], "unchanged inputs are not outputs"
    assert chime_workflow_service.tagged(ok["submit_key"]) == [], "cleanup deleted the Work"
    failed = results["fails"]
    assert (failed["state"], failed["exit_code"], failed["remote_state"]) == ("failed", 7, "failure")
    assert (out / "fails" / "partial.txt").read_text() == "partial\n"
    assert (out / "fails" / "syncd-stderr.txt").read_text() == "oops\n"
    late = results["too long"]
    assert late["state"] == "timed_out" and "timeout (1s)" in late["message"], late
    assert (out / "too long" / "syncd-stdout.txt").read_text() == "begun\n"


def test_run_cancel_deletes_a_queued_work_and_is_refused_once_it_runs(workflow_site, chime_workflow_service):
    daemon = SyncdProcess(workflow_site(), env=ENV).start()
    try:
        drop_job(daemon.inbox, "unstoppable", {"command": "echo begun; sleep 3; echo ran to the end > end.txt"})
        wait_for(lambda: SUBMITTED in daemon.log(), timeout=30, what="submission")
        wait_for(lambda: "begun" in _stdout(daemon), timeout=30, what="the runner to start it")
        chime_workflow_service.hold()
        try:
            drop_job(daemon.inbox, "never runs", {"command": "echo ran > ran.txt"})
            wait_for(lambda: daemon.log().count(SUBMITTED) >= 2, timeout=30, what="the second submission")
            said = daemon.cli("cancel", "unstoppable").stdout
            daemon.cli("cancel", "never runs")
            stopped = daemon.result("never runs", timeout=30)
        finally:
            chime_workflow_service.hold(False)
        unstoppable = daemon.result("unstoppable", timeout=60)
    finally:
        daemon.stop()
    assert "backend chime-workflow stops only queued jobs" in said, said
    assert unstoppable["state"] == "cancelled" and "could not stop the job" in unstoppable["message"], unstoppable
    assert (daemon.outbox / "results" / "unstoppable" / "end.txt").read_text() == "ran to the end\n"
    assert stopped["state"] == "cancelled" and stopped["outputs"] == [], stopped
    assert chime_workflow_service.tagged(stopped["submit_key"]) == []


def _stdout(daemon: SyncdProcess) -> str:
    """What the jobs wrote to stdout so far, in their folders on the shared storage."""
    return "".join(p.read_text() for p in (daemon.root.parent / "shared").glob("*/ctrl/stdout.txt"))


def test_run_kill_9_at_each_phase_then_restart_runs_every_job_exactly_once(
    workflow_site, chime_workflow_service, monkeypatch
):
    site = workflow_site()
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])  # the chaos helper's daemons get the test's environment
    points = ["after:submitting", "submitted-unrecorded", "after:running"]
    before, first_call = {d["id"] for d in chime_workflow_service.works()}, len(chime_workflow_service.calls)
    kills = kill_at_each_point_then_finish(site, points, per_life=1, timeout=90)
    assert len(kills) == len(points) + 1, kills
    calls = chime_workflow_service.calls[first_call:]
    keys = [c["body"][0]["tags"][0] for c in calls if c["path"] == "/work" and c["method"] == "POST"]
    assert len(keys) == len(points) + 1 and len(set(keys)) == len(keys), f"a job was deposited twice: {keys}"
    assert {d["id"] for d in chime_workflow_service.works()} - before == set(), "cleanup deleted every Work"


def test_run_service_down_for_a_while_then_every_job_finishes_once(workflow_site, chime_workflow_service, tmp_path):
    ledger = tmp_path / "ledger.txt"
    first_call = len(chime_workflow_service.calls)
    daemon = SyncdProcess(workflow_site(), env=ENV).start()
    names = [f"outage-{i}" for i in range(4)]
    try:
        for name in names[:2]:
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 2; echo {name} > out.txt"})
        wait_for(lambda: daemon.log().count(SUBMITTED) >= 2, timeout=30, what="submission")
        chime_workflow_service.stop_frontend()
        try:
            for name in names[2:]:  # arrive while the service is down: submission waits, it does not fail
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo {name} > out.txt"})
            wait_for(lambda: "backend chime-workflow is not answering" in daemon.log(), timeout=30, what="breaker")
        finally:
            chime_workflow_service.start_frontend()
        results = {name: daemon.result(name, timeout=60) for name in names}
    finally:
        daemon.stop()
    assert {r["state"] for r in results.values()} == {"succeeded"}, results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    calls = chime_workflow_service.calls[first_call:]
    deposited = [c["body"][0]["tags"][0] for c in calls if c["path"] == "/work" and c["method"] == "POST"]
    assert sorted(deposited) == sorted(r["submit_key"] for r in results.values()), "none deposited twice"
    assert "backend chime-workflow answers again" in daemon.log()


def test_run_refused_token_pauses_the_backend_and_resumes_when_fixed(workflow_site, chime_workflow_service, tmp_path):
    token = tmp_path / "workflow-token"
    token.write_text("not-the-token\n")
    token.chmod(0o600)
    daemon = SyncdProcess(workflow_site(token=None, token_file=str(token)), env=ENV).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend chime-workflow paused" in daemon.log(), timeout=30, what="the backend to pause")
        token.write_text(chime_workflow_service.token + "\n")
        result = daemon.result("waits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "accepts the credentials again" in daemon.log()
    assert "not-the-token" not in daemon.log()
