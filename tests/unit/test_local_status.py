"""What the local backend says of a job from its control folder alone, in each state a runner can leave it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import threading

import pytest

from syncd.backends import local, local_runner
from syncd.backends.base import JobSpec, RemoteRef, RemoteState
from syncd.backends.containment import cgroup_available
from syncd.backends.local import LocalBackend, LocalOptions
from tests.support.harness import wait_for


@pytest.fixture
def backend(tmp_path):
    options = LocalOptions.model_validate({"type": "local"})
    local = LocalBackend("local", options, tmp_path / "work")
    yield local
    local.close()


def status_of(backend: LocalBackend, key: str):
    return backend.poll([RemoteRef(key)])[key]


def test_each_state_of_a_control_folder_is_told_apart(backend, tmp_path):
    ctrl = tmp_path / "work" / "syncd-a" / "ctrl"
    assert status_of(backend, "syncd-a").state == RemoteState.UNKNOWN  # never staged here
    ctrl.mkdir(parents=True)
    assert status_of(backend, "syncd-a").state == RemoteState.QUEUED  # the runner has not claimed it yet
    (ctrl / "claim").write_text("not a pid")
    lost = status_of(backend, "syncd-a")
    assert (lost.state, lost.native) == (RemoteState.FAILED, "lost")  # claimed, no runner holds its lock
    assert "died without recording an exit status" in (lost.message or "")
    held = os.open(ctrl / "claim", os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert status_of(backend, "syncd-a").state == RemoteState.RUNNING
    finally:
        os.close(held)
    (ctrl / "status.json").write_text(json.dumps({"exit_code": 0, "started": 1.0, "ended": 2.0}))
    done = status_of(backend, "syncd-a")
    assert (done.state, done.exit_code, done.started, done.ended) == (RemoteState.SUCCEEDED, 0, 1.0, 2.0)
    (ctrl / "status.json").write_text(json.dumps({"exit_code": None, "cancelled": True}))
    assert status_of(backend, "syncd-a").state == RemoteState.CANCELLED


def test_a_file_where_the_control_folder_should_be_is_unknown_not_an_error(backend, tmp_path):
    attempt = tmp_path / "work" / "syncd-b"
    attempt.mkdir(parents=True)
    (attempt / "ctrl").write_text("not a folder")
    assert status_of(backend, "syncd-b").state == RemoteState.UNKNOWN


def test_a_runner_that_locks_alive_lock_is_told_alive_and_dead_by_that_lock(backend, tmp_path):
    """Runners of an older syncd, and runners on a filesystem without hard links, hold alive.lock."""
    ctrl = tmp_path / "work" / "syncd-c" / "ctrl"
    ctrl.mkdir(parents=True)
    (ctrl / "claim").write_text("12345")
    held = os.open(ctrl / "alive.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert status_of(backend, "syncd-c").state == RemoteState.RUNNING
    finally:
        os.close(held)
    assert status_of(backend, "syncd-c").native == "lost"


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_a_claim_is_one_runners_and_locked_while_it_is_held(backend, tmp_path, monkeypatch, hard_links):
    if not hard_links:

        def refused(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(local_runner.os, "link", refused)
    ctrl = tmp_path / "work" / "syncd-d" / "ctrl"
    ctrl.mkdir(parents=True)
    held = local_runner.claim(ctrl)
    assert held is not None
    try:
        assert local_runner.read_claim(ctrl) == (os.getpid(), {}, None)
        assert status_of(backend, "syncd-d").state == RemoteState.RUNNING
        assert local_runner.claim(ctrl) is None, "a second runner of the attempt does not claim it"
        assert status_of(backend, "syncd-d").state == RemoteState.RUNNING
    finally:
        os.close(held)
    assert status_of(backend, "syncd-d").native == "lost", "no status and no lock: the runner died"
    files = {"claim"} if hard_links else {"claim", "alive.lock"}
    assert {path.name for path in ctrl.iterdir()} == files, "nothing else is left behind"


def test_a_runner_that_does_its_work_leaves_no_log_and_one_that_fails_says_why_in_it(tmp_path):
    attempt = tmp_path / "syncd-e"
    (attempt / "ctrl").mkdir(parents=True)
    (attempt / "work").mkdir()
    spec = {"command": "echo ok > out.txt", "env": {"PATH": os.environ["PATH"]}, "containment": "subreaper"}
    (attempt / "ctrl" / "spec.json").write_text(json.dumps(spec))
    local_runner.start_detached(attempt, attempt / "ctrl" / "runner.log")
    status = wait_for(lambda: local_runner.read_claim(attempt / "ctrl").status, what="the runner's status")
    assert status["exit_code"] == 0 and (attempt / "work" / "out.txt").exists()
    assert not (attempt / "ctrl" / "runner.log").exists()
    broken = tmp_path / "syncd-f"
    (broken / "ctrl").mkdir(parents=True)
    (broken / "ctrl" / "spec.json").write_text("{not json")
    local_runner.start_detached(broken, broken / "ctrl" / "runner.log")
    log = broken / "ctrl" / "runner.log"
    wait_for(lambda: "JSONDecodeError" in (log.read_text() if log.exists() else ""), what="the runner's log")
    assert not (broken / "ctrl" / "claim").exists()


def _submitted(backend: LocalBackend, command: str) -> tuple[JobSpec, RemoteRef]:
    spec = JobSpec(job_id="j1", name="job-one", submit_key="syncd-j1", attempt=1, command=command, env={})
    backend.stage(spec, [])
    ref = backend.submit(spec)
    wait_for(lambda: status_of(backend, ref.remote_id).state == RemoteState.SUCCEEDED, what="the job's end")
    return spec, ref


def test_a_runner_started_by_the_launcher_is_handed_its_spec_and_keeps_its_record_in_the_claim(backend, tmp_path):
    _, ref = _submitted(backend, "echo $SYNCD_JOB_NAME > out.txt")
    attempt = tmp_path / "work" / ref.remote_id
    assert (attempt / "work" / "out.txt").read_text() == "job-one\n", "the spec reached the runner"
    ctrl = attempt / "ctrl"
    assert {path.name for path in ctrl.iterdir()} == {"claim", "inputs.json", "stdout.txt", "stderr.txt"}
    pid, record, status = local_runner.read_claim(ctrl)
    assert pid is not None and pid != os.getpid()
    assert record["containment"]["kind"] in ("cgroup", "subreaper") and record["pgid"] > 0
    assert status is not None and status["exit_code"] == 0 and status["ended"] >= status["started"]


def test_without_its_launcher_a_runner_reads_its_spec_from_a_file(backend, tmp_path, monkeypatch):
    def broken(*args):
        raise BrokenPipeError("the launcher is gone")

    monkeypatch.setattr(backend._launcher, "start", broken)
    _, ref = _submitted(backend, "echo $SYNCD_JOB_NAME > out.txt")
    attempt = tmp_path / "work" / ref.remote_id
    assert (attempt / "work" / "out.txt").read_text() == "job-one\n"
    assert json.loads((attempt / "ctrl" / "spec.json").read_text())["env"]["SYNCD_JOB_NAME"] == "job-one"


def test_a_claim_is_read_line_by_line_and_an_older_runners_files_instead_of_a_claim_without_a_line_end(tmp_path):
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    (ctrl / "runner.json").write_text('{"pgid": 5}')
    (ctrl / "status.json").write_text('{"exit_code": 3}')
    (ctrl / "claim").write_text("42")
    assert local_runner.read_claim(ctrl) == (42, {"pgid": 5}, {"exit_code": 3}), "a claim of an older syncd"
    (ctrl / "claim").write_text("42\n")
    assert local_runner.read_claim(ctrl) == (42, {}, None), "claimed, not started: an older runner's files are not read"
    (ctrl / "claim").write_text('42\n{"runner": {"pgid": 7}}\n{"status": {"exit_co')
    assert local_runner.read_claim(ctrl) == (42, {"pgid": 7}, None), "a line half appended is not read"
    (ctrl / "claim").write_text('42\n{"runner": {"pgid": 7}}\n{"status": {"exit_code": 0}}\n')
    assert local_runner.read_claim(ctrl) == (42, {"pgid": 7}, {"exit_code": 0})


def test_a_runner_records_its_end_in_the_claim_flushed_before_it_lets_the_claim_go(tmp_path, monkeypatch):
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    held = local_runner.claim(ctrl)
    assert held is not None
    flushed: list[bytes] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append((ctrl / "claim").read_bytes()), real_fsync(fd))[1])
    try:
        local_runner._record_end(ctrl, {"exit_code": 0})
    finally:
        os.close(held)
    assert flushed and flushed[-1].endswith(b'{"status": {"exit_code": 0}}\n'), flushed


def test_what_a_runner_killed_with_minus_9_left_running_is_killed_at_clean_up(tmp_path):
    if not cgroup_available():
        pytest.skip("needs a cgroup v2 folder this user may make cgroups in")
    options = LocalOptions.model_validate({"type": "local", "containment": "cgroup"})
    backend = LocalBackend("local", options, tmp_path / "work")
    try:
        spec = JobSpec(job_id="k1", name="job-k", submit_key="syncd-k1", attempt=1, command="sleep 300", env={})
        backend.stage(spec, [])
        ref = backend.submit(spec)
        ctrl = tmp_path / "work" / ref.remote_id / "ctrl"
        claim = wait_for(lambda: (c := local_runner.read_claim(ctrl)).runner and c, what="the runner's record")
        cgroup = claim.runner["containment"]["cgroup"]
        job = claim.runner["pgid"]
        assert claim.pid is not None
        os.kill(claim.pid, signal.SIGKILL)
        wait_for(lambda: status_of(backend, ref.remote_id).native == "lost", what="the runner's death")
        os.kill(job, 0)  # the job outlived its runner
        backend.cleanup(ref)
        assert not os.path.exists(cgroup), "the job's cgroup is removed"
        wait_for(lambda: not _alive(job), what="the job left running to be killed")
    finally:
        backend.close()


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_job_whose_runner_is_watched_is_running_without_a_look_at_its_control_folder(backend, tmp_path, monkeypatch):
    """A poll covers every running job of the backend, and one follows each job's end: reading each claim and
    testing its lock cost two opens per running job per end heard."""
    heard = threading.Event()
    polled_when_heard: list[RemoteState] = []

    def ended(key: str) -> None:  # as the engine does: the end heard, a poll at once
        polled_when_heard.append(status_of(backend, key).state)
        heard.set()

    backend.watch(ended)
    spec = JobSpec(
        job_id="w1", name="job-w", submit_key="syncd-w1", attempt=1, command="while [ ! -e go ]; do sleep 0.02; done"
    )
    backend.stage(spec, [])
    ref = backend.submit(spec)
    looked: list[object] = []
    read_claim, runner_alive = local.read_claim, backend._runner_alive
    monkeypatch.setattr(local, "read_claim", lambda ctrl: looked.append(ctrl) or read_claim(ctrl))
    monkeypatch.setattr(backend, "_runner_alive", lambda ctrl: looked.append(ctrl) or runner_alive(ctrl))
    for _ in range(3):
        assert status_of(backend, ref.remote_id).state == RemoteState.RUNNING
    assert looked == [], "the runner's exit is watched: its job's end is heard, not read"
    (tmp_path / "work" / ref.remote_id / "work" / "go").touch()
    assert heard.wait(30), "the runner's end was not heard"
    assert polled_when_heard == [RemoteState.SUCCEEDED], "the poll an end causes reads the claim"
    assert status_of(backend, ref.remote_id).state == RemoteState.SUCCEEDED
    assert looked, "once its runner has ended, the claim says how the job ended"
