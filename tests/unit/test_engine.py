"""The engine's promises, driven through the in-memory reference backend with injected faults."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from syncd.backends.local import LocalBackend
from syncd.backends.memory import MemoryBackend, MemoryService
from syncd.engine import base as engine_base
from syncd.engine import submission
from syncd.engine.base import remote_ref
from syncd.engine.core import Engine
from syncd.errors import AuthError, TransientError
from syncd.fsutil import TMP_DIR
from syncd.service.daemon import build_storages, load
from syncd.state.commits import GroupCommit
from syncd.state.store import Store, StoreUnwritable
from syncd.storage.file import FileStorage
from tests.support.harness import make_config, make_job, wait_for


@pytest.fixture
def world(tmp_path):
    """An engine on a memory backend; returns (engine, service, drop) where drop(name, manifest) claims a job."""
    path = make_config(tmp_path / "site", backend="mem", extra={"backends": {"mem": {"type": "memory"}}})
    data = yaml.safe_load(path.read_text())
    data["retry"] = {"initial": "0.05s", "max": "0.3s", "budget": "30s"}
    data["poll"] = {"first": "0.05s", "max": "0.2s"}
    path.write_text(yaml.safe_dump(data))
    config = load(path)
    store = Store(config.db_path)
    service = MemoryService()
    backend = MemoryBackend("mem", config.backend_options["mem"], config.state_dir / "mem", service)
    engine = Engine(config, store, {"mem": backend}, build_storages(config))
    engine.prepare()
    inbox = config.inboxes[0]

    def drop(name, manifest):
        assert engine.claim(inbox, make_job(inbox.path, name, manifest))
        return store.find(name)[0].id

    yield engine, service, drop
    engine.stop(5)
    store.close()


def _pump_until(engine, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the engine never reached the expected state"
        engine.pump()
        for name in engine.backends:
            engine.poll_backend(name)
        time.sleep(0.05)


def _result(engine, job_id):
    job = engine.store.get(job_id)
    path = engine.outboxes[job.inbox].path_for(job.bucket, f"{job.folder}/syncd-result.json")
    return json.loads(path.read_text())


def test_engine_transient_failures_back_off_then_succeed_without_a_second_job(world):
    engine, service, drop = world
    service.fail_next(TransientError("503 from the service"), times=3)
    job_id = drop("flaky-service", {"command": "echo ok > ok.txt"})
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded"
    assert len(service.jobs) == 1, "a retried submission must not create a second remote job"
    failures = [e.message for e in engine.store.events(job_id) if "transient failure" in e.message]
    assert len(failures) == 3 and all("503 from the service" in m for m in failures)


def test_engine_transient_failures_past_the_budget_hold_the_job_and_retry_resumes_it(world):
    engine, service, drop = world
    engine.config = engine.config.model_copy(update={"retry": engine.config.retry.model_copy(update={"budget": 0.3})})
    service.fail_next(TransientError("connection refused"), times=1000)
    job_id = drop("dead-service", {"command": "true"})
    engine.run_until_idle(30)
    job = engine.store.get(job_id)
    assert job.state == "held" and job.held_from == "submitting"
    assert "connection refused" in job.error and "syncd retry" in job.error
    service.failures.clear()
    engine.store.request(job_id, "retry")
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded"


def test_engine_refused_credentials_pause_the_backend_without_spending_retries(world):
    engine, service, drop = world
    service.fail_next(AuthError("token expired"), times=2)
    job_id = drop("needs-auth", {"command": "true"})
    engine.pump()
    engine.run_until_idle(0.5)
    assert "mem" in engine.store.backend_pauses()
    job = engine.store.get(job_id)
    assert job.state == "submitting" and job.failures == 0, "a pause is not a failure of the job"
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded"
    assert engine.store.backend_pauses() == {}


def test_engine_vanished_job_is_held_never_succeeded(world):
    engine, service, drop = world
    job_id = drop("vanishes", {"command": "sleep 30"})
    _pump_until(engine, lambda: engine.store.get(job_id).state == "running")
    lost = service.jobs.pop(engine.store.get(job_id).remote_id)  # the service forgets it
    MemoryBackend._kill(lost)
    engine.run_until_idle(30)
    job = engine.store.get(job_id)
    assert job.state == "held" and "vanished job is not a finished one" in job.error


def test_engine_manifest_retries_rerun_a_failed_job(world, tmp_path):
    engine, service, drop = world
    marker = tmp_path / "first-run-done"
    command = f"if [ -e {marker} ]; then echo second > out.txt; else touch {marker}; exit 9; fi"
    job_id = drop("second-time-lucky", {"command": command, "retries": 1})
    engine.run_until_idle(30)
    job = engine.store.get(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2)
    result = _result(engine, job_id)
    assert result["attempts"] == 2 and result["submit_key"].endswith("-2")
    assert any("attempt 1 failed (exit code 9)" in e.message for e in engine.store.events(job_id))


def test_engine_cancel_before_submission_delivers_a_cancelled_record(world):
    engine, service, drop = world
    engine.backends["mem"].options = engine.backends["mem"].options.model_copy(update={"max_parallel": 1})
    busy = drop("busy", {"command": "sleep 30"})
    _pump_until(engine, lambda: engine.store.get(busy).remote_id)
    waiting = drop("waiting", {"command": "echo never > never.txt"})
    _pump_until(engine, lambda: engine.store.get(waiting).state == "staged")
    engine.store.request(waiting, "cancel")
    engine.store.request(busy, "cancel")
    engine.run_until_idle(30)
    assert engine.store.get(waiting).state == "cancelled"
    assert engine.store.get(waiting).remote_id is None, "a job cancelled while waiting is never submitted"
    assert _result(engine, waiting)["state"] == "cancelled"
    assert engine.store.get(busy).state == "cancelled"
    assert len(service.jobs) == 1


class _DeadStorage:
    """A storage whose service calls fail with a transport error while ``down``; counts the calls."""

    remote_service = True
    remote_calls = FileStorage.remote_calls

    def __init__(self, storage):
        self._storage = storage
        self.down = True
        self.calls = 0

    def __getattr__(self, name):
        value = getattr(self._storage, name)
        if name not in self.remote_calls:
            return value

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise TransientError(f"{name}: connection refused by the storage")
            return value(*args, **kwargs)

        return call


def test_engine_dead_storage_costs_one_probe_per_interval_not_one_call_per_job(world):
    engine, service, drop = world
    dead = _DeadStorage(engine.storages["local"])
    engine.storages = {"local": engine._guard("storage", "local", dead)}
    jobs = [drop(f"waits-{i:02d}", {"command": "echo ok > ok.txt"}) for i in range(12)]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        engine.pump()
        time.sleep(0.02)
    circuits = engine.store.open_circuits()
    assert list(circuits) == ["storage local"] and "connection refused" in circuits["storage local"][2]
    # Each job alone would have retried ~2 s / 0.15 s ≈ 13 times: 12 jobs ≈ 150 calls.
    assert dead.calls <= 25, f"{dead.calls} calls reached a dead storage in 2 s"
    assert all(engine.store.get(j).state == "claimed" and engine.store.get(j).failures > 0 for j in jobs)
    dead.down = False
    engine.run_until_idle(30)
    assert engine.store.open_circuits() == {}
    assert [engine.store.get(j).state for j in jobs] == ["succeeded"] * 12
    assert len(service.jobs) == 12, "each job ran exactly once"


def test_engine_store_wakes_only_the_waiting_jobs_of_the_service_that_answered(world):
    engine, service, drop = world
    waiting, fine = drop("waiting", {"command": "true"}), drop("fine", {"command": "true"})
    engine.store.update(waiting, failures=3, next_at=time.time() + 300)
    engine.store.update(fine, next_at=time.time() + 300)
    now = time.time()
    assert engine.store.wake_waiting(now, storage="other") == 0
    assert engine.store.wake_waiting(now, backend="mem") == 1
    assert engine.store.get(waiting).next_at == now and engine.store.get(fine).next_at > now + 200


def test_engine_start_clears_scratch_folders_a_killed_collect_left(world):
    engine, service, drop = world
    leftover = engine.tmp_dir / "tmpabc123"
    (leftover / "deep").mkdir(parents=True)
    (leftover / "deep" / "record.json").write_text("{}")
    (engine.tmp_dir / "part").write_text("x")
    engine.prepare()
    assert list(engine.tmp_dir.iterdir()) == []


def test_engine_inbox_renamed_away_and_back_makes_a_claimed_job_wait_not_rejected(world):
    engine, service, drop = world
    job_id = drop("on-share", {"command": "echo ok > out.txt"})
    inbox = engine.config.inboxes[0].path
    away = inbox.with_name("inbox-away")
    inbox.rename(away)  # the share is gone: the claimed folder with it
    try:
        for _ in range(10):
            engine.pump()
            time.sleep(0.05)
        job = engine.store.get(job_id)
        assert job.state == "claimed" and "not reachable" in job.error, job
        assert all(e.to_state not in ("held", "rejected") for e in engine.store.events(job_id))
    finally:
        away.rename(inbox)
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded"
    assert len(service.jobs) == 1


def test_engine_start_removes_half_written_journals_but_no_user_file(world):
    engine, service, drop = world
    inbox = engine.config.inboxes[0].path
    leftover = inbox / ".job-01.2c101f6dcdf84e478ba03042ae4c9908.syncd-journal.tmp"
    leftover.write_text("job: job-01\n")
    users = [inbox / ".hidden-notes.tmp", inbox / "job-01.status.txt.bak"]
    for path in users:
        path.write_text("mine")
    engine.prepare()
    assert not leftover.exists(), "a journal a killed daemon was writing is removed at start"
    assert all(path.read_text() == "mine" for path in users)


def test_engine_claim_the_store_could_not_record_is_completed_by_the_pump_and_runs_once(world, monkeypatch):
    engine, service, drop = world
    store, inbox = engine.store, engine.config.inboxes[0]
    recording = store.transition

    def full_disk(job_id, expect, to, note, **values):
        if to == "claimed":
            raise StoreUnwritable("cannot write the state database (database or disk is full)")
        return recording(job_id, expect, to, note, **values)

    monkeypatch.setattr(store, "transition", full_disk)
    assert engine.claim(inbox, make_job(inbox.path, "unrecorded", {"command": "echo ok > out.txt"}))
    job = store.find("unrecorded")[0]
    assert job.state == "claiming" and Path(job.spool_path).is_dir(), "the folder is in the spool, unrecorded"
    monkeypatch.setattr(store, "transition", recording)
    engine.run_until_idle(30)
    assert store.get(job.id).state == "succeeded"
    assert "claim completed once the store could record it" in [e.message for e in store.events(job.id)]
    assert len(service.jobs) == 1


def test_engine_reads_a_job_folder_once_for_validation_and_the_staging_that_follows(world, monkeypatch):
    engine, service, drop = world
    reads = []
    reading = engine_base.load_job_directory
    monkeypatch.setattr(engine_base, "load_job_directory", lambda *a, **k: reads.append(a[0]) or reading(*a, **k))
    job_id = drop("once", {"command": "echo ok > out.txt"})
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded"
    assert len(reads) == 1, reads


def test_engine_staging_that_comes_later_reads_the_job_folder_again(world, monkeypatch):
    """A validation's reading serves only the staging that follows at once (not one after a pause)."""
    engine, service, drop = world
    job_id = drop("later", {"command": "cat late.txt > out.txt"})
    job = engine.store.get(job_id)
    engine._validate(job)
    (Path(job.spool_path) / "late.txt").write_text("added while the backend was paused\n")
    monkeypatch.setattr(engine_base, "SCAN_REUSE", 0.0)  # as if more than SCAN_REUSE had passed
    engine._stage(engine.store.get(job_id))
    assert engine.store.get(job_id).state == "staged"
    work = engine.backends["mem"].unwrapped.work_root / job.submit_key / "work"
    assert (work / "late.txt").read_text() == "added while the backend was paused\n"


