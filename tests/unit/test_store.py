"""syncd.state.store: SQLite state, guarded transitions, events, requests, permissions, concurrency."""

from __future__ import annotations

import sqlite3
import stat
import threading

import pytest

from syncd.delivery.index import DeliveryIndex
from syncd.state.store import (
    CLAIMED,
    CLAIMING,
    FAILED,
    QUEUED,
    REJECTED,
    RUNNING,
    STAGING,
    SUBMITTED,
    SUCCEEDED,
    Store,
)


def new_job(store: Store, job_id: str = "j1", **values):
    defaults = dict(
        id=job_id,
        name=f"name-{job_id}",
        dir_name=f"dir-{job_id}",
        inbox="lab",
        backend="local",
        storage="local",
        bucket="results",
        spool_path=f"/spool/{job_id}",
    )
    defaults.update(values)
    return store.create_job(**defaults)


def test_create_job_defaults_and_first_event(store):
    job = new_job(store, "abc")
    assert job.state == CLAIMING
    assert job.attempts == 0
    assert job.cancel_requested == 0 and job.retry_requested == 0 and job.finished == 0
    assert job.created == job.updated
    events = store.events("abc")
    assert [(e.from_state, e.to_state) for e in events] == [(None, CLAIMING)]
    assert "dir-abc" in events[0].message


def test_create_job_duplicate_id_refused(store):
    new_job(store, "dup")
    with pytest.raises(sqlite3.IntegrityError):
        new_job(store, "dup")
    assert len(store.events("dup")) == 1


def test_get_unknown_raises_key_error(store):
    with pytest.raises(KeyError):
        store.get("missing")


def test_find_by_id_name_or_dir_name(store):
    new_job(store, "id1", name="sample", dir_name="sample-dir", created=1.0)
    new_job(store, "id2", name="sample", dir_name="other", created=2.0)
    assert [j.id for j in store.find("id1")] == ["id1"]
    assert [j.id for j in store.find("sample")] == ["id1", "id2"]
    assert [j.id for j in store.find("sample-dir")] == ["id1"]
    assert store.find("nothing") == []


def test_find_exact_id_wins_over_name(store):
    new_job(store, "alpha", name="x")
    new_job(store, "beta", name="alpha")
    assert [j.id for j in store.find("alpha")] == ["alpha"]


def test_transition_moves_state_and_writes_event(store):
    new_job(store)
    assert store.transition("j1", CLAIMING, CLAIMED, "claimed it", spool_path="/spool/new") is True
    job = store.get("j1")
    assert job.state == CLAIMED
    assert job.spool_path == "/spool/new"
    last = store.events("j1")[-1]
    assert (last.from_state, last.to_state, last.message) == (CLAIMING, CLAIMED, "claimed it")


def test_transition_accepts_any_of_several_expected_states(store):
    new_job(store, state=QUEUED)
    assert store.transition("j1", [SUBMITTED, QUEUED, RUNNING], RUNNING, "started") is True
    assert store.get("j1").state == RUNNING


def test_transition_wrong_state_changes_nothing(store):
    new_job(store, state=RUNNING)
    before = store.get("j1")
    events_before = store.events("j1")
    assert store.transition("j1", [CLAIMED, STAGING], FAILED, "too late", error="boom") is False
    assert store.get("j1") == before
    assert store.events("j1") == events_before


def test_transition_unknown_job_is_false(store):
    assert store.transition("ghost", CLAIMING, CLAIMED, "x") is False
    assert store.events("ghost") == []


def test_transition_rolls_back_on_error(store):
    new_job(store)
    with pytest.raises(sqlite3.OperationalError):
        store.transition("j1", CLAIMING, CLAIMED, "bad column", no_such_column=1)
    assert store.get("j1").state == CLAIMING
    assert len(store.events("j1")) == 1
    assert store.transition("j1", CLAIMING, CLAIMED, "ok") is True  # the store is still usable


