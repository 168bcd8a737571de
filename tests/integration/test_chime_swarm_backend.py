"""The chime-swarm backend's own cases against the frb-master emulator: what the conformance suite does not ask of
every backend (JWT refresh, the regex status call, the spellings of success, the shared site folder)."""

from __future__ import annotations

import json

import pytest

from syncd.backends import wrapper
from syncd.backends.base import JobSpec, RemoteState
from syncd.backends.chime_swarm import ChimeSwarmBackend, ChimeSwarmOptions
from syncd.errors import AccountError, AuthError, NotReady
from tests.conformance.harness import Harness


def backend_for(service, tmp_path, user=None, **overrides) -> tuple[ChimeSwarmBackend, Harness, dict]:
    user = user or service.add_user()
    section = {
        "type": "chime-swarm",
        "url": service.url,
        "access_token": {"token": user["access_token"]},
        "refresh_token": {"token": user["refresh_token"]},
        "image": "chimefrb/syncd-test:latest",
        "work_folder": str(tmp_path / "site"),
        **overrides,
    }
    options = ChimeSwarmOptions.model_validate(section)
    backend = ChimeSwarmBackend("chime", options, tmp_path / "state")
    harness = Harness(
        backend=backend,
        new_backend=lambda: ChimeSwarmBackend("chime", options, tmp_path / "state"),
        scratch=tmp_path,
        poll_interval=0.05,
        timeout=30,
        request_count=lambda: backend.requests_sent,
    )
    return backend, harness, user


def attempt(spec: JobSpec, n: int, command: str) -> JobSpec:
    return JobSpec(
        job_id=spec.job_id,
        name=spec.name,
        submit_key=f"{spec.submit_key}-{n}",
        attempt=n,
        command=command,
    )


def test_one_status_request_tells_each_attempt_apart_though_the_first_key_prefixes_the_others(
    chime_swarm_service, tmp_path
):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path)
    first = harness.spec("exit 1")
    specs = [first, attempt(first, 2, "exit 0"), attempt(first, 10, "sleep 30")]
    refs = [harness.run(spec) for spec in specs]
    harness.wait(refs[0])
    harness.wait(refs[1])
    before = chime_swarm_service.count("/v1/swarm/job-status/")
    statuses = backend.poll(refs)
    assert chime_swarm_service.count("/v1/swarm/job-status/") - before == 1
    assert [statuses[r.remote_id].state for r in refs] == [
        RemoteState.FAILED,
        RemoteState.SUCCEEDED,
        RemoteState.RUNNING,
    ]
    assert backend.poll(refs[:1])[refs[0].remote_id].state is RemoteState.FAILED, "the first key alone: its own job"
    backend.cancel(refs[2])
    assert harness.wait(refs[2]).state is RemoteState.CANCELLED


def test_the_other_spelling_of_success_is_success(chime_swarm_service, tmp_path):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path)
    chime_swarm_service.success_word = "completed"
    try:
        ref = harness.run(harness.spec("true"))
        status = harness.wait(ref)
    finally:
        chime_swarm_service.success_word = "complete"
    assert (status.state, status.native) == (RemoteState.SUCCEEDED, "completed")


def test_a_token_about_to_expire_is_refreshed_once_before_it_is_sent(chime_swarm_service, tmp_path):
    user = chime_swarm_service.add_user()
    user["access_token"] = chime_swarm_service.access_token(user["user"], life=60)  # within refresh_before
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path, user=user)
    refreshes = chime_swarm_service.count("/auth/refresh")
    ref = harness.run(harness.spec("true"))
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    assert chime_swarm_service.count("/auth/refresh") - refreshes == 1, "the new token lasts: no refresh per call"
    backend.probe()


def test_an_expired_token_is_refreshed_and_a_refused_refresh_pauses_the_backend(chime_swarm_service, tmp_path):
    user = chime_swarm_service.add_user()
    user["access_token"] = chime_swarm_service.access_token(user["user"], life=-10)
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path, user=user)
    backend.probe()  # refreshed first
    chime_swarm_service.revoke(user["refresh_token"])
    fresh, _, _ = backend_for(chime_swarm_service, tmp_path / "again", user=user)
    with pytest.raises(AccountError, match="refused the refresh token"):
        fresh.poll([harness.run(harness.spec("true"))])


def test_without_a_refresh_token_an_expired_token_is_an_auth_error_naming_the_fix(chime_swarm_service, tmp_path):
    user = chime_swarm_service.add_user()
    user["access_token"] = chime_swarm_service.access_token(user["user"], life=-10)
    backend, _, _ = backend_for(chime_swarm_service, tmp_path, user=user, refresh_token=None)
    with pytest.raises(AuthError, match="refresh_token"):
        backend.probe()


