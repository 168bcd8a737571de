"""Taking over a lapsed daemon's jobs, engine by engine: several engines on one site (one share), each with its
own state folder, and one remote service (the in-memory reference backend) that all of them reach."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from syncd.backends.memory import MemoryBackend, MemoryService
from syncd.engine.core import Engine
from syncd.engine.takeover import job_record
from syncd.errors import TransientError
from syncd.service.daemon import build_storages, load
from syncd.state.share import Handoffs
from syncd.state.store import CANCELLED, RUNNING, SUBMITTED, SUBMITTING, SUCCEEDED, TAKEN_OVER, Store
from tests.support.harness import make_config, make_job

LEASE = {"enabled": True, "renew": "0.05s", "lease": "0.2s", "grace": "0.1s"}


@pytest.fixture
def site(tmp_path):
    """make(node) → an engine of daemon ``node`` on the shared site; all engines reach one memory service."""
    service = MemoryService()
    engines: list[Engine] = []

    def make(node: str) -> Engine:
        path = make_config(
            tmp_path / "site", backend="mem", extra={"backends": {"mem": {"type": "memory"}}, "workers": 2}
        )
        data = yaml.safe_load(path.read_text())
        data.update(
            state_dir=f".state-{node}",
            poll={"first": "0.05s", "max": "0.2s"},
            takeover={**LEASE, "node": node},
        )
        own = path.with_name(f"{node}.yaml")
        own.write_text(yaml.safe_dump(data))
        config = load(own)
        # One "remote" service and one work area for all: what a taker asks for, it finds.
        backend = MemoryBackend("mem", config.backend_options["mem"], tmp_path / "site" / "mem-work", service)
        engine = Engine(config, Store(config.db_path), {"mem": backend}, build_storages(config))
        engine.prepare()
        engines.append(engine)
        return engine

    yield make, service
    for engine in engines:
        engine.stop(5)
        engine.store.close()


def _tend_until(engines: list[Engine], condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the engines never reached the expected state"
        for engine in engines:
            engine.tend_share()
            engine.pump()
            for name in engine.backends:
                engine.poll_backend(name)
        time.sleep(0.02)


def _claim(engine: Engine, name: str, manifest: dict) -> str:
    inbox = engine.config.inboxes[0]
    assert engine.claim(inbox, make_job(inbox.path, name, manifest))
    return engine.store.find(name)[0].id


def _records(engine: Engine) -> list[tuple[str, str]]:
    return Handoffs(engine.spools["default"].root).names()


def test_a_lapsed_daemons_submitted_job_is_followed_by_the_taker_never_submitted_again(site):
    make, service = site
    a, b = make("a"), make("b")
    job_id = _claim(a, "job", {"command": "sleep 0.5; echo hi > out.txt"})
    _tend_until([a], lambda: a.store.get(job_id).state in (SUBMITTED, RUNNING))
    assert _records(a) == [(job_id, "a.1")]
    # a stops: only b goes on
    _tend_until([b], lambda: b.store.has(job_id))
    assert _records(b) == [(job_id, "b.1")], "the taker's record replaced the old owner's"
    _tend_until([b], lambda: b.store.get(job_id).state == SUCCEEDED and b.store.get(job_id).finished)
    assert (len(service.jobs), service.runs) == (1, 1), "found by its submit key, never submitted again"
    assert _records(b) == [], "a finished job's record leaves the share"
    assert b.store.get(job_id).adopted_from.endswith("(a.1)")
    # a wakes up: it is told at its next renewal and keeps out of the job
    a.tend_share()
    mine = a.store.get(job_id)
    assert (mine.state, mine.taken_by, mine.finished) == (TAKEN_OVER, "b.1", 1)
    assert a.may_act("default"), "a new lease: a goes on with new jobs"


def test_a_record_left_by_a_stopped_owner_waking_mid_write_is_swept_by_the_taker(site):
    make, _ = site
    a, b = make("a"), make("b")
    job_id = _claim(a, "job", {"command": "sleep 2; echo hi > out.txt"})
    _tend_until([a], lambda: a.store.get(job_id).state in (SUBMITTED, RUNNING))
    stale = job_record(a.store.get(job_id))
    _tend_until([b], lambda: b.store.has(job_id))
    # what a's thread, stopped between its check and its rename, writes when it wakes up
    Handoffs(a.spools["default"].root).write(stale, "a.1", host="a-host", new=True)
    assert sorted(_records(b)) == [(job_id, "a.1"), (job_id, "b.1")]
    _tend_until([b], lambda: _records(b) == [(job_id, "b.1")])
    _tend_until([b], lambda: b.store.get(job_id).finished)
    assert _records(b) == []


def test_of_two_daemons_taking_over_one_lapsed_daemon_at_once_one_takes_each_job(site):
    make, service = site
    a, b, c = make("a"), make("b"), make("c")
    ids = [_claim(a, f"job-{n}", {"command": "sleep 0.3; echo hi > out.txt"}) for n in range(4)]
    _tend_until([a], lambda: all(a.store.get(i).state in (SUBMITTED, RUNNING) for i in ids))
    _tend_until([b, c], lambda: all(b.store.has(i) or c.store.has(i) for i in ids))
    owners = {i: [e.config.takeover.node for e in (b, c) if e.store.has(i)] for i in ids}
    assert all(len(who) == 1 for who in owners.values()), owners
    assert len({who[0] for who in owners.values()}) == 1, "one daemon won a's lease and took all its jobs"
    _tend_until([b, c], lambda: all((b if b.store.has(i) else c).store.get(i).finished for i in ids))
    assert (len(service.jobs), service.runs) == (4, 4)


def test_a_claim_whose_rename_never_happened_is_left_to_whoever_claims_the_folder(site, tmp_path):
    make, _ = site
    a, b = make("a"), make("b")
    inbox = a.config.inboxes[0]
    folder = make_job(inbox.path, "late", {"command": "true"})
    job = a.store.create_job(
        id="20261204-000000-abcdef",
        name="late",
        dir_name="late",
        inbox="default",
        backend="mem",
        storage="local",
        bucket="results",
        spool_path=str(a.spools["default"].claimed / "20261204-000000-abcdef"),
    )
    a.share_job(job)  # a died between recording the claim and its rename
    _tend_until([b], lambda: not _records(b), timeout=5)
    assert not b.store.has(job.id), "nothing to take over: the folder never left the inbox"
    assert folder.exists() and not Path(job.spool_path).exists()


def test_a_taker_that_dies_before_it_has_taken_the_jobs_leaves_them_to_the_next(site):
    make, service = site
    a, b, c = make("a"), make("b"), make("c")
    job_id = _claim(a, "job", {"command": "sleep 0.3; echo hi > out.txt"})
    _tend_until([a], lambda: a.store.get(job_id).state in (SUBMITTED, RUNNING))
    fence = a.spools["default"].root / "leases" / "a.1.fenced"
    _tend_until([b, c], lambda: fence.exists())
    taker, other = (b, c) if '"by": "b.1"' in fence.read_text() else (c, b)
    assert not taker.store.has(job_id), "fenced, not yet taken: the taker waits a lease first"
    # the taker dies here; the other takes it over, and with it what it had fenced
    _tend_until([other], lambda: other.store.has(job_id) and other.store.get(job_id).finished)
    assert other.store.get(job_id).outcome == SUCCEEDED
    assert (len(service.jobs), service.runs) == (1, 1)
    assert _records(other) == []


def test_a_daemon_stopped_past_its_lease_during_the_lookup_submits_nothing(site, monkeypatch):
    """The last moment a stopped daemon could submit a job another has taken over: between its lookup by
    submit key and the submission. The lease is checked once more in between."""
    make, service = site
    a = make("a")
    backend = a.backends["mem"].unwrapped
    find = backend.find
    lookups = []

    def find_then_stop(spec):
        lookups.append(spec.submit_key)
        found = find(spec)
        a._shares["default"].valid_until = 0.0  # as if stopped here, past its lease
        return found

    monkeypatch.setattr(backend, "find", find_then_stop)
    job_id = _claim(a, "job", {"command": "echo hi > out.txt"})
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # every renewal confirms the lease; every lookup loses it again
        a.tend_share()
        a.pump()
        time.sleep(0.02)
    assert lookups, "the submission step ran"
    assert service.jobs == {} and service.runs == 0, "nothing was submitted"
    assert a.store.get(job_id).state == SUBMITTING, "the step stopped; it goes on once the lease holds"


def test_a_job_on_the_share_as_this_daemons_but_not_in_its_store_is_taken_at_its_next_start(site):
    """A taker that wrote a job's record as its own and died before its store had the job: at its next
    start the record tells it the job is its own."""
    make, service = site
    a = make("a")
    job_id = _claim(a, "job", {"command": "echo hi > out.txt"})
    row = dict(job_record(a.store.get(job_id)), adopted_from="a-host (a.1)")
    Handoffs(a.spools["default"].root).write(row, "b.1", host="b-host", adopted_from="a.1")
    b = make("b")  # b.1's first start, after that crash
    assert b.store.get(job_id).adopted_from == "a-host (a.1)"
    _tend_until([b], lambda: b.store.get(job_id).finished)
    assert b.store.get(job_id).outcome == SUCCEEDED and (len(service.jobs), service.runs) == (1, 1)
    assert _records(b) == []


def test_a_cancel_asked_of_a_daemon_that_stops_before_carrying_it_out_is_carried_out_by_the_taker(site, monkeypatch):
    make, service = site
    a, b = make("a"), make("b")
    job_id = _claim(a, "job", {"command": "sleep 30; echo hi > out.txt"})
    _tend_until([a], lambda: a.store.get(job_id).state in (SUBMITTED, RUNNING))
    a.store.request(job_id, "cancel")  # `syncd cancel` on a's host
    monkeypatch.setattr(a, "_cancel", lambda job: None)  # a stops before the service hears of it
    a.handle_requests(job_id)
    record = Handoffs(a.spools["default"].root).read(job_id, "a.1")
    assert record is not None and record[1]["cancel_requested"] == 1, "the request is on the share first"
    _tend_until([b], lambda: b.store.has(job_id) and b.store.get(job_id).finished)
    assert b.store.get(job_id).outcome == CANCELLED
    assert (len(service.jobs), service.runs) == (1, 1), "followed and cancelled, never submitted again"


def test_a_cancel_that_waits_on_a_backoff_reaches_the_handoff_record_once_not_at_every_pass(site):
    make, service = site
    a = make("a")
    job_id = _claim(a, "job", {"command": "sleep 30; echo hi > out.txt"})
    _tend_until([a], lambda: a.store.get(job_id).state in (SUBMITTED, RUNNING))
    service.fail_next(TransientError("the service is busy"), times=1)
    a.store.request(job_id, "cancel")
    a.handle_requests(job_id)  # the cancel request fails: it is tried again after a backoff
    handoffs = Handoffs(a.spools["default"].root)
    record = handoffs.read(job_id, "a.1")
    assert record is not None and record[1]["cancel_requested"] == 1
    written = handoffs.path(job_id, "a.1").stat().st_ino  # each write is a new file renamed into place
    for _ in range(5):
        a.handle_requests(job_id)
    assert handoffs.path(job_id, "a.1").stat().st_ino == written, "the waiting request was written again"
    _tend_until([a], lambda: a.store.get(job_id).finished, timeout=20)
    assert a.store.get(job_id).outcome == CANCELLED