def test_update_sets_fields_without_state_change(store):
    new_job(store, state=RUNNING)
    assert store.update("j1", remote_id="r-7", event="remote id known") is True
    job = store.get("j1")
    assert (job.state, job.remote_id) == (RUNNING, "r-7")
    last = store.events("j1")[-1]
    assert (last.from_state, last.to_state, last.message) == (None, None, "remote id known")


def test_update_without_event_writes_no_event(store):
    new_job(store)
    store.update("j1", message="quiet")
    assert len(store.events("j1")) == 1
    assert store.get("j1").message == "quiet"


def test_update_with_expect_only_in_that_state(store):
    new_job(store, state=RUNNING)
    assert store.update("j1", expect=QUEUED, remote_state="Q", event="nope") is False
    assert store.get("j1").remote_state is None
    assert len(store.events("j1")) == 1
    assert store.update("j1", expect=[QUEUED, RUNNING], remote_state="R") is True
    assert store.get("j1").remote_state == "R"


def test_update_unknown_job_is_false(store):
    assert store.update("ghost", message="x") is False


def test_request_sets_flag_and_lists_job(store):
    new_job(store, "a")
    new_job(store, "b")
    new_job(store, "c")
    assert store.requests() == []
    store.request("a", "cancel")
    store.request("b", "retry")
    assert store.get("a").cancel_requested == 1 and store.get("a").retry_requested == 0
    assert store.get("b").retry_requested == 1 and store.get("b").cancel_requested == 0
    assert sorted(j.id for j in store.requests()) == ["a", "b"]
    assert store.events("a")[-1].message == "cancel requested"
    store.update("a", cancel_requested=0)
    assert [j.id for j in store.requests()] == ["b"]


def test_request_unknown_kind_refused(store):
    new_job(store)
    with pytest.raises(KeyError):
        store.request("j1", "delete")


def test_unfinished_lists_terminal_jobs_not_yet_archived(store):
    new_job(store, "done", state=SUCCEEDED)
    new_job(store, "rej", state=REJECTED)
    new_job(store, "archived", state=FAILED, finished=1)
    new_job(store, "active", state=RUNNING)
    assert sorted(j.id for j in store.unfinished()) == ["done", "rej"]
    store.update("done", finished=1)
    assert [j.id for j in store.unfinished()] == ["rej"]


def test_delete_unclaimed_removes_only_claiming_record_and_its_events(store):
    new_job(store, "orphan")
    new_job(store, "kept")
    store.transition("kept", CLAIMING, CLAIMED, "claimed")
    store.delete_unclaimed("orphan")
    store.delete_unclaimed("kept")
    with pytest.raises(KeyError):
        store.get("orphan")
    assert store.events("orphan") == []
    assert store.get("kept").state == CLAIMED
    assert len(store.events("kept")) == 2


@pytest.mark.parametrize("attempts, key", [(0, "syncd-j1"), (1, "syncd-j1"), (2, "syncd-j1-2"), (5, "syncd-j1-5")])
def test_submit_key_per_attempt(store, attempts, key):
    new_job(store, attempts=attempts)
    assert store.get("j1").submit_key == key


def test_submit_key_stable_across_reopen(tmp_path):
    path = tmp_path / "state" / "syncd.db"
    first = Store(path)
    new_job(first, attempts=3)
    key = first.get("j1").submit_key
    first.close()
    second = Store(path)
    try:
        assert second.get("j1").submit_key == key == "syncd-j1-3"
    finally:
        second.close()


def test_jobs_filters_by_state_and_backend_in_priority_order(store):
    new_job(store, "low", state=RUNNING, priority=0, created=1.0)
    new_job(store, "high", state=RUNNING, priority=10, created=2.0)
    new_job(store, "other", state=RUNNING, backend="slurm", created=0.5)
    new_job(store, "queued", state=QUEUED)
    assert [j.id for j in store.jobs([RUNNING], backend="local")] == ["high", "low"]
    assert store.count([RUNNING]) == 3
    assert store.count([RUNNING, QUEUED], backend="local") == 3
    assert len(store.jobs()) == 4