def test_a_lost_spawn_answer_is_found_by_name_and_never_spawned_twice(chime_swarm_service, tmp_path):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path)
    spec = harness.spec("echo once >> runs.txt")
    ref = harness.run(spec)
    marker = tmp_path / "site" / spec.submit_key / "ctrl" / "spawned.json"
    marker.write_text(json.dumps({"asked": 1}))  # the daemon died after asking, before the answer was written
    spawns = chime_swarm_service.count("/v1/swarm/spawn-job")
    fresh = harness.new_backend()
    found = fresh.find(spec)
    assert found is not None and found.remote_id == ref.remote_id
    marker.write_text(json.dumps({"asked": 1}))
    assert fresh.submit(spec).remote_id == ref.remote_id
    assert chime_swarm_service.count("/v1/swarm/spawn-job") == spawns
    harness.wait(ref)
    assert (tmp_path / "site" / spec.submit_key / "work" / "runs.txt").read_text() == "once\n"


def test_inputs_and_outputs_go_through_the_site_folder_as_the_jobs_mount_it(chime_swarm_service, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "mount").symlink_to(tmp_path / "site")  # the jobs' view of the same storage, at another path
    backend, harness, _ = backend_for(
        chime_swarm_service, tmp_path, job_work_folder=str(tmp_path / "mount"), environment={"SITE": "drao"}
    )
    spec = harness.spec(
        'pwd > where.txt; tr a-z A-Z < in/data.txt > out.txt; echo "$SITE $SYNCD_ATTEMPT"; exit 2',
        resources={"cpus": 2, "memory": 2 * 1024**3},
    )
    ref = harness.run(spec, {"in/data.txt": b"hello\n"})
    assert harness.wait(ref).state is RemoteState.FAILED
    outputs = {o.relpath: o.source.read_text() for o in backend.outputs(ref, spec)}
    assert outputs["out.txt"] == "HELLO\n" and outputs[wrapper.EXIT_FILE] == "2\n"
    assert outputs["where.txt"].startswith(str(tmp_path / "mount")), "the job ran in its folder as it mounts it"
    assert backend.logs(ref).stdout.read_text() == "drao 1\n"
    spawned = chime_swarm_service.record(ref.remote_id)["spec"]
    assert (spawned["job_cpu_limit"], spawned["job_mem_limit"]) == (2.0, 2 * 1024**3)
    assert spawned["mount_archiver"] is True and spawned["image_name"] == "chimefrb/syncd-test:latest"


def test_an_image_the_cluster_cannot_pull_fails_with_the_reason_and_the_service_log(chime_swarm_service, tmp_path):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path, image="nowhere/none:1")
    chime_swarm_service.missing_images.add("nowhere/none:1")
    try:
        ref = harness.run(harness.spec("true"))
        status = harness.wait(ref)
    finally:
        chime_swarm_service.missing_images.clear()
    assert (status.state, status.native) == (RemoteState.FAILED, "rejected") and "image" in status.message
    assert backend.logs(ref).stdout is None, "the job never ran: no log to show"


def test_cleanup_kills_then_prunes_and_removes_the_folder(chime_swarm_service, tmp_path):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path)
    spec = harness.spec("true")
    ref = harness.run(spec)
    harness.wait(ref)
    calls = len(chime_swarm_service.calls)
    backend.cleanup(ref)
    paths = [c["path"] for c in chime_swarm_service.calls[calls:]]
    assert [p.split("/")[3] for p in paths] == ["kill-job", "prune-job"]
    assert chime_swarm_service.record(ref.remote_id) is None
    assert not (tmp_path / "site" / spec.submit_key).exists()
    backend.cleanup(ref)  # again: harmless
    assert backend.poll([ref])[ref.remote_id].state is RemoteState.UNKNOWN


def test_a_completed_job_whose_exit_file_is_not_visible_yet_is_not_ready(chime_swarm_service, tmp_path):
    backend, harness, _ = backend_for(chime_swarm_service, tmp_path)
    spec = harness.spec("echo made > made.txt")
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    exit_file = tmp_path / "site" / spec.submit_key / "work" / wrapper.EXIT_FILE
    exit_file.rename(exit_file.with_name("later"))  # as a network filesystem shows another host's write late
    with pytest.raises(NotReady):
        backend.outputs(ref, spec)
    exit_file.with_name("later").rename(exit_file)
    assert sorted(o.relpath for o in backend.outputs(ref, spec)) == [wrapper.EXIT_FILE, "made.txt"]
