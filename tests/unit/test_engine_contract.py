"""Backend contract v2 through the engine, on the memory backend's switches: results that are not ready yet,
services that cannot cancel, submissions in several steps interrupted at each step, outputs that already sit
in syncd's storage, services that report no exit code, inputs handed over by URL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from syncd.backends.base import CancelSupport, Capabilities, LogDelivery
from syncd.backends.memory import SUBMIT_STEPS, MemoryBackend, MemoryService
from syncd.engine.core import Engine
from syncd.errors import AuthError, PermanentError, TransientError
from syncd.service.daemon import build_storages, load
from syncd.state.store import Store
from tests.support.harness import make_config, make_job


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs, no handler sees it."""


class World:
    def __init__(
        self,
        root: Path,
        service: MemoryService,
        backend_options: dict | None = None,
        storages: dict | None = None,
        **inbox,
    ):
        extra: dict = {"backends": {"mem": {"type": "memory", **(backend_options or {})}}}
        if storages:
            extra["storages"] = storages
        path = make_config(root / "site", backend="mem", extra=extra, **inbox)
        data = yaml.safe_load(path.read_text())
        data["retry"] = {"initial": "0.05s", "max": "0.3s", "budget": "30s"}
        data["poll"] = {"first": "0.05s", "max": "0.2s"}
        path.write_text(yaml.safe_dump(data))
        self.config = load(path)
        self.store = Store(self.config.db_path)
        self.service = service
        self.engines: list[Engine] = []
        self.engine = self.start()

    def start(self) -> Engine:
        """A new engine with a new backend instance on the same service and store: a restarted daemon."""
        backend = MemoryBackend("mem", self.config.backend_options["mem"], self.config.state_dir / "mem", self.service)
        engine = Engine(self.config, self.store, {"mem": backend}, build_storages(self.config))
        engine.prepare()
        self.engines.append(engine)
        return engine

    def drop(self, name: str, manifest: dict, files: dict | None = None) -> str:
        inbox = self.config.inboxes[0]
        assert self.engine.claim(inbox, make_job(inbox.path, name, manifest, files))
        return self.store.find(name)[0].id

    def pump_until(self, condition, timeout: float = 15.0, engine: Engine | None = None) -> None:
        engine = engine or self.engine
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the engine never reached the expected state"
            engine.pump()
            engine.poll_backend("mem")
            time.sleep(0.02)

    def job(self, job_id: str):
        return self.store.get(job_id)

    def events(self, job_id: str) -> list[str]:
        return [e.message for e in self.store.events(job_id)]

    def result(self, job_id: str) -> dict:
        return json.loads(self.outbox(job_id, "syncd-result.json").read_text())

    def outbox(self, job_id: str, relpath: str) -> Path:
        job = self.job(job_id)
        return self.engine.outboxes[job.inbox].path_for(job.bucket, f"{job.folder}/{relpath}")

    def close(self) -> None:
        for engine in self.engines:
            engine.stop(5)
        self.store.close()


@pytest.fixture
def world(tmp_path):
    made: list[World] = []

    def build(service: MemoryService | None = None, **backend_options) -> World:
        made.append(World(tmp_path / f"w{len(made)}", service or MemoryService(), backend_options))
        return made[-1]

    yield build
    for w in made:
        w.close()


# -- 3. "not ready yet" is not a failure ---------------------------------------------------------


def test_results_not_ready_wait_in_collecting_without_spending_retries(world):
    w = world(MemoryService(not_ready=4))
    job_id = w.drop("late-results", {"command": "echo done > out.txt"})
    seen_failures = []
    w.pump_until(lambda: seen_failures.append(w.job(job_id).failures) or w.job(job_id).state == "succeeded")
    assert max(seen_failures) == 0, "waiting for results is not a failure"
    assert w.outbox(job_id, "out.txt").read_text() == "done\n"
    waits = [m for m in w.events(job_id) if "results not ready yet" in m]
    assert len(waits) == 1, "one event for the wait, not one per answer"
    assert w.store.open_circuits() == {}, "the service answered: no circuit opens"
    assert w.job(job_id).results_waiting_since is None


def test_results_never_ready_hold_the_job_at_the_deadline_and_retry_resumes(world):
    w = world(MemoryService(not_ready=10**6), results_deadline="0.3s")
    job_id = w.drop("never-ready", {"command": "echo done > out.txt"})
    w.pump_until(lambda: w.job(job_id).state == "held")
    job = w.job(job_id)
    assert job.held_from == "collecting" and "results_deadline" in job.error and "syncd retry" in job.error
    w.service.not_ready = 0
    w.store.request(job_id, "retry")
    w.pump_until(lambda: w.job(job_id).state == "succeeded")
    assert w.outbox(job_id, "out.txt").read_text() == "done\n"