def test_handle_and_manifest_data_decode_json(store):
    new_job(store, handle='{"pid": 42}', manifest='{"command": "run"}')
    job = store.get("j1")
    assert job.handle_data == {"pid": 42}
    assert job.manifest_data == {"command": "run"}


def test_delivered_index_round_trip(store):
    assert DeliveryIndex(store).under("b/k") == {}
    DeliveryIndex(store).record_many([("b/k", 10, "e1", 123)])
    DeliveryIndex(store).record_many(
        [("b/k", 11, "e2", 456), ("b/kz", 1, "x", 1), ("b/j", 1, "y", 1), ("c/k", 1, "z", 1)]
    )
    assert DeliveryIndex(store).under("b/k") == {"b/k": (11, "e2", 456), "b/kz": (1, "x", 1)}
    assert set(DeliveryIndex(store).under("b/")) == {"b/k", "b/kz", "b/j"}
    assert len(DeliveryIndex(store).under("")) == 4


def test_store_file_modes(tmp_path):
    path = tmp_path / "state" / "syncd.db"
    Store(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_store_never_changes_the_mode_of_an_existing_folder(tmp_path):
    # The admin's folder may be shared (state_dir: /var/lib/x, or a db right in /tmp): hands off.
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o1777)
    Store(state / "syncd.db").close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o1777
    assert stat.S_IMODE((state / "syncd.db").stat().st_mode) == 0o600


def test_store_data_survives_reopen(tmp_path):
    path = tmp_path / "state" / "syncd.db"
    first = Store(path)
    new_job(first)
    first.transition("j1", CLAIMING, CLAIMED, "claimed")
    first.close()
    second = Store(path)
    try:
        assert second.get("j1").state == CLAIMED
        assert len(second.events("j1")) == 2
    finally:
        second.close()


def test_transition_concurrent_exactly_one_wins(store):
    new_job(store, state=CLAIMED)
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            barrier.wait()
            won = store.transition("j1", CLAIMED, STAGING, f"worker {n}", message=f"worker {n}")
            with lock:
                results.append(won)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(results) == [False] * (threads_count - 1) + [True]
    job = store.get("j1")
    assert job.state == STAGING
    staging_events = [e for e in store.events("j1") if e.to_state == STAGING]
    assert len(staging_events) == 1
    assert staging_events[0].message == job.message


def test_transition_concurrent_from_two_store_instances(tmp_path):
    path = tmp_path / "state" / "syncd.db"
    stores = [Store(path), Store(path)]
    try:
        new_job(stores[0], state=RUNNING)
        barrier = threading.Barrier(8)
        results: list[bool] = []

        def worker(n: int) -> None:
            barrier.wait()
            results.append(stores[n % 2].transition("j1", RUNNING, SUCCEEDED, f"w{n}"))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert results.count(True) == 1 and len(results) == 8
    finally:
        for s in stores:
            s.close()


def test_commits_wait_for_the_disk_unless_the_store_is_told_they_need_not(tmp_path):
    durable = Store(tmp_path / "a.db")
    quick = Store(tmp_path / "b.db", durable=False)  # `syncd sync` without --fsync
    full, normal = 2, 1
    assert durable._conn().execute("PRAGMA synchronous").fetchone()[0] == full
    assert quick._conn().execute("PRAGMA synchronous").fetchone()[0] == normal
    DeliveryIndex(quick).record_many([("/x/a", 1, "etag", 5)])
    assert quick.group_commit().flushes == 0, "the quick store's commits are never flushed"
    job = new_job(durable)
    flushes = durable.group_commit().flushes
    assert flushes >= 1, "a durable store flushes its log"
    assert durable.transition(job.id, CLAIMING, CLAIMED, "claimed", durable=False)
    assert durable.update(job.id, message="m", durable=False)
    assert durable.group_commit().flushes == flushes, "changes that need no flush are committed without one"
    assert durable.transition(job.id, CLAIMED, STAGING, "valid")
    assert durable.group_commit().flushes == flushes + 1
    quick.close()
    assert DeliveryIndex(Store(tmp_path / "b.db")).under("/x/") == {"/x/a": (1, "etag", 5)}
    durable.close()


