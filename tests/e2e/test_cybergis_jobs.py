"""Drop folders run through the CyberGIS-Compute gateway emulator by the real ``syncd run``: outputs, logs and the
result record; a failing, a timed-out and a cancelled job; resources beyond the HPC's rules; results by Globus;
kill -9 of the daemon at every step of the multi-step submission; the gateway down (and restarted) for a while;
a refused token."""

from __future__ import annotations

import json
import re

import pytest

from tests.support.chaos import assert_each_ran_once, kill_at_each_point_then_finish
from tests.support.cybergis_service import CybergisService
from tests.support.harness import SyncdProcess, drop_job, http_port, make_config, readyz, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.cybergis]


def _states(daemon: SyncdProcess) -> dict[str, str]:
    return {job["name"]: job["state"] for job in json.loads(daemon.cli("status", "--json").stdout)}


def cybergis_section(service: CybergisService, data, globus: bool = False, **overrides) -> dict:
    section = {
        "type": "cybergis",
        "url": service.url,
        "jupyterhub_host": service.HUB,
        "token": service.TOKEN,
        "hpc": service.HPC,
        "runner": service.RUNNER,
        "data_path": str(data),
        "connect_timeout": "1s",
        "request_timeout": "3s",
        "globus_poll": "0.2s",
        "max_parallel": 8,
    }
    section.update(
        {"globus_endpoint": service.HOST_ENDPOINT, "globus_path": str(data)}
        if globus
        else {"server_data_path": str(data), "results_path": str(service.root / "hpc")}
    )
    section.update(overrides)
    return section


@pytest.fixture
def cybergis_site(tmp_path, cybergis_service):
    def build(service: CybergisService | None = None, **overrides):
        section = cybergis_section(service or cybergis_service, tmp_path / "data", **overrides)
        return make_config(tmp_path / "site", backend="cybergis", extra={"backends": {"cybergis": section}})

    return build


def test_run_drop_folders_through_the_gateway_to_the_outbox(cybergis_site):
    daemon = SyncdProcess(cybergis_site()).start()
    try:
        drop_job(
            daemon.inbox,
            "sorts",
            {"command": "sort data/in.txt > sorted.txt; echo ran as $SYNCD_JOB_ID"},
            {"data/in.txt": "b\nc\na\n"},
        )
        drop_job(daemon.inbox, "fails", {"command": "echo oops >&2; echo partial > partial.txt; exit 7"})
        drop_job(
            daemon.inbox,
            "argv",
            {"command": ["python3", "-c", "import sys; open('a.txt', 'w').write(sys.argv[1])", 'x "y" $(no) `no`']},
        )
        drop_job(daemon.inbox, "too big", {"command": "true", "resources": {"cpus": 64}})
        results = {name: daemon.result(name, timeout=60) for name in ("sorts", "fails", "argv")}
        wait_for(lambda: (daemon.root / "failed" / "too big" / "ERROR.txt").exists(), what="the rejection")
    finally:
        daemon.stop()
    out = daemon.outbox / "results"
    sorts = results["sorts"]
    assert (sorts["state"], sorts["backend"], sorts["remote_state"], sorts["exit_code"]) == (
        "succeeded",
        "cybergis",
        "JOB_ENDED",
        0,
    ), sorts
    assert re.fullmatch(r"\d{10}[A-Za-z0-9]{5}", sorts["remote_id"])
    assert (out / "sorts" / "sorted.txt").read_text() == "a\nb\nc\n"
    assert not (out / "sorts" / "data").exists(), "an input the job left unchanged is not an output"
    assert f"ran as {sorts['id']}" in (out / "sorts" / "syncd-stdout.txt").read_text()
    fails = results["fails"]
    assert (fails["state"], fails["exit_code"], fails["remote_state"]) == ("failed", 7, "JOB_FAILED"), fails
    assert "oops" in (out / "fails" / "syncd-stderr.txt").read_text()
    assert (out / "fails" / "partial.txt").read_text() == "partial\n"
    assert (out / "argv" / "a.txt").read_text() == 'x "y" $(no) `no`'
    assert not list(out.glob("*/.syncd")), "syncd's wrapper files are never delivered"
    assert (
        "resources.cpus: 64 is more than HPC 'emu_community'"
        in (daemon.root / "failed" / "too big" / "ERROR.txt").read_text()
    )


def test_run_timeout_and_cancel_stop_the_job_on_the_gateway(cybergis_site, cybergis_service):
    daemon = SyncdProcess(cybergis_site()).start()
    try:
        drop_job(daemon.inbox, "too long", {"command": "echo begun; sleep 60", "timeout": "2s"})
        drop_job(daemon.inbox, "cancelled", {"command": "echo waiting; sleep 60"})
        wait_for(lambda: _states(daemon).get("cancelled") == "running", timeout=30, what="the job to run")
        said = daemon.cli("cancel", "cancelled").stdout
        timed_out, cancelled = daemon.result("too long", timeout=60), daemon.result("cancelled", timeout=60)
    finally:
        daemon.stop()
    assert "note:" not in said, "the gateway can stop a running job"
    assert (timed_out["state"], timed_out["remote_state"]) == ("timed_out", "JOB_ENDED"), timed_out
    assert "begun" in (daemon.outbox / "results" / "too long" / "syncd-stdout.txt").read_text()
    assert (cancelled["state"], cancelled["remote_state"]) == ("cancelled", "JOB_ENDED"), cancelled
    for result in (timed_out, cancelled):
        assert cybergis_service.events(result["remote_id"])[-1] == "JOB_ENDED", "the gateway calls it ended"


