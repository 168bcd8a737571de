"""Group commit (syncd/state/commits.py): writers that queue share one commit, none returns before its
changes are committed, a writer's own failure costs only its own changes, a failed commit fails them all."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from syncd.state.commits import GroupCommit
from tests.support.harness import wait_for


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "db.sqlite"
    setup = connect(path)
    setup.execute("CREATE TABLE parent (id TEXT PRIMARY KEY)")
    setup.execute(
        "CREATE TABLE rows (id TEXT PRIMARY KEY, parent TEXT REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    setup.execute("INSERT INTO parent VALUES ('p')")
    setup.close()
    group = GroupCommit(connect(path))
    group.connection.execute("PRAGMA foreign_keys=ON")
    yield path, group
    group.connection.close()


def rows(path: Path) -> set[str]:
    """What another connection sees: only what is committed."""
    reader = connect(path)
    try:
        return {row[0] for row in reader.execute("SELECT id FROM rows")}
    finally:
        reader.close()


def queue_writers(group: GroupCommit, writes: dict[str, object]) -> tuple[dict, list[threading.Thread]]:
    """Start one thread per write while the caller holds a write; return when all of them wait their turn.
    A value that is an exception is raised inside that writer's block, after its insert."""
    outcomes: dict[str, object] = {}

    def writer(name: str, then: object, path: Path) -> None:
        try:
            with group.write() as conn:
                conn.execute("INSERT INTO rows VALUES (?, ?)", (name, then if isinstance(then, str) else "p"))
                if isinstance(then, BaseException):
                    raise then
            outcomes[name] = "returned" if name in rows(path) else "returned before its commit"
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test looks at
            outcomes[name] = exc

    path = Path(group.connection.execute("PRAGMA database_list").fetchone()[2])
    threads = [threading.Thread(target=writer, args=(name, then, path)) for name, then in writes.items()]
    for thread in threads:
        thread.start()
    wait_for(lambda: group.waiting == len(threads), what="every writer to wait for its turn")
    return outcomes, threads


def test_writers_that_queue_share_one_commit_and_none_returns_before_it(db):
    path, group = db
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('first', 'p')")
        outcomes, threads = queue_writers(group, {f"w{i}": "p" for i in range(6)})
    for thread in threads:
        thread.join(10)
    assert outcomes == {f"w{i}": "returned" for i in range(6)}
    assert rows(path) == {"first"} | {f"w{i}" for i in range(6)}
    assert (group.writes, group.commits) == (7, 1), "seven writes, one commit"


def test_a_writer_alone_commits_at_once(db):
    path, group = db
    for name in ("a", "b"):
        with group.write() as conn:
            conn.execute("INSERT INTO rows VALUES (?, 'p')", (name,))
        assert name in rows(path)
    assert group.commits == 2


def test_a_writer_alone_needs_no_savepoint_and_its_failure_keeps_nothing(db):
    path, group = db
    statements: list[str] = []
    group.connection.set_trace_callback(statements.append)
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('kept', 'p')")
    assert statements == ["BEGIN IMMEDIATE", "INSERT INTO rows VALUES ('kept', 'p')", "COMMIT"]
    with pytest.raises(ValueError):
        with group.write() as conn:
            conn.execute("INSERT INTO rows VALUES ('undone', 'p')")
            raise ValueError("the caller's own error")
    assert not group.connection.in_transaction and rows(path) == {"kept"}
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('after', 'p')")
    assert rows(path) == {"kept", "after"}
    group.connection.set_trace_callback(None)


def test_a_writer_whose_block_fails_loses_only_its_own_changes(db):
    path, group = db
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('first', 'p')")
        outcomes, threads = queue_writers(group, {"good": "p", "bad": ValueError("the caller's own error")})
    for thread in threads:
        thread.join(10)
    assert outcomes["good"] == "returned"
    assert isinstance(outcomes["bad"], ValueError)
    assert rows(path) == {"first", "good"}


def test_a_failed_commit_fails_every_writer_of_its_transaction_and_keeps_nothing(db):
    path, group = db
    with pytest.raises(sqlite3.IntegrityError):
        with group.write() as conn:
            conn.execute("INSERT INTO rows VALUES ('first', 'p')")
            # A reference checked at commit: the commit of the whole group fails.
            outcomes, threads = queue_writers(group, {"fine": "p", "dangling": "no-such-parent"})
    for thread in threads:
        thread.join(10)
    assert isinstance(outcomes["fine"], sqlite3.IntegrityError), outcomes
    assert isinstance(outcomes["dangling"], sqlite3.IntegrityError), outcomes
    assert rows(path) == set()
    with group.write() as conn:  # the connection is usable again
        conn.execute("INSERT INTO rows VALUES ('after', 'p')")
    assert rows(path) == {"after"}


