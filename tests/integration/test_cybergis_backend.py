"""The CyberGIS-Compute backend's own cases against the emulator (the contract is tests/conformance/test_cybergis.py):
an interrupted multi-step submission is finished, not repeated; resources against the gateway's rules; a cancel
the gateway cannot carry out; a refused token; a job Slurm stopped; a job the gateway forgot in a restart."""

from __future__ import annotations

import pytest

from syncd.backends.base import RemoteRef, RemoteState
from syncd.backends.cybergis import CybergisBackend
from syncd.errors import AuthError, PermanentError, TransientError
from tests.conformance.test_cybergis import cybergis_harness
from tests.support.cybergis_service import CybergisService

pytestmark = pytest.mark.cybergis


@pytest.fixture
def harness(cybergis_service, tmp_path):
    return cybergis_harness(cybergis_service, tmp_path)


@pytest.mark.parametrize("step", ["PUT", "POST submit"])
def test_a_submission_interrupted_after_the_draft_is_finished_not_repeated(
    harness, cybergis_service, monkeypatch, step
):
    spec = harness.spec("echo once >> ran.txt")
    harness.stage(spec)
    before = {j["id"] for j in cybergis_service.jobs()}
    real = CybergisBackend._request

    def crash_at_step(self, method, route, what, body=None, **kw):
        if (method == "PUT" and step == "PUT" and route.startswith("/job/")) or (
            method == "POST" and step == "POST submit" and route.endswith("/submit")
        ):
            raise TransientError("the daemon died here")
        return real(self, method, route, what, body, **kw)

    monkeypatch.setattr(CybergisBackend, "_request", crash_at_step)
    with pytest.raises(TransientError):
        harness.backend.submit(spec)
    monkeypatch.setattr(CybergisBackend, "_request", real)
    fresh = harness.new_backend()
    found = fresh.find(spec)  # by the id written down at once (and by its marker, once it was filled in)
    assert found is not None and not found.complete
    ref = fresh.submit(spec)
    assert harness.wait(ref, backend=fresh).state is RemoteState.SUCCEEDED
    created = [j for j in cybergis_service.jobs() if j["id"] not in before]
    assert [j["id"] for j in created] == [ref.remote_id], "one draft, finished"
    assert fresh.find(spec).complete and fresh.submit(spec).remote_id == ref.remote_id


def test_a_job_is_found_by_its_marker_when_syncd_lost_its_notes(harness):
    spec = harness.spec("true")
    ref = harness.run(spec)
    (harness.backend.options.data_path / spec.submit_key / "ctrl" / "job_id").unlink()
    found = harness.new_backend().find(spec)
    assert found is not None and found.remote_id == ref.remote_id and found.complete


def test_resources_beyond_the_hpc_and_runner_rules_are_refused_with_the_allowed_range(harness):
    problems = harness.backend.check(
        harness.spec("true", resources={"cpus": 8, "memory": 9 * 2**30, "gpus": 1}, timeout=3 * 3600)
    )
    assert problems == [
        "resources.cpus: 8 is more than HPC 'emu_community' through CyberGIS-Compute at "
        f"{harness.backend.base} allows (at most 4); ask for less or use another inbox",
        f"resources.memory: 9 GiB is more than HPC 'emu_community' through CyberGIS-Compute at {harness.backend.base} "
        "allows (at most 8 GiB); ask for less or use another inbox",
        f"timeout: 03:00:00 is longer than HPC 'emu_community' through CyberGIS-Compute at {harness.backend.base} "
        "allows (at most 02:00:00); shorten it or use another inbox",
    ]
    assert (
        harness.backend.check(
            harness.spec("true", resources={"cpus": 4, "memory": 2**30, "walltime": 7200}, timeout=7200)
        )
        == []
    )


def test_resources_become_the_slurm_field_within_the_rules(harness, cybergis_service):
    spec = harness.spec("true", resources={"cpus": 2, "memory": 1536 * 2**20}, timeout=7200)
    ref = harness.run(spec)
    harness.wait(ref)
    job = next(j for j in cybergis_service.jobs() if j["id"] == ref.remote_id)
    assert job["slurm"] == {"cpu_per_task": 2, "memory": "1536M", "time": "02:00:00"}, (
        "the timeout's margin stops at the limit"
    )
    assert job["param"] == {"syncd_key": spec.submit_key} and job["env"] == {}


def test_an_unknown_runner_or_hpc_is_a_configuration_problem(cybergis_service, tmp_path):
    for override in ({"runner": "no-such-runner"}, {"hpc": "no-such-hpc"}):
        harness = cybergis_harness(cybergis_service, tmp_path, **override)
        with pytest.raises(PermanentError, match="no git runner 'no-such-runner'|no HPC 'no-such-hpc'"):
            harness.backend.check(harness.spec("true"))


