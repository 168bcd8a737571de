"""Drop folders run on a real ARC-CE (A-REX, fork LRMS) through the real ``syncd run``: outcomes with outputs and
logs, cancel, kill -9 at each phase then exactly once, A-REX's web service down for a while, a refused
credential."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.chaos import kill_at_each_point_then_finish
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.arc]
ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture
def arc_config(arc_site):
    """``build(**backend_overrides)`` → the config path of a site whose one inbox runs on the ARC-CE. The site lives
    in a folder the jobs (run as the CE's mapped user) can write to, for the ledgers they keep."""

    def build(**overrides):
        root = arc_site.scratch("e2e") / "site"
        section = arc_site.backend_section(connect_timeout="1s", request_timeout="5s", **overrides)
        config = make_config(root, backend="arc", max_parallel=4, extra={"backends": {"arc": section}})
        root.chmod(0o777)
        return config

    return build


def test_run_jobs_on_arc_succeed_fail_time_out_and_cancel_with_outputs_and_logs(arc_config):
    daemon = SyncdProcess(arc_config(), env=ENV).start()
    try:
        drop_job(
            daemon.inbox,
            "sorts",
            {"command": "sort data/in.txt > out/sorted.txt; echo sorted", "env": {"X": "1"}},
            {"data/in.txt": "b\nc\na\n", "out/.keep": ""},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo partial > partial.txt; echo oops >&2; exit 7"})
        drop_job(daemon.inbox, "too long", {"command": "echo begun; sleep 60", "timeout": "2s"})
        drop_job(daemon.inbox, "stopped", {"command": "sleep 60; echo never > never.txt"})
        wait_for(lambda: daemon.log().count("submitted to backend arc") >= 4, timeout=30, what="submission")
        daemon.cli("cancel", "stopped")
        results = {name: daemon.result(name, timeout=60) for name in ("sorts", "fails", "too long", "stopped")}
    finally:
        daemon.stop()
    out = daemon.outbox / "results"
    ok = results["sorts"]
    assert (ok["state"], ok["exit_code"], ok["remote_state"], ok["backend"]) == ("succeeded", 0, "FINISHED", "arc")
    assert (out / "sorts" / "out" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert (out / "sorts" / "syncd-stdout.txt").read_text() == "sorted\n"
    assert [o["path"] for o in ok["outputs"]] == ["out/sorted.txt"], "unchanged inputs are not outputs"
    failed = results["fails"]
    assert (failed["state"], failed["exit_code"], failed["remote_state"]) == ("failed", 7, "FAILED"), failed
    assert (out / "fails" / "partial.txt").read_text() == "partial\n"
    assert (out / "fails" / "syncd-stderr.txt").read_text() == "oops\n"
    late = results["too long"]
    assert late["state"] == "timed_out", late
    assert (out / "too long" / "syncd-stdout.txt").read_text() == "begun\n"
    assert results["stopped"]["state"] == "cancelled", results["stopped"]
    assert not (out / "stopped" / "never.txt").exists()


def test_run_kill_9_at_each_arc_phase_then_restart_runs_every_job_exactly_once(arc_config, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])  # the chaos helper's daemons get the test's environment
    points = ["after:submitting", "submitted-unrecorded", "after:running"]
    kills = kill_at_each_point_then_finish(arc_config(), points, per_life=1, timeout=90)
    assert len(kills) == len(points) + 1, kills


def test_run_arex_web_service_down_for_a_while_then_every_job_finishes_once(arc_config, arc_site):
    config = arc_config()
    ledger = config.parent / "ledger.txt"
    daemon = SyncdProcess(config, env=ENV).start()
    names = [f"outage-{i}" for i in range(3)]
    stopped = False
    try:
        drop_job(daemon.inbox, names[0], {"command": f"echo {names[0]} >> {ledger}; sleep 2; echo x > out.txt"})
        wait_for(lambda: "submitted to backend arc" in daemon.log(), timeout=30, what="submission")
        arc_site.web_service("stop")
        stopped = True
        for name in names[1:]:  # arrive while the CE is down: submission waits, it does not fail
            drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo x > out.txt"})
        wait_for(lambda: "backend arc is not answering" in daemon.log(), timeout=30, what="the breaker")
        arc_site.web_service("start")
        stopped = False
        results = {name: daemon.result(name, timeout=60) for name in names}
    finally:
        if stopped:
            arc_site.web_service("start")
        daemon.stop()
    assert {r["state"] for r in results.values()} == {"succeeded"}, results
    assert sorted(ledger.read_text().split()) == sorted(names), "every job ran exactly once"
    assert "backend arc answers again" in daemon.log()


def test_run_refused_credential_pauses_the_backend_and_resumes_when_fixed(arc_config, arc_site, tmp_path):
    subprocess.run(
        ["arcctl", "-c", str(arc_site.dir / "arc.conf"), "test-ca", "--ca-dir", str(arc_site.ca_dir)]
        + ["--ca-id", "syncd", "usercert", "-n", "stranger", "--no-auth", "-f"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes((tmp_path / "client-stranger-cert.pem").read_bytes())
    key.write_bytes((tmp_path / "client-stranger-key.pem").read_bytes())
    daemon = SyncdProcess(arc_config(certificate=str(cert), key=str(key)), env=ENV).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend arc paused" in daemon.log(), timeout=30, what="the backend to pause")
        cert.write_bytes(arc_site.cert.read_bytes())  # the user renews the credential in place
        key.write_bytes(arc_site.key.read_bytes())
        result = daemon.result("waits", timeout=90)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded", result
    assert "accepts the credentials again" in daemon.log()


@pytest.mark.s3
def test_run_inputs_through_the_inbox_s3_storage_reach_the_job_and_are_removed_after_delivery(arc_site, seaweedfs):
    root = arc_site.scratch("e2e-s3") / "site"
    bucket = f"arce2e-{uuid.uuid4().hex[:10]}"
    section = arc_site.backend_section(inputs="storage", connect_timeout="1s", request_timeout="5s")
    storages = {"local": {"type": "file", "root": "buckets"}, "s3": seaweedfs.storage_options(create_buckets=True)}
    config = make_config(
        root, backend="arc", storage="s3", bucket=bucket, extra={"backends": {"arc": section}, "storages": storages}
    )
    root.chmod(0o777)
    daemon = SyncdProcess(config, env=ENV).start()
    try:
        drop_job(
            daemon.inbox, "fetched", {"command": "sort 'data/in put.txt' > sorted.txt"}, {"data/in put.txt": "b\na\n"}
        )
        result = daemon.result("fetched", timeout=90, bucket=bucket)
    finally:
        daemon.stop()
    assert (result["state"], result["exit_code"]) == ("succeeded", 0), result
    assert (daemon.outbox / bucket / "fetched" / "sorted.txt").read_text() == "a\nb\n"
    left = seaweedfs.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    assert not [o["Key"] for o in left if "_inputs/" in o["Key"]], "the staged inputs are removed once delivered"