def test_questions_asked_for_every_job_or_pump_read_an_index_not_the_whole_table(tmp_path, monkeypatch):
    """Reading every job ever run on each pump or claim made time and memory grow per finished job (issue 5)."""
    connect = sqlite3.connect
    statements: list[str] = []

    def tracing_connect(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", tracing_connect)
    store = Store(tmp_path / "state" / "syncd.db")
    plain = connect(tmp_path / "state" / "syncd.db")
    try:
        for n in range(20):
            new_job(store, f"j{n}", state=SUCCEEDED, finished=1, folder=f"name-j{n}")
        new_job(store, "active", state=RUNNING, dir_identity="1:2")
        new_job(store, "ended", state=SUCCEEDED)
        store.request("active", "cancel")
        asked = {
            "requests": store.requests,
            "unfinished": store.unfinished,
            "unfinished_with_folder": lambda: store.unfinished_with_folder("1:2"),
            "folder_in_use": lambda: store.folder_in_use("local", "results", "name-j3"),
        }
        for name, ask in asked.items():
            statements.clear()
            ask()
            queries = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
            assert queries, name
            for sql in queries:
                plan = [row[3] for row in plain.execute("EXPLAIN QUERY PLAN " + sql)]
                assert not [step for step in plan if step.startswith("SCAN jobs") and "INDEX" not in step], (
                    f"{name}: {sql} → {plan}"
                )
                assert any("INDEX" in step for step in plan), f"{name}: {plan}"
        assert [j.id for j in store.requests()] == ["active"]
        assert [j.id for j in store.unfinished()] == ["ended"]
        assert store.unfinished_with_folder("1:2").id == "active"
        assert store.folder_in_use("local", "results", "name-j3")
        assert not store.folder_in_use("local", "results", "name-j")
        assert not store.folder_in_use("local", "other-bucket", "name-j3")
    finally:
        plain.close()
        store.close()


def test_latest_gives_the_jobs_created_last_oldest_first(store):
    for n in range(6):
        new_job(store, f"j{n}", created=1000.0 + n, priority=n % 3)
    assert [j.id for j in store.latest(3)] == ["j3", "j4", "j5"]
    assert [j.id for j in store.latest(10)] == [f"j{n}" for n in range(6)]


def test_reads_in_a_snapshot_see_one_state_and_the_next_read_sees_what_was_committed_meanwhile(store):
    new_job(store, state=RUNNING)
    other = threading.Thread(target=store.transition, args=("j1", RUNNING, SUCCEEDED, "ended elsewhere"))
    with store.snapshot():
        assert store.get("j1").state == RUNNING
        other.start()
        other.join(timeout=30)
        with store.snapshot():  # nested: the same read
            assert store.get("j1").state == RUNNING
        assert store.count([RUNNING]) == 1 and store.get("j1").state == RUNNING
    assert store.get("j1").state == SUCCEEDED
    assert store.count([RUNNING]) == 0
    assert not store._conn().in_transaction


def test_a_database_from_before_loses_the_second_state_index_and_questions_by_state_still_use_an_index(tmp_path):
    path = tmp_path / "syncd.db"
    Store(path).close()
    old = sqlite3.connect(path)
    old.execute("CREATE INDEX jobs_state ON jobs (state)")  # as the first schema made it
    old.close()
    store = Store(path)
    try:
        conn = store._conn()
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "jobs_state" not in names and "jobs_due" in names
        for query, params in (
            ("SELECT id FROM jobs WHERE state IN (?, ?) AND next_at <= ?", (QUEUED, RUNNING, 5.0)),
            ("SELECT COUNT(*) FROM jobs WHERE state IN (?, ?) AND backend = ?", (QUEUED, RUNNING, "local")),
        ):
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", params))
            assert "USING INDEX jobs_due" in plan or "USING COVERING INDEX jobs_due" in plan, plan
    finally:
        store.close()