def test_run_results_come_by_globus_while_the_job_waits_without_spending_retries(cybergis_site):
    daemon = SyncdProcess(cybergis_site(globus=True)).start()
    try:
        drop_job(daemon.inbox, "by globus", {"command": "mkdir -p out && echo far > out/far.txt; echo said"})
        result = daemon.result("by globus", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded", result
    assert (daemon.outbox / "results" / "by globus" / "out" / "far.txt").read_text() == "far\n"
    assert "said" in (daemon.outbox / "results" / "by globus" / "syncd-stdout.txt").read_text()
    assert "results not ready yet" in daemon.log() and "Globus transfer" in daemon.log()


def test_run_kill_9_at_every_step_of_the_submission_then_every_job_runs_exactly_once(cybergis_site):
    points = ["after:submitting", "submitted-unrecorded", "after:submitted", "after:running", "delivered-unrecorded"]
    kills = kill_at_each_point_then_finish(cybergis_site(), points, per_life=1, timeout=60)
    assert len(kills) == len(points) + 1, kills


def test_run_gateway_not_answering_for_a_while_then_every_job_finishes_exactly_once(cybergis_site, tmp_path):
    service = CybergisService(tmp_path / "gateway").start()
    ledger = tmp_path / "ledger.txt"
    names = [f"outage-{i}" for i in range(4)]
    try:
        daemon = SyncdProcess(cybergis_site(service)).start()
        try:
            for name in names[:2]:
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 1; echo {name} > out.txt"})
            wait_for(lambda: list(_states(daemon).values()) == ["running"] * 2, timeout=30, what="both jobs running")
            service.freeze()
            try:
                for name in names[2:]:  # they arrive while the gateway hangs: they wait, they do not fail
                    drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo {name} > out.txt"})
                wait_for(lambda: "is not answering" in daemon.log(), timeout=30, what="the circuit to open")
                wait_for(lambda: len(ledger.read_text().split()) == 2, what="the first jobs' runs, on the HPC")
            finally:
                service.thaw()
            results = {name: daemon.result(name, timeout=60) for name in names}
        finally:
            daemon.stop()
    finally:
        service.stop()
    assert_each_ran_once(daemon.root, names, results, ledger)
    assert "answers again" in daemon.log()


def test_run_gateway_restarted_mid_flight_running_and_queued_jobs_finish_exactly_once(cybergis_site, tmp_path):
    """A restart makes the gateway forget the jobs it runs: the one on the HPC ends by syncd's exit file (results
    mounted); the one in its queue (kept in Redis) runs after; a job dropped meanwhile waits for it."""
    service = CybergisService(tmp_path / "gateway")
    service.config["hpc"][service.HPC]["job_pool_capacity"] = 1
    (service.root / "config.json").write_text(json.dumps(service.config))
    service.start()
    ledger = tmp_path / "ledger.txt"
    names = ["first", "second", "while-down"]
    try:
        daemon = SyncdProcess(cybergis_site(service)).start()
        try:
            for name in names[:2]:
                drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; sleep 3; echo {name} > out.txt"})

            def one_running_one_queued():
                found = _states(daemon)
                return found if sorted(found.values()) == ["queued", "running"] else None

            states = wait_for(one_running_one_queued, timeout=30, what="one job running, one in the gateway's queue")
            service.kill()
            drop_job(daemon.inbox, names[2], {"command": f"echo {names[2]} >> {ledger}; echo {names[2]} > out.txt"})
            wait_for(lambda: "is not answering" in daemon.log(), timeout=30, what="the circuit to open")
            service.start()
            results = {name: daemon.result(name, timeout=60) for name in names}
        finally:
            daemon.stop()
    finally:
        service.stop()
    assert_each_ran_once(daemon.root, names, results, ledger)
    running = next(name for name, state in states.items() if state == "running")
    queued = next(name for name, state in states.items() if state == "queued")
    assert results[running]["remote_state"] == "EXITED", "the gateway never recorded its end"
    # The gateway ran the queued one after its restart (once: the ledger); a poll may see syncd's exit file
    # before the gateway has recorded the end (EXITED), or after (JOB_ENDED).
    assert results[queued]["remote_state"] in ("JOB_ENDED", "EXITED")


def test_run_refused_token_pauses_the_backend_and_resumes_when_fixed(cybergis_site, cybergis_service, tmp_path):
    token = tmp_path / "token"
    token.write_text("revoked-token")
    token.chmod(0o600)
    daemon = SyncdProcess(cybergis_site(token=None, token_file=str(token))).start()
    try:
        drop_job(daemon.inbox, "waits", {"command": "echo hello > hello.txt"})
        wait_for(lambda: "backend cybergis paused" in daemon.log(), timeout=30, what="the backend to pause")
        state = json.loads(daemon.cli("status", "--json").stdout)[0]["state"]
        assert state in ("validated", "staging", "staged", "submitting"), state
        code, body = readyz(http_port(daemon))
        assert code == 503 and "credentials refused" in body["problems"]["backend cybergis"]
        token.write_text(cybergis_service.TOKEN)
        result = daemon.result("waits", timeout=60)
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert "accepts the credentials again" in daemon.log()
    assert "revoked-token" not in daemon.log()