def test_engine_an_outbox_that_takes_no_file_holds_jobs_before_submission_then_lets_them_go(world, monkeypatch):
    engine, service, drop = world
    in_the_way = engine.outboxes["default"].root / TMP_DIR
    done = drop("before", {"command": "echo ok > out.txt"})
    _pump_until(engine, lambda: engine.store.get(done).state == "succeeded")  # its probe passed just now
    shutil.rmtree(in_the_way)
    in_the_way.write_text("a file where the outbox's scratch folder belongs")
    monkeypatch.setattr(submission, "OUTBOX_PROBE_INTERVAL", 0.0)  # as if the passed probe were old
    job_id = drop("waits", {"command": "echo ok > out.txt"})
    _pump_until(engine, lambda: "is not writable" in (engine.store.get(job_id).error or ""))
    assert engine.store.get(job_id).state == "staged" and len(service.jobs) == 1, "not submitted meanwhile"
    in_the_way.unlink()
    _pump_until(engine, lambda: engine.store.get(job_id).state == "succeeded")
    assert len(service.jobs) == 2


def test_engine_the_first_job_probes_the_outbox_whatever_its_clock_reads(world):
    """The first job of an outbox is probed even on a clock that starts at zero (no probe is not a recent one)."""
    engine, service, drop = world
    began = time.monotonic()
    engine.clock = lambda: time.monotonic() - began
    in_the_way = engine.outboxes["default"].root / TMP_DIR
    shutil.rmtree(in_the_way, ignore_errors=True)
    in_the_way.write_text("a file where the outbox's scratch folder belongs")
    job_id = drop("first", {"command": "echo ok > out.txt"})
    _pump_until(engine, lambda: "is not writable" in (engine.store.get(job_id).error or ""))
    assert not service.jobs, "not submitted while the outbox takes no file"