def test_a_refused_token_is_an_auth_error_and_a_token_file_is_read_again(cybergis_service, tmp_path):
    token = tmp_path / "token"
    token.write_text("expired")
    token.chmod(0o600)
    harness = cybergis_harness(cybergis_service, tmp_path, token=None, token_file=str(token))
    with pytest.raises(AuthError, match="refused the JupyterHub token of hub.test"):
        harness.backend.probe()
    token.write_text(cybergis_service.TOKEN)
    harness.backend.probe()


def test_env_values_reach_the_command_byte_for_byte(harness):
    tricky = "a \"b\" $(no) `no` \\ 'c'\n"
    spec = harness.spec('printf "%s" "$TRICKY" > env.txt; printf "%s" "$SYNCD_JOB_ID" > id.txt', env={"TRICKY": tricky})
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    outputs = {o.relpath: o for o in harness.backend.outputs(ref, spec)}
    assert outputs["env.txt"].source.read_text() == tricky and outputs["id.txt"].source.read_text() == spec.job_id


def test_a_job_slurm_stopped_at_its_time_limit_fails_without_exit_code(harness, cybergis_service, monkeypatch):
    monkeypatch.setattr("syncd.backends.cybergis.api.slurm_time", lambda seconds: "0:1")
    spec = harness.spec("echo begun; sleep 30", timeout=10)
    ref = harness.run(spec)
    status = harness.wait(ref)
    assert status.state is RemoteState.FAILED and status.native == "JOB_ENDED"
    assert "recorded no exit code" in status.message
    assert "begun" in harness.backend.logs(ref).stdout.read_text()


def test_by_globus_a_job_without_exit_code_is_held_not_delivered_as_success(cybergis_service, tmp_path, monkeypatch):
    monkeypatch.setattr("syncd.backends.cybergis.api.slurm_time", lambda seconds: "0:1")
    harness = cybergis_harness(cybergis_service, tmp_path, globus=True)
    spec = harness.spec("sleep 30", timeout=10)
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED, "the gateway says JOB_ENDED; the results tell"
    with pytest.raises(PermanentError, match="recorded no exit code"):
        harness.backend.outputs(ref, spec)


def test_the_gateway_cannot_cancel_a_job_waiting_in_its_queue(tmp_path):
    service = CybergisService(tmp_path / "gateway")
    service.config["hpc"][service.HPC]["job_pool_capacity"] = 1
    (service.root / "config.json").write_text(__import__("json").dumps(service.config))
    service.start()
    try:
        harness = cybergis_harness(service, tmp_path)
        first = harness.run(harness.spec("sleep 1"))
        waiting = harness.run(harness.spec("echo ran > ran.txt"))
        assert harness.backend.poll([waiting])[waiting.remote_id].state is RemoteState.QUEUED
        with pytest.raises(PermanentError, match="not one still waiting in its queue"):
            harness.backend.cancel(waiting)
        assert harness.wait(waiting).state is RemoteState.SUCCEEDED, "it ran to its end, and says so"
        harness.backend.cancel(first)  # ended: harmless
    finally:
        service.stop()


def test_a_job_the_gateway_forgot_in_a_restart_ends_by_its_exit_file(tmp_path):
    service = CybergisService(tmp_path / "gateway").start()
    try:
        harness = cybergis_harness(service, tmp_path)
        spec = harness.spec("sleep 1; echo finished > done.txt; exit 4")
        ref = harness.run(spec)
        harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
        service.restart()
        with pytest.raises(PermanentError, match="nor one it forgot when it restarted"):
            harness.backend.cancel(ref)
        status = harness.wait(ref)
        assert (status.state, status.native) == (RemoteState.FAILED, "EXITED") and "restarted" in status.message
        outputs = {o.relpath: o for o in harness.backend.outputs(ref, spec)}
        assert outputs["done.txt"].source.read_text() == "finished\n"
        assert outputs[".syncd/exit-code"].source.read_text() == "4\n"
        assert harness.backend.poll([RemoteRef("1700000000AbCdE", {})])["1700000000AbCdE"].state is RemoteState.UNKNOWN
    finally:
        service.stop()


def test_a_job_that_never_reached_the_hpc_fails_with_the_gateways_events_as_its_log(cybergis_service, tmp_path):
    harness = cybergis_harness(cybergis_service, tmp_path, server_data_path=str(tmp_path / "not-what-the-gateway-sees"))
    spec = harness.spec("echo never")
    ref = harness.run(spec)
    status = harness.wait(ref)
    assert (status.state, status.native) == (RemoteState.FAILED, "JOB_FAILED")
    assert harness.backend.outputs(ref, spec) == []
    logs = harness.backend.logs(ref)
    assert logs.stdout.read_text() == ""
    events = logs.stderr.read_text()
    assert "could not find folder under path" in events and "initialization counter exceeds 3 counts" in events