# -- 4. cancel is a capability ---------------------------------------------------------------------


def test_cancel_on_a_service_that_cannot_cancel_marks_the_job_and_never_delivers_a_success(world):
    w = world(MemoryService(capabilities=Capabilities(cancel=CancelSupport.NEVER)))
    job_id = w.drop("unstoppable", {"command": "sleep 0.5; echo finished > out.txt"})
    w.pump_until(lambda: w.job(job_id).state == "running")
    before = w.service.requests
    w.store.request(job_id, "cancel")
    w.pump_until(lambda: w.job(job_id).state in ("succeeded", "failed", "cancelled"))
    job = w.job(job_id)
    assert job.state == "cancelled" and job.outcome == "cancelled"
    assert any("cannot cancel jobs" in m and "runs to its end" in m for m in w.events(job_id))
    result = w.result(job_id)
    assert result["state"] == "cancelled" and "could not stop" in result["message"]
    assert w.outbox(job_id, "out.txt").read_text() == "finished\n", "what it produced is still delivered"
    assert w.service.requests > before  # polls went on; no cancel was sent (it would have raised)


def test_cancel_while_queued_stops_a_queued_job_before_it_runs(world):
    w = world(MemoryService(capabilities=Capabilities(cancel=CancelSupport.WHILE_QUEUED), queue_seconds=60))
    job_id = w.drop("queued", {"command": "echo ran > out.txt"})
    w.pump_until(lambda: w.job(job_id).state == "queued")
    w.store.request(job_id, "cancel")
    w.pump_until(lambda: w.job(job_id).state == "cancelled")
    assert w.service.runs == 0, "a queued job that was cancelled never runs"
    assert any("cancel sent" in m for m in w.events(job_id))


def test_cancel_while_queued_on_a_started_job_says_it_cannot(world):
    w = world(MemoryService(capabilities=Capabilities(cancel=CancelSupport.WHILE_QUEUED)))
    job_id = w.drop("started", {"command": "sleep 0.5; echo ran > out.txt"})
    w.pump_until(lambda: w.job(job_id).state == "running")
    w.store.request(job_id, "cancel")
    w.pump_until(lambda: w.job(job_id).state in ("succeeded", "cancelled"))
    assert w.job(job_id).state == "cancelled"
    assert any("stops only queued jobs" in m for m in w.events(job_id))


@pytest.mark.parametrize(
    "error, expect",
    [
        (PermanentError("the service refuses: job is past its point of no return"), "refused to stop it"),
        (AuthError("token expired"), None),
        (TransientError("503"), None),
    ],
)
def test_every_error_kind_from_cancel_is_caught_and_never_resent_on_every_pump(world, monkeypatch, error, expect):
    w = world()
    retry = w.engine.config.retry.model_copy(update={"initial": 0.5, "max": 1.0})
    w.engine.config = w.engine.config.model_copy(update={"retry": retry})
    job_id = w.drop("refusing", {"command": "sleep 2"})
    w.pump_until(lambda: w.job(job_id).state == "running")
    backend = w.engine.backends["mem"]
    calls = []
    monkeypatch.setattr(
        backend.unwrapped if hasattr(backend, "unwrapped") else backend,
        "cancel",
        lambda ref: calls.append(ref) or (_ for _ in ()).throw(error),
    )
    w.store.request(job_id, "cancel")
    pumps = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        w.engine.pump()
        pumps += 1
        time.sleep(0.02)
    assert 1 <= len(calls) <= 3 < pumps, f"cancel sent {len(calls)} times in {pumps} pumps"
    if expect:
        assert w.job(job_id).cancel_requested == 3
        assert any(expect in m for m in w.events(job_id))
    if isinstance(error, AuthError):
        assert "mem" in w.store.backend_pauses()


def test_a_timeout_on_a_service_that_cannot_cancel_is_said_once_and_reported_timed_out(world):
    w = world(MemoryService(capabilities=Capabilities(cancel=CancelSupport.NEVER)))
    job_id = w.drop("overrun", {"command": "sleep 3; echo late > out.txt", "timeout": 0.5})
    w.pump_until(lambda: w.job(job_id).state in ("succeeded", "failed", "timed_out"), timeout=20)
    assert w.job(job_id).state == "timed_out", "ran past its timeout: not a success"
    said = [m for m in w.events(job_id) if "timeout reached" in m]
    assert len(said) == 1 and "cannot cancel jobs" in said[0] and "reported timed out" in said[0]
    assert w.outbox(job_id, "out.txt").read_text() == "late\n"


# -- 5. a submission can be unfinished --------------------------------------------------------------