def test_engine_restart_keeps_an_unrecorded_claim_while_its_share_is_away(world):
    """A claim whose rename may have happened on a filesystem that is not mounted now (the spool
    folder is on another device than the one recorded at claim) is kept, not forgotten."""
    engine, service, drop = world
    claimed = engine.spools["default"].claimed
    device = claimed.stat().st_dev
    common = dict(name="x", dir_name="x", inbox="default", backend="mem", storage="local", bucket="results")
    away = engine.store.create_job(
        id="away", spool_path=str(claimed / "away"), dir_identity=f"{device + 1}:42", **common
    )
    engine.store.create_job(id="never", spool_path=str(claimed / "never"), dir_identity=f"{device}:43", **common)
    engine.prepare()
    assert engine.store.get(away.id).state == "claiming", "the share may come back with the folder"
    assert [j.id for j in engine.store.jobs(["claiming"])] == ["away"], (
        "on the mounted filesystem a missing folder means the rename never happened"
    )


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_engine_polls_every_due_job_of_a_backend_in_one_call(tmp_path, kind):
    """One status call per backend and tick, whatever the number of jobs: the engine batches for every backend,
    not only where a request counter could show it."""
    backends = {"b": {"type": kind, "max_parallel": 4}}
    path = make_config(tmp_path / "site", backend="b", extra={"backends": backends})
    config = load(path)
    store = Store(config.db_path)
    service = MemoryService()
    backend = (
        MemoryBackend("b", config.backend_options["b"], config.state_dir / "b", service)
        if kind == "memory"
        else LocalBackend("b", config.backend_options["b"], config.state_dir / "b")
    )
    calls: list[int] = []
    poll = backend.poll
    backend.poll = lambda refs: calls.append(len(refs)) or poll(refs)  # type: ignore[method-assign]
    engine = Engine(config, store, {"b": backend}, build_storages(config))
    engine.prepare()
    inbox = config.inboxes[0]
    try:
        ids: list[str] = []
        for n in range(4):
            assert engine.claim(inbox, make_job(inbox.path, f"batch-{n}", {"command": "sleep 30"}))
            ids.append(store.find(f"batch-{n}")[0].id)
        _pump_until(engine, lambda: all(store.get(i).state == "running" for i in ids), timeout=20)
        wait_for(lambda: all(store.get(i).next_at <= engine.clock() for i in ids), timeout=10, what="all jobs due")
        calls.clear()
        requests = service.requests
        engine.poll_backend("b")
        assert calls == [4], "one call carried every due job"
        if kind == "memory":
            assert service.requests - requests == 1, "and one request reached the service"
        assert all(store.get(i).next_at > engine.clock() for i in ids), "each job's next poll was scheduled"
    finally:
        for i in ids:
            if (job := store.get(i)).remote_id:
                backend.cancel(remote_ref(job))
        engine.stop(5)
        store.close()


