"""SQLite state store: jobs, an append-only event log, guarded transitions.

The store is the only source of truth. Every transition is written (and
fsync'd, ``synchronous=FULL``) before the side effect that depends on it, and is
guarded by the state it expects, so two actors (the daemon and a CLI command,
or two worker threads) can never both move the same job.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from syncd.errors import TransientError
from syncd.log import logger
from syncd.state.commits import GroupCommit
from syncd.state.schema import _ADDED_COLUMNS, _SCHEMA, SCHEMA_VERSION
from syncd.state.states import (
    ACTIVE,
    CANCELLED,
    CLAIMED,
    CLAIMING,
    COLLECTING,
    FAILED,
    HELD,
    QUEUED,
    REJECTED,
    REMOTE,
    RUNNING,
    STAGED,
    STAGING,
    SUBMITTED,
    SUBMITTING,
    SUCCEEDED,
    TAKEN_OVER,
    TERMINAL,
    TIMED_OUT,
    VALIDATED,
)

# Primary SQLite result codes that mean "cannot write the database now" (full disk or quota, I/O error).
# The state names are part of the store's interface: callers import them from here.
__all__ = [
    "Event",
    "Job",
    "Store",
    "StoreUnwritable",
    "make_private_dir",
    "CLAIMING",
    "CLAIMED",
    "STAGING",
    "STAGED",
    "SUBMITTING",
    "SUBMITTED",
    "QUEUED",
    "RUNNING",
    "COLLECTING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
    "TIMED_OUT",
    "REJECTED",
    "VALIDATED",
    "HELD",
    "TAKEN_OVER",
    "TERMINAL",
    "REMOTE",
    "ACTIVE",
]

_UNWRITABLE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    dir_name: str
    inbox: str
    backend: str
    storage: str
    bucket: str
    folder: str | None
    state: str
    held_from: str | None
    attempts: int
    remote_id: str | None
    handle: str | None
    remote_state: str | None
    exit_code: int | None
    outcome: str | None
    error: str | None
    message: str | None
    manifest: str | None
    spool_path: str
    cancel_requested: int
    retry_requested: int
    priority: int
    created: float
    updated: float
    submitted_at: float | None
    started_at: float | None
    ended_at: float | None
    next_at: float
    poll_interval: float | None
    failing_since: float | None
    failures: int
    finished: int
    deadline_hit: int
    dir_raw: bytes | None  # the folder's name as bytes when it is not valid UTF-8 (dir_name is escaped)
    dir_identity: str | None = None  # "device:inode" of the claimed folder: a rename keeps it
    results_waiting_since: float | None = None  # the service first answered "not ready yet" for the results
    adopted_from: str | None = None  # "host (lease)" of the daemon this job was taken over from
    taken_by: str | None = None  # the lease of the daemon that took this job over (state taken_over)

    @property
    def original_dir_name(self) -> str:
        """The folder's real name (undecodable bytes kept via surrogateescape), for moving it back out."""
        return os.fsdecode(self.dir_raw) if self.dir_raw else self.dir_name

    @property
    def submit_key(self) -> str:
        """The name the remote side knows this attempt by; stable across restarts."""
        return f"syncd-{self.id}" if self.attempts <= 1 else f"syncd-{self.id}-{self.attempts}"

    @property
    def handle_data(self) -> dict[str, Any]:
        return json.loads(self.handle) if self.handle else {}

    @property
    def manifest_data(self) -> dict[str, Any]:
        return json.loads(self.manifest) if self.manifest else {}


_JOB_COLUMNS = [f.name for f in fields(Job)]
_JOB_COLUMN_SET = frozenset(_JOB_COLUMNS)


_JOB_SELECT = f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs"  # in Job's order: rows become Jobs positionally


class Due(NamedTuple):
    """A job whose next step is due, and the backend and storage it uses."""

    id: str
    backend: str
    storage: str


def _job(row: sqlite3.Row) -> Job:
    """A Job from a row selected with _JOB_SELECT."""
    return Job(*row)