@pytest.mark.parametrize("step", SUBMIT_STEPS)
def test_kill_9_after_each_submission_step_gives_one_remote_job_that_runs_once(world, tmp_path, step):
    crashed = []

    def crash_once(at: str, key: str) -> None:
        if at == step and not crashed:
            crashed.append(key)
            w.engine.stop(0)  # as after kill -9, no later pump may resume the submission before the restart
            raise Crash(at)

    counter = tmp_path / f"runs-{step}.txt"
    w = world(MemoryService(capabilities=Capabilities(multi_step_submit=True), on_step=crash_once))
    job_id = w.drop("steps", {"command": f"echo run >> {counter}"})
    w.pump_until(lambda: bool(crashed))
    w.engine.stop(5)
    assert w.job(job_id).state == "submitting", "the crash came before the remote id was recorded"
    w.engine = w.start()
    w.pump_until(lambda: w.job(job_id).state == "succeeded")
    assert len(w.service.jobs) == 1 and w.service.runs == 1
    assert counter.read_text() == "run\n", "the job ran exactly once"
    how = "found after a restart" if step == "started" else "submission finished after a restart"
    assert any(how in m for m in w.events(job_id)), w.events(job_id)


# -- 6. no exit code from the service: the wrapper ------------------------------------------------


def test_a_service_without_exit_codes_gets_them_from_the_wrapper(world):
    w = world(MemoryService(capabilities=Capabilities(exit_codes=False, logs=LogDelivery.AT_END)))
    job_id = w.drop("exit-three", {"command": "echo partial > out.txt; exit 3"})
    w.pump_until(lambda: w.job(job_id).state in ("succeeded", "failed"))
    job = w.job(job_id)
    assert (job.state, job.exit_code) == ("failed", 3)
    assert w.result(job_id)["exit_code"] == 3
    assert w.outbox(job_id, "out.txt").read_text() == "partial\n"
    assert not w.outbox(job_id, ".syncd").exists(), "the wrapper's files are syncd's, never delivered"


def test_the_wrapper_never_splices_the_command_into_a_script(world, tmp_path):
    hostile = "a b'c\"$(touch pwned)`touch pwned2`\n\nend\n"
    w = world(MemoryService(capabilities=Capabilities(exit_codes=False)))
    job_id = w.drop("argv", {"command": ["sh", "-c", 'printf "%s" "$1" > arg.txt', "x", hostile]})
    w.pump_until(lambda: w.job(job_id).state in ("succeeded", "failed"))
    assert (w.job(job_id).state, w.job(job_id).exit_code) == ("succeeded", 0)
    assert w.outbox(job_id, "arg.txt").read_text() == hostile, "every byte of the argument, trailing newlines too"
    assert not w.outbox(job_id, "pwned").exists() and not w.outbox(job_id, "pwned2").exists()


# -- 1 and 2. the backend reaches syncd's storage -----------------------------------------------


def test_outputs_left_in_the_storage_are_copied_there_not_downloaded(world, monkeypatch):
    w = world(MemoryService(outputs_to="storage"))
    job_id = w.drop("remote-outputs", {"command": "mkdir -p d && echo one > d/one.txt && echo two > two.txt"})
    w.pump_until(lambda: w.job(job_id).state == "succeeded" and w.job(job_id).finished)
    assert w.outbox(job_id, "d/one.txt").read_text() == "one\n" and w.outbox(job_id, "two.txt").read_text() == "two\n"
    assert sorted(o["path"] for o in w.result(job_id)["outputs"]) == ["d/one.txt", "two.txt"]
    storage = w.engine.storages["local"]
    staged = list(storage.list(w.job(job_id).bucket, ""))
    assert not [o.key for o in staged if "/_outputs/" in f"/{o.key}" or "/_inputs/" in f"/{o.key}"], (
        "the staging area is removed once the results are delivered"
    )


def test_outputs_already_in_the_results_folder_are_only_recorded(world, monkeypatch):
    w = world(MemoryService(outputs_to="results"))
    storage = w.engine.storages["local"]
    monkeypatch.setattr(storage, "copy", lambda *a, **k: pytest.fail("nothing needs copying"))
    job_id = w.drop("in-place", {"command": "echo here > here.txt"})
    w.pump_until(lambda: w.job(job_id).state == "succeeded")
    assert w.outbox(job_id, "here.txt").read_text() == "here\n"
    assert [o["path"] for o in w.result(job_id)["outputs"]] == ["here.txt"]


def test_inputs_by_url_on_a_folder_storage_fail_with_what_to_do(world):
    w = world(MemoryService(inputs_by_url=True))
    job_id = w.drop("needs-urls", {"command": "cat data.txt"}, files={"data.txt": "x"})
    w.pump_until(lambda: w.job(job_id).state in ("failed", "held"))
    job = w.job(job_id)
    assert job.state == "failed" and "URL" in job.message and "s3" in job.message