@pytest.mark.parametrize("kind", ["memory", "local"])
def test_engine_steps_of_jobs_on_this_machine_take_their_own_few_threads(tmp_path, kind, monkeypatch):
    """A local backend's steps with a folder storage run on at most LOCAL_STEP_THREADS threads (more only take
    turns at the interpreter lock), the second only while the first is stalled on a step (here: 10 ms); a
    service's steps run on the ``workers`` threads."""
    import threading

    monkeypatch.setattr(engine_base, "LOCAL_STEP_STALL", 0.01)

    backends = {"b": {"type": kind, "max_parallel": 8}}
    path = make_config(tmp_path / "site", backend="b", extra={"backends": backends, "workers": 6})
    config = load(path)
    store = Store(config.db_path)
    backend = (
        MemoryBackend("b", config.backend_options["b"], config.state_dir / "b", MemoryService())
        if kind == "memory"
        else LocalBackend("b", config.backend_options["b"], config.state_dir / "b")
    )
    threads: set[str] = set()
    stage = backend.stage

    def staged_on(spec, inputs):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)  # long enough for every free thread to take a job meanwhile
        return stage(spec, inputs)

    backend.stage = staged_on  # type: ignore[method-assign]
    engine = Engine(config, store, {"b": backend}, build_storages(config))
    engine.prepare()
    inbox = config.inboxes[0]
    try:
        ids = []
        for n in range(8):
            assert engine.claim(inbox, make_job(inbox.path, f"lane-{n}", {"command": "true"}))
            ids.append(store.find(f"lane-{n}")[0].id)
        _pump_until(engine, lambda: all(store.get(i).state == "succeeded" for i in ids), timeout=30)
    finally:
        engine.stop(5)
        store.close()
    if kind == "local":
        assert {name.rsplit("_", 1)[0] for name in threads} == {"syncd-local-step"}
        assert 1 < len(threads) <= engine_base.LOCAL_STEP_THREADS, threads
    else:
        assert {name.rsplit("_", 1)[0] for name in threads} == {"syncd-step"}
        assert len(threads) > engine_base.LOCAL_STEP_THREADS, threads