def test_a_write_inside_a_write_of_the_same_thread_is_part_of_it(db):
    path, group = db
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('outer', 'p')")
        with pytest.raises(KeyError):
            with group.write() as inner:
                inner.execute("INSERT INTO rows VALUES ('inner-failed', 'p')")
                raise KeyError("inner")
        with group.write() as inner:
            inner.execute("INSERT INTO rows VALUES ('inner', 'p')")
        assert rows(path) == set(), "nothing is committed before the outer write ends"
    assert rows(path) == {"outer", "inner"}
    assert group.commits == 1


def test_threads_that_write_first_at_once_open_one_writing_connection(tmp_path, monkeypatch):
    """The store's writing connection is opened once, however many threads ask for it together."""
    import time

    from syncd.state.store import Store

    store = Store(tmp_path / "state" / "syncd.db")
    store.close()  # the next write opens the writing connection again
    opened: list[sqlite3.Connection] = []
    connect_slowly = Store._connect

    def slow_connect(self):
        time.sleep(0.05)  # long enough for every thread to ask before the first has its connection
        conn = connect_slowly(self)
        opened.append(conn)
        return conn

    monkeypatch.setattr(Store, "_connect", slow_connect)
    start = threading.Barrier(8)
    groups: list[GroupCommit] = []

    def first_write() -> None:
        start.wait()
        groups.append(store.group_commit())

    threads = [threading.Thread(target=first_write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(opened) == 1
    assert all(group is groups[0] for group in groups) and len(groups) == 8
    store.close()


@pytest.fixture
def logged(tmp_path, monkeypatch):
    """A group commit that flushes the log itself (its connection at synchronous=NORMAL), and the inodes
    of the files it flushed."""
    from syncd.state import commits

    path = tmp_path / "db.sqlite"
    setup = connect(path)
    setup.execute("CREATE TABLE rows (id TEXT PRIMARY KEY, parent TEXT)")
    setup.close()
    conn = connect(path)
    conn.execute("PRAGMA synchronous=NORMAL")
    group = GroupCommit(conn, wal=Path(f"{path}-wal"))
    flushed: list[int] = []
    real = commits.os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(commits.os.fstat(fd).st_ino)
        real(fd)

    monkeypatch.setattr(commits.os, "fdatasync", fdatasync)
    yield path, group, flushed
    group.close()
    group.connection.close()


def test_a_durable_write_is_flushed_in_the_log_and_one_that_needs_no_flush_is_committed_without_one(logged):
    path, group, flushed = logged
    with group.write(durable=False) as conn:
        conn.execute("INSERT INTO rows VALUES ('lazy', 'p')")
    assert rows(path) == {"lazy"}, "committed: another connection sees it"
    assert flushed == [] and group.flushes == 0
    with group.write() as conn:
        conn.execute("INSERT INTO rows VALUES ('durable', 'p')")
    wal_inode = Path(f"{path}-wal").stat().st_ino
    assert flushed == [wal_inode] and group.flushes == 1, "the log itself was flushed, once"
    assert rows(path) == {"lazy", "durable"}


def test_a_durable_write_inside_one_that_needs_no_flush_makes_the_commit_flushed(logged):
    path, group, flushed = logged
    with group.write(durable=False) as conn:
        conn.execute("INSERT INTO rows VALUES ('outer', 'p')")
        with group.write() as inner:
            inner.execute("INSERT INTO rows VALUES ('inner', 'p')")
    assert rows(path) == {"outer", "inner"}
    assert len(flushed) == 1


def test_writers_sharing_a_transaction_are_flushed_once_if_one_of_them_asks(logged):
    path, group, flushed = logged
    waiting = []

    def writer(name: str, durable: bool) -> None:
        with group.write(durable=durable) as conn:
            conn.execute("INSERT INTO rows VALUES (?, 'p')", (name,))

    with group.write(durable=False) as conn:
        conn.execute("INSERT INTO rows VALUES ('first', 'p')")
        for name, durable in (("lazy", False), ("durable", True)):
            thread = threading.Thread(target=writer, args=(name, durable))
            thread.start()
            waiting.append(thread)
        wait_for(lambda: group.waiting == 2, timeout=10)
    for thread in waiting:
        thread.join(10)
    assert rows(path) == {"first", "lazy", "durable"}
    assert (group.writes, group.commits, group.flushes) == (3, 1, 1), "three writes, one commit, flushed"


def test_a_flush_that_fails_fails_its_writers_with_the_reason(logged, monkeypatch):
    from syncd.state import commits

    path, group, flushed = logged

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(commits.os, "fdatasync", broken)
    with pytest.raises(sqlite3.OperationalError, match="flushing .*-wal to disk failed"):
        with group.write() as conn:
            conn.execute("INSERT INTO rows VALUES ('x', 'p')")
    with group.write(durable=False) as conn:  # the group goes on
        conn.execute("INSERT INTO rows VALUES ('y', 'p')")
    assert "y" in rows(path)