def make_private_dir(path: Path) -> None:
    """Create ``path`` mode 0700. An existing folder is the admin's (it could be shared, like /var/lib
    or /tmp): its mode is never changed, only reported when other users can enter it."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
    elif path.stat().st_mode & 0o007:
        logger.warning("state folder {} is open to other users; consider chmod 700 (syncd.db itself is 0600)", path)


def _storable(value: Any) -> Any:
    """Text with undecodable bytes from file names (surrogates) shown as \\xff, which SQLite can store."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _storable_values(values: dict[str, Any]) -> tuple:
    return tuple(_storable(v) for v in values.values())


class StoreUnwritable(TransientError):
    """The state database refused a write (full disk, I/O error); nothing was recorded."""


@dataclass(frozen=True)
class Event:
    seq: int
    job_id: str
    at: float
    from_state: str | None
    to_state: str | None
    message: str


class Store:
    """Thread-safe access to the state database (one connection per thread)."""

    def __init__(self, path: Path, on_transition: Callable[[Job], None] | None = None, *, durable: bool = True):
        self.path = Path(path)
        # ``durable=False`` (``syncd sync`` without ``--fsync``): a commit is not flushed to disk before
        # it returns. A power cut may then forget the last rows, never corrupt the database; the files
        # those rows describe were not flushed either, and a forgotten row only means a re-download.
        self._synchronous = "FULL" if durable else "NORMAL"
        self._pauses: dict[str, tuple[float, str]] | None = None  # backend_pauses, between writes
        #: called with the job after every committed transition (journal files, metrics)
        self.on_transition = on_transition
        make_private_dir(self.path.parent)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        # All of this process's writes go through one connection, in turns (SQLite's busy handler would
        # sleep for milliseconds between connections), and writes that queue share a commit.
        self._group: GroupCommit | None = None
        self._lock = threading.Lock()
        self._opening = threading.Lock()  # held while the writing connection is opened
        #: why the last write failed, while the database cannot be written (None when it can)
        self.write_problem: str | None = None
        conn = self._conn()
        conn.executescript(_SCHEMA)
        present = {row["name"] for row in conn.execute("PRAGMA table_info(jobs)")}
        for column, ddl in _ADDED_COLUMNS.items():
            if column not in present:  # a database written by an earlier syncd
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {ddl}")
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        os.chmod(self.path, 0o600)

    # -- connections -------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        """This thread's connection, for reads by the owners of the other tables (delivery index, notifications)."""
        return self._conn()

    def writing(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction, with the store's handling of a full disk (StoreUnwritable)."""
        return self._write()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection for reads."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """This thread's reads in the block see one state of the database, in one read transaction: the
        pages they share are read once, not once per query (every commit of another connection empties
        this connection's page cache at its next read). Writes in the block are not seen by its reads."""
        conn = self._conn()
        if conn.in_transaction:
            yield
            return
        conn.execute("BEGIN")
        try:
            yield
        finally:
            conn.execute("COMMIT")  # ends the read; this connection never writes

    def group_commit(self) -> GroupCommit:
        """The writing connection's group commit (opened on first use, and again after :meth:`close`)."""
        group = self._group
        if group is None:
            with self._opening:  # one writing connection, even when two threads write first at once
                if self._group is None:
                    self._group = self._open_writer()
                group = self._group
        return group

    def _open_writer(self) -> GroupCommit:
        """The one writing connection. Durable: it commits with synchronous=NORMAL and its group commit
        flushes the log after each commit that needs it (state.commits), so that a change whose loss in a
        power cut costs only a step done again is not flushed on its own."""
        conn = self._connect()
        if self._synchronous != "FULL":
            return GroupCommit(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        return GroupCommit(conn, wal=Path(f"{self.path}-wal"))

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.row_factory = sqlite3.Row
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write, committed when the block has ended and on disk unless not ``durable`` (see
        state.commits); reads of the same data in it go through the connection it gives, not through
        :meth:`_conn`."""
        try:
            with self.group_commit().write(durable) as conn:
                yield conn
        except sqlite3.Error as exc:
            if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _UNWRITABLE_CODES:
                raise self._unwritable(exc) from exc
            raise
        if self.write_problem is not None:
            self.write_problem = None
            logger.info("the state database {} accepts writes again; jobs resume", self.path)

    def _unwritable(self, exc: sqlite3.Error) -> StoreUnwritable:
        problem = (
            f"cannot write the state database {self.path} ({exc}); free space on the filesystem holding "
            f"{self.path.parent}. Every job waits, unchanged, until syncd can record its progress"
        )
        if self.write_problem is None:
            logger.error("{}", problem)
        self.write_problem = problem
        return StoreUnwritable(problem)

    def check_writable(self) -> bool:
        """Try one small write; True (and ``write_problem`` cleared) when the database accepts it."""
        try:
            with self._write() as conn:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('write_check', ?)", (str(time.time()),))
        except StoreUnwritable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
            if self._group is not None:
                self._group.close()
            self._group = None
        self._local = threading.local()

    # -- jobs ----------------------------------------------------------------
    def create_job(self, **values: Any) -> Job:
        now = time.time()
        values.setdefault("state", CLAIMING)
        values.setdefault("created", now)
        values.setdefault("updated", now)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._write() as conn:
            conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", _storable_values(values))
            self._event(conn, values["id"], None, values["state"], f"found job directory '{values['dir_name']}'")
        return self.get(values["id"])

    def adopt_job(self, values: dict[str, Any], note: str) -> bool:
        """Insert a job taken over from another daemon (its whole row); False if this store has it already."""
        values = {key: value for key, value in values.items() if key in _JOB_COLUMN_SET}
        values["updated"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._write() as conn:
            added = conn.execute(
                f"INSERT OR IGNORE INTO jobs ({columns}) VALUES ({marks})", _storable_values(values)
            ).rowcount
            if added:
                self._event(conn, values["id"], None, values["state"], note)
        return bool(added)

    def hand_over(self, inbox: str, taken_by: str, note: str) -> list[Job]:
        """Mark every unfinished job of ``inbox`` taken over by the lease ``taken_by``: never touched again here."""
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(
                f"UPDATE jobs SET held_from = state, state = ?, taken_by = ?, finished = 1, updated = ? "
                f"WHERE inbox = ? AND finished = 0 AND state != ? RETURNING {', '.join(_JOB_COLUMNS)}",
                (TAKEN_OVER, taken_by, now, inbox, TAKEN_OVER),
            ).fetchall()
            for row in rows:
                self._event(conn, row["id"], row["held_from"], TAKEN_OVER, note)
        return [_job(row) for row in rows]

    def meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def unfinished_with_folder(self, identity: str) -> Job | None:
        """The job not yet finished whose claimed folder has ``identity`` (device:inode), if any."""
        rows = self._select("dir_identity = ? AND finished = 0", (identity,))
        return rows[0] if rows else None

    def get(self, job_id: str) -> Job:
        row = self._conn().execute(f"{_JOB_SELECT} WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def find(self, id_or_name: str) -> list[Job]:
        rows = (
            self._conn()
            .execute(
                f"{_JOB_SELECT} WHERE id = ? OR name = ? OR dir_name = ? ORDER BY created",
                (id_or_name, id_or_name, id_or_name),
            )
            .fetchall()
        )
        exact = [r for r in rows if r["id"] == id_or_name]
        return [_job(r) for r in (exact or rows)]

    def jobs(self, states: Iterable[str] | None = None, *, backend: str | None = None) -> list[Job]:
        query, params = _JOB_SELECT, []
        clauses = []
        if states is not None:
            states = list(states)
            clauses.append(f"state IN ({', '.join('?' for _ in states)})")
            params += states
        if backend is not None:
            clauses.append("backend = ?")
            params.append(backend)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self._conn().execute(query + " ORDER BY priority DESC, created, id", params).fetchall()
        return [_job(r) for r in rows]

    def to_poll(self, states: Iterable[str], backend: str, now: float, remote_ids: Iterable[str] = ()) -> list[Job]:
        """Jobs of ``backend`` in ``states`` whose poll is due, and those with one of ``remote_ids``."""
        states, remote_ids = list(states), list(remote_ids)
        where = f"backend = ? AND state IN ({', '.join('?' for _ in states)}) AND (next_at <= ?"
        if remote_ids:
            where += f" OR remote_id IN ({', '.join('?' for _ in remote_ids)})"
        return self._select(where + ")", (backend, *states, now, *remote_ids))

    def latest(self, limit: int) -> list[Job]:
        """The ``limit`` jobs created last, oldest first (never every job ever run: /jobs is asked at any time)."""
        rows = (
            self._conn()
            .execute(
                f"SELECT * FROM ({_JOB_SELECT} ORDER BY created DESC, id DESC LIMIT ?) ORDER BY created, id",
                (limit,),
            )
            .fetchall()
        )
        return [_job(r) for r in rows]

    def newest(self, where: str, params: Iterable[Any], limit: int) -> list[Job]:
        """The ``limit`` jobs created last among those matching ``where`` (SQL with ``?`` marks), newest first."""
        rows = (
            self._conn()
            .execute(f"{_JOB_SELECT} WHERE {where} ORDER BY created DESC, id DESC LIMIT ?", (*params, limit))
            .fetchall()
        )
        return [_job(r) for r in rows]

    def due(self, states: Iterable[str], now: float, limit: int, *, backend: str | None = None) -> list[Due]:
        """Up to ``limit`` jobs in ``states`` whose next step is due: collections first (they free resources
        and deliver results), then by priority and age. Ids and where each runs only: the pump asks this
        whenever there is work, and most of what it finds is in a worker's hands already."""
        states = list(states)
        where = f"state IN ({', '.join('?' for _ in states)}) AND next_at <= ?"
        params: list[Any] = [*states, now]
        if backend is not None:
            where += " AND backend = ?"
            params.append(backend)
        rows = (
            self._conn()
            .execute(
                f"SELECT id, backend, storage FROM jobs WHERE {where} "
                f"ORDER BY state = ? DESC, priority DESC, created, id LIMIT ?",
                (*params, COLLECTING, limit),
            )
            .fetchall()
        )
        return [Due(*r) for r in rows]

    _REQUESTED = "cancel_requested = 1 OR retry_requested = 1"
    _UNFINISHED = f"finished = 0 AND state IN ({', '.join('?' for _ in TERMINAL)})"

    def requests(self) -> list[Job]:
        """Jobs with a pending cancel or retry request (set by the CLI or a folder verb)."""
        return self._select(self._REQUESTED)

    def request_ids(self) -> list[str]:
        return self._ids(self._REQUESTED)

    def has(self, job_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def open_jobs(self, inbox: str) -> list[Job]:
        """The jobs of ``inbox`` that are not finished (in any state)."""
        return self._select("finished = 0 AND inbox = ?", (inbox,))

    def unfinished(self) -> list[Job]:
        """Jobs in a terminal state whose claimed directory has not been archived yet."""
        return self._select(self._UNFINISHED, tuple(TERMINAL))

    def unfinished_ids(self) -> list[str]:
        return self._ids(self._UNFINISHED, tuple(TERMINAL))

    def _ids(self, where: str, params: tuple = ()) -> list[str]:
        rows = self._conn().execute(f"SELECT id FROM jobs WHERE {where} ORDER BY priority DESC, created, id", params)
        return [r[0] for r in rows.fetchall()]

    def count_by_state(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    def staged_by_backend(self) -> dict[str, int]:
        rows = (
            self._conn()
            .execute("SELECT backend, COUNT(*) AS n FROM jobs WHERE state = ? GROUP BY backend", (STAGED,))
            .fetchall()
        )
        return {r["backend"]: r["n"] for r in rows}

    def request(self, job_id: str, kind: str) -> None:
        """Record a cancel or retry request; the daemon acts on it at its next pass."""
        column = {"cancel": "cancel_requested", "retry": "retry_requested"}[kind]
        with self._write() as conn:
            conn.execute(
                f"UPDATE jobs SET {column} = 1, updated = ? WHERE id = ? AND {column} = 0", (time.time(), job_id)
            )
            self._event(conn, job_id, None, None, f"{kind} requested")

    def _select(self, where: str, params: tuple = ()) -> list[Job]:
        rows = (
            self._conn().execute(f"{_JOB_SELECT} WHERE {where} ORDER BY priority DESC, created, id", params).fetchall()
        )
        return [_job(r) for r in rows]

    def count(self, states: Iterable[str], *, backend: str | None = None) -> int:
        states = list(states)
        query = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' for _ in states)})"
        params: list[Any] = list(states)
        if backend is not None:
            query += " AND backend = ?"
            params.append(backend)
        return self._conn().execute(query, params).fetchone()[0]

    def transition(
        self, job_id: str, expect: str | Iterable[str], to: str, note: str, *, durable: bool = True, **values: Any
    ) -> bool:
        """Move ``job_id`` from one of ``expect`` to ``to`` (and set ``values``) atomically.

        Returns False, changing nothing, when the job is no longer in an expected state. ``durable=False``:
        committed without a flush of its own, for a change whose loss in a power cut only has a step done
        again that may be done twice (see state.commits).
        """
        expected = [expect] if isinstance(expect, str) else list(expect)
        values["state"] = to
        values["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in values)
        with self._write(durable) as conn:
            if len(expected) == 1:  # the state it leaves is known: the update itself checks it
                was: str | None = expected[0]
            else:
                row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                was = row["state"] if row is not None and row["state"] in expected else None
            if was is None:
                return False
            changed = conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND state = ? RETURNING {', '.join(_JOB_COLUMNS)}",
                (*_storable_values(values), job_id, was),
            ).fetchone()
            if changed is None:
                return False
            self._event(conn, job_id, was, to, note)
        if self.on_transition is not None:
            self.on_transition(_job(changed))
        return True

    def update(
        self,
        job_id: str,
        *,
        expect: str | Iterable[str] | None = None,
        event: str | None = None,
        durable: bool = True,
        **values: Any,
    ) -> bool:
        """Set fields without a state change (optionally only while in ``expect``); ``durable`` as for
        :meth:`transition`."""
        values["updated"] = time.time()
        assignments = ", ".join(f"{k} = ?" for k in values)
        where, params = "id = ?", [job_id]
        if expect is not None:
            expected = [expect] if isinstance(expect, str) else list(expect)
            where += f" AND state IN ({', '.join('?' for _ in expected)})"
            params += expected
        with self._write(durable) as conn:
            if not conn.execute(
                f"UPDATE jobs SET {assignments} WHERE {where}", (*_storable_values(values), *params)
            ).rowcount:
                return False
            if event:
                self._event(conn, job_id, None, None, event)
        return True

    def reschedule(self, polled: Sequence[tuple[str, str, float, float]]) -> None:
        """Jobs polled without a change of state: (id, state, next poll, interval) each, one transaction for
        all. A job that has left that state meanwhile is not touched."""
        if not polled:
            return
        now = time.time()
        with self._write() as conn:
            conn.executemany(
                "UPDATE jobs SET next_at = ?, poll_interval = ?, failures = 0, failing_since = NULL, updated = ? "
                "WHERE id = ? AND state = ?",
                [(next_at, interval, now, job_id, state) for job_id, state, next_at, interval in polled],
            )

    def delete_unclaimed(self, job_id: str) -> None:
        """Forget a record whose claim rename never happened (crash between insert and rename)."""
        with self._write() as conn:
            conn.execute("DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, CLAIMING))
            conn.execute(
                "DELETE FROM events WHERE job_id = ? AND NOT EXISTS (SELECT 1 FROM jobs WHERE id = ?)", (job_id, job_id)
            )

    def add_event(self, job_id: str, message: str) -> None:
        with self._write() as conn:
            self._event(conn, job_id, None, None, message)

    def events(self, job_id: str) -> list[Event]:
        rows = self._conn().execute("SELECT * FROM events WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        return [Event(r["seq"], r["job_id"], r["at"], r["from_state"], r["to_state"], r["message"]) for r in rows]

    def folder_in_use(self, storage: str, bucket: str, folder: str) -> bool:
        """Whether a job has results folder ``folder`` in ``storage``/``bucket`` (one index lookup: the cost
        of finding a free folder name does not grow with the number of jobs ever run)."""
        return (
            self._conn()
            .execute(
                "SELECT 1 FROM jobs WHERE folder = ? AND storage = ? AND bucket = ? LIMIT 1", (folder, storage, bucket)
            )
            .fetchone()
            is not None
        )

    @staticmethod
    def _event(
        conn: sqlite3.Connection, job_id: str, from_state: str | None, to_state: str | None, message: str
    ) -> None:
        conn.execute(
            "INSERT INTO events (job_id, at, from_state, to_state, message) VALUES (?, ?, ?, ?, ?)",
            (job_id, time.time(), from_state, to_state, _storable(message)),
        )

    # -- backends paused for attention (refused credentials) --------------------------
    def pause_backend(self, backend: str, until: float, reason: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO backend_pauses VALUES (?, ?, ?)", (backend, until, reason))
        self._pauses = None

    def resume_backend(self, backend: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM backend_pauses WHERE backend = ?", (backend,))
        self._pauses = None

    def backend_pauses(self) -> dict[str, tuple[float, str]]:
        """Backends paused, with until when and why. Asked before every step of every job, and written
        only by the daemon (through this object): kept in memory between its writes, which clear it."""
        pauses = self._pauses
        if pauses is None:
            rows = self._conn().execute("SELECT * FROM backend_pauses").fetchall()
            pauses = self._pauses = {r["backend"]: (r["until"], r["reason"]) for r in rows}
        return dict(pauses)

    # -- services that stopped answering (circuit breakers) -----------------------------
    def circuit_opened(self, service: str, since: float, next_probe: float, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO open_circuits VALUES (?, ?, ?, ?)",
                (service, since, next_probe, _storable(reason)),
            )

    def circuit_closed(self, service: str | None = None) -> None:
        """Forget one open circuit, or all of them (at start-up every breaker starts closed)."""
        with self._write() as conn:
            if service is None:
                conn.execute("DELETE FROM open_circuits")
            else:
                conn.execute("DELETE FROM open_circuits WHERE service = ?", (service,))

    def open_circuits(self) -> dict[str, tuple[float, float, str]]:
        rows = self._conn().execute("SELECT * FROM open_circuits").fetchall()
        return {r["service"]: (r["since"], r["next_probe"], r["reason"]) for r in rows}

    def wake_waiting(self, now: float, *, backend: str | None = None, storage: str | None = None) -> int:
        """Make the jobs that are backing off after failures on ``backend``/``storage`` due now."""
        column, value = ("backend", backend) if backend is not None else ("storage", storage)
        with self._write() as conn:
            return conn.execute(
                f"UPDATE jobs SET next_at = ? WHERE {column} = ? AND failures > 0 AND next_at > ? "
                f"AND state NOT IN ({', '.join('?' for _ in TERMINAL)}, ?)",
                (now, value, now, *TERMINAL, HELD),
            ).rowcount

    def active_with_cancel_marker_candidates(self) -> list[Job]:
        return self._select(f"cancel_requested = 0 AND state IN ({', '.join('?' for _ in ACTIVE)})", tuple(ACTIVE))