def test_engine_stop_does_not_wait_for_steps_that_never_started(tmp_path):
    """Steps still queued when the daemon stops are dropped (they run at the next start): stop waits only for
    the ones running, and says it drained."""
    backends = {"b": {"type": "local", "max_parallel": 8}}
    config = load(make_config(tmp_path / "site", backend="b", extra={"backends": backends}))
    store = Store(config.db_path)
    backend = LocalBackend("b", config.backend_options["b"], config.state_dir / "b")
    stage = backend.stage
    backend.stage = lambda spec, inputs: (time.sleep(0.3), stage(spec, inputs))[1]  # type: ignore[method-assign]
    engine = Engine(config, store, {"b": backend}, build_storages(config))
    engine.prepare()
    inbox = config.inboxes[0]
    try:
        for n in range(8):
            assert engine.claim(inbox, make_job(inbox.path, f"queued-{n}", {"command": "true"}))
        engine.pump()  # more steps than threads: most wait in a queue
        assert engine.busy == 8
        started = time.monotonic()
        assert engine.stop(10) is True
        assert time.monotonic() - started < 5
        assert engine.busy == 0
    finally:
        backend.close()
        store.close()


def test_engine_side_effects_come_after_every_commit_before_them_is_on_disk(world, monkeypatch):
    """Commits that skip their own flush (durable=False) are taken to disk by the flushed commit that
    comes before each side effect depending on them: the claim's rename, the submission, the backend's
    clean-up. At each of those, every commit so far has been flushed."""
    engine, service, drop = world
    group = engine.store.group_commit()
    flushed_through = []  # the number of commits when each flush of the log happened
    seen: dict[str, tuple[int, int]] = {}  # side effect → (commits then, commits flushed then)
    flushing = GroupCommit._flush

    def flush(self):
        flushing(self)
        flushed_through.append(self.commits)

    def recorded(name, act):
        def side_effect(*args, **kwargs):
            seen[name] = (group.commits, flushed_through[-1] if flushed_through else 0)
            return act(*args, **kwargs)

        return side_effect

    monkeypatch.setattr(GroupCommit, "_flush", flush)
    spool, backend = engine.spools["default"], engine.backends["mem"].unwrapped
    monkeypatch.setattr(spool, "claim", recorded("claim", spool.claim))
    monkeypatch.setattr(backend, "submit", recorded("submit", backend.submit))
    monkeypatch.setattr(backend, "cleanup", recorded("cleanup", backend.cleanup))
    job_id = drop("flushed", {"command": "echo ok > out.txt"})
    engine.run_until_idle(30)
    assert engine.store.get(job_id).state == "succeeded" and engine.store.get(job_id).finished
    assert set(seen) == {"claim", "submit", "cleanup"}, seen
    for name, (commits, flushed) in seen.items():
        assert commits and commits == flushed, f"{name}: {commits} commits, the log flushed after {flushed}"
    skipped = [n for n in range(1, group.commits + 1) if n not in flushed_through]
    assert skipped, "some commits went without a flush of their own (those with durable=False)"
