"""Group commit: the writes of several threads share one SQLite transaction, and one flush to disk.

Every write runs in a savepoint of the transaction that is open on the one writing connection. The writer
that finds no other writer waiting for its turn commits the transaction: for itself and for every writer
since the last commit. No writer returns before the commit that holds its changes, so a write is on disk
when it returns, as with a transaction of its own, and the daemon's rule (a state change is persisted
before the side effect that depends on it) holds; what is saved is a flush per write while others queue.

A writer whose own statements fail has its savepoint rolled back, and the others' changes stay. A commit
that fails (a full disk) fails every writer of its transaction with the same error: nothing of it was kept.

Given the database's write-ahead log (``wal``), the connection commits with ``synchronous=NORMAL`` and
this class flushes the log itself after each commit that holds a durable write: what SQLite does with
``synchronous=FULL``, but not for a transaction whose writes all said they need no flush of their own
(``durable=False``): changes whose loss in a power cut only makes the daemon redo a step that may be done
twice. Such a commit reaches the disk with the next flushed one (the log is flushed whole, in order), and
is never lost to a crash of the process. SQLite itself may not change ``synchronous`` inside a
transaction, hence the flush here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_WRITERS = 16  # a transaction is committed after this many writes even while more are waiting
_KEPT_FAILURES = 64  # failed transactions remembered for writers still to wake


class GroupCommit:
    """Writes through ``connection`` (autocommit mode: ``isolation_level=None``), committed in groups."""

    def __init__(self, connection: sqlite3.Connection, max_writers: int = MAX_WRITERS, *, wal: Path | None = None):
        self.connection = connection
        self._max_writers = max_writers
        self._wal = wal  # flushed here after a durable commit (None: the connection's own setting rules)
        self._wal_fd: int | None = None
        self._flush_wanted = False  # a durable write is in the open transaction
        self._turn = threading.RLock()  # one writer's statements at a time; a thread's writes may nest
        self._state = threading.Condition()  # guards the counters below; notified at each commit
        self._waiting = 0  # writers waiting for their turn
        self._open = 0  # number of the transaction open now (or of the last one)
        self._writers = 0  # writes in the open transaction
        self._done = 0  # the last transaction committed or failed
        self._failures: dict[int, sqlite3.Error] = {}  # transaction → why its commit failed
        self._depth = 0  # the turn holder's nesting
        #: transactions committed, flushes of the log, and writes done (for tests and benchmarks)
        self.commits = 0
        self.flushes = 0
        self.writes = 0

    @property
    def waiting(self) -> int:
        """Writers waiting for their turn now."""
        with self._state:
            return self._waiting

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write: its statements go in a savepoint; on return they are committed (or it raised), and
        flushed to disk unless ``durable`` is False (see the module's text)."""
        with self._state:
            self._waiting += 1
        try:
            self._turn.acquire()
        finally:
            with self._state:
                self._waiting -= 1
        if self._depth:  # a write inside a write of this thread: part of the outer one
            self._depth += 1
            try:
                with self._savepoint():
                    yield self.connection
                self._flush_wanted |= durable
            finally:
                self._depth -= 1
                self._turn.release()
            return
        self._depth = 1
        mine, committed, error = 0, False, None
        try:
            mine, alone = self._begin()
            with self._savepoint(alone):
                yield self.connection
            self._flush_wanted |= durable
            self._writers += 1
            self.writes += 1
        except BaseException as exc:
            error = exc
            raise
        finally:
            try:
                committed = self._end(mine, error)
            finally:
                self._depth = 0
                self._turn.release()
        if not committed:
            self._wait_for(mine)

    def _begin(self) -> tuple[int, bool]:
        """The number of the transaction this write goes in, and whether it begins it (then it holds no
        other writer's changes)."""
        if self.connection.in_transaction:
            return self._open, False
        self.connection.execute("BEGIN IMMEDIATE")
        with self._state:
            self._open += 1
        self._writers = 0
        self._flush_wanted = False
        return self._open, True

    @contextmanager
    def _savepoint(self, alone: bool = False) -> Iterator[None]:
        """The block's statements, undone if it fails. ``alone`` (the transaction holds nothing else): the
        whole transaction is rolled back instead, without a savepoint's two statements around every write."""
        conn = self.connection
        if not alone:
            conn.execute("SAVEPOINT syncd_write")
        try:
            yield
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled the whole transaction back already (a full disk)
                try:
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO syncd_write")
                        conn.execute("RELEASE syncd_write")
                except sqlite3.Error:
                    # Half a write must never be committed with the others: they fail with it (see _end).
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
            raise
        if not alone:
            conn.execute("RELEASE syncd_write")

    def _end(self, mine: int, error: BaseException | None) -> bool:
        """After the turn holder's write (``error``: how it failed): commit now (True), or leave it to a
        writer waiting (False)."""
        if not mine:
            return True  # BEGIN itself failed: there is nothing of this writer's to commit
        try:
            return self._commit_unless_waited_for(mine, error)
        except BaseException as exc:
            with self._state:
                ended = self._done >= mine
            if not ended:  # no writer of this transaction may wait for a commit that will not come
                failure = exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(str(exc))
                self._finished(mine, failure)
            raise

    def _commit_unless_waited_for(self, mine: int, error: BaseException | None) -> bool:
        conn = self.connection
        if not conn.in_transaction:  # SQLite rolled it back under a write that failed (a full disk)
            if isinstance(error, sqlite3.Error):
                self._finished(mine, error)  # the writers before this one share its fate, and its error
                return True
            failure = sqlite3.OperationalError("the transaction ended inside a write")
            self._finished(mine, failure)
            if error is None:
                raise failure
            return True
        with self._state:
            waiting = self._waiting
        if waiting and self._writers < self._max_writers:
            return False
        if not self._writers:  # only this writer, and its write failed: nothing to keep
            try:
                conn.execute("ROLLBACK")
            finally:
                self._finished(mine, None)
            return True
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self._finished(mine, exc)
            raise
        self.commits += 1
        if self._flush_wanted and self._wal is not None:
            try:
                self._flush()
            except OSError as exc:  # committed, but perhaps not on disk: no writer may count on it
                failure = sqlite3.OperationalError(f"flushing {self._wal} to disk failed: {exc}")
                self._finished(mine, failure)
                raise failure from exc
        self._finished(mine, None)
        return True

    def _flush(self) -> None:
        """Flush the log to disk. It is opened once: SQLite deletes and makes it anew only when the last
        connection to the database closes, and the writing connection stays open as long as this object."""
        if self._wal_fd is None:
            self._wal_fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)  # type: ignore[arg-type]
        os.fdatasync(self._wal_fd)
        self.flushes += 1

    def close(self) -> None:
        """Close the log's descriptor (the connection is its owner's to close)."""
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None

    def _finished(self, transaction: int, failure: sqlite3.Error | None) -> None:
        with self._state:
            if failure is not None:
                self._failures[transaction] = failure
                for old in [t for t in self._failures if t <= transaction - _KEPT_FAILURES]:
                    del self._failures[old]
            self._done = transaction
            self._state.notify_all()

    def _wait_for(self, transaction: int) -> None:
        with self._state:
            while self._done < transaction:
                self._state.wait()
            failure = self._failures.get(transaction)
        if failure is not None:
            raise _again(failure)


def _again(failure: sqlite3.Error) -> sqlite3.Error:
    """The error of a failed commit, for one more of its writers (each raises an exception of its own)."""
    again = type(failure)(*failure.args)
    for name in ("sqlite_errorcode", "sqlite_errorname"):
        if hasattr(failure, name):
            setattr(again, name, getattr(failure, name))
    return again
