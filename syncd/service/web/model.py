"""What the status page shows, read from the state database: filtered job lists, a job's timeline,
the counts behind the charts, and a version that changes whenever anything shown may have changed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass

from syncd.state.store import ACTIVE, TERMINAL, Event, Job, Store

JOBS_LISTED = 200
ORDER = (
    "claiming",
    "claimed",
    "staging",
    "staged",
    "submitting",
    "submitted",
    "queued",
    "running",
    "collecting",
    "held",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "rejected",
    "validated",
)
RANGES = {"day": (24 * 3600, 3600), "week": (7 * 24 * 3600, 6 * 3600)}  # span, width of one bar
#: upper bounds (seconds) of the buckets of the wait and run time distributions
DURATION_BOUNDS = (1, 10, 60, 600, 3600, 6 * 3600)


@dataclass(frozen=True)
class JobFilter:
    state: str = ""
    inbox: str = ""
    backend: str = ""
    name: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, list[str]]) -> JobFilter:
        def one(key: str) -> str:
            return (query.get(key) or [""])[0].strip()[:200]

        return cls(one("state"), one("inbox"), one("backend"), one("name"))

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in vars(self).items() if v]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def list_jobs(store: Store, wanted: JobFilter, limit: int = JOBS_LISTED) -> list[Job]:
    """The jobs that match, created last first (at most ``limit``)."""
    clauses: list[str] = []
    params: list[object] = []
    if wanted.state == "active":
        clauses.append(f"state IN ({', '.join('?' for _ in ACTIVE)})")
        params += sorted(ACTIVE)
    elif wanted.state:
        clauses.append("state = ?")
        params.append(wanted.state)
    for column in ("inbox", "backend"):
        if value := getattr(wanted, column):
            clauses.append(f"{column} = ?")
            params.append(value)
    if wanted.name:
        clauses.append("(name LIKE ? ESCAPE '\\' OR dir_name LIKE ? ESCAPE '\\' OR id = ?)")
        params += [_like(wanted.name), _like(wanted.name), wanted.name]
    return store.newest(" AND ".join(clauses) or "1", params, limit)


def distinct(store: Store, column: str) -> list[str]:
    if column not in ("inbox", "backend"):
        raise ValueError(column)
    return [r[0] for r in store.reader().execute(f"SELECT DISTINCT {column} FROM jobs ORDER BY {column}")]


def version(store: Store) -> str:
    """Changes whenever a job, a paused backend or an open circuit changes (every change adds an event)."""
    conn = store.reader()
    seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    pauses = conn.execute("SELECT COUNT(*), COALESCE(SUM(until), 0) FROM backend_pauses").fetchone()
    circuits = conn.execute("SELECT COUNT(*), COALESCE(SUM(next_probe), 0) FROM open_circuits").fetchone()
    return f"{seq}.{pauses[0]}.{pauses[1]:.0f}.{circuits[0]}.{circuits[1]:.0f}"


@dataclass(frozen=True)
class Step:
    at: float
    state: str | None  # the state entered (None: a note without a state change)
    message: str
    seconds: float | None  # time spent in ``state`` (until the next state change, or now while in it)


def timeline(events: list[Event], now: float | None = None) -> list[Step]:
    now = time.time() if now is None else now
    changes = [e.at for e in events if e.to_state]
    steps = []
    for event in events:
        seconds = None
        if event.to_state:
            following = next((at for at in changes if at > event.at), None)
            if following is not None:
                seconds = following - event.at
            elif event.to_state not in TERMINAL:
                seconds = now - event.at
        steps.append(Step(event.at, event.to_state, event.message, seconds))
    return steps


def wait_seconds(job: Job) -> float | None:
    """Time between the submission and the start of the run (the remote queue)."""
    if job.submitted_at and job.started_at:
        return max(0.0, job.started_at - job.submitted_at)
    return None


def run_seconds(job: Job) -> float | None:
    if job.started_at and job.ended_at:
        return max(0.0, job.ended_at - job.started_at)
    return None


@dataclass(frozen=True)
class ChartData:
    span: float
    bar: float
    start: float
    outcomes: list[dict[str, int]]  # one per bar: terminal state → jobs that ended in it
    waits: list[int]  # jobs per bucket of DURATION_BOUNDS (and one past the last)
    runs: list[int]


def _bucket(seconds: float) -> int:
    return next((i for i, bound in enumerate(DURATION_BOUNDS) if seconds < bound), len(DURATION_BOUNDS))


def chart_data(store: Store, range_name: str, now: float | None = None) -> ChartData:
    span, bar = RANGES[range_name]
    now = time.time() if now is None else now
    start = (now // bar + 1) * bar - span
    bars = int(span // bar)
    outcomes: list[dict[str, int]] = [{} for _ in range(bars)]
    marks = ", ".join("?" for _ in TERMINAL)
    conn: sqlite3.Connection = store.reader()
    ended = conn.execute(
        f"SELECT state, COALESCE(ended_at, updated) AS at FROM jobs WHERE state IN ({marks}) "
        f"AND COALESCE(ended_at, updated) >= ?",
        (*sorted(TERMINAL), start),
    )
    for row in ended:
        index = min(bars - 1, int((row["at"] - start) // bar))
        outcomes[index][row["state"]] = outcomes[index].get(row["state"], 0) + 1
    waits = [0] * (len(DURATION_BOUNDS) + 1)
    runs = [0] * (len(DURATION_BOUNDS) + 1)
    timed = conn.execute(
        "SELECT submitted_at, started_at, ended_at FROM jobs WHERE started_at IS NOT NULL AND started_at >= ?",
        (start,),
    )
    for row in timed:
        if row["submitted_at"]:
            waits[_bucket(max(0.0, row["started_at"] - row["submitted_at"]))] += 1
        if row["ended_at"]:
            runs[_bucket(max(0.0, row["ended_at"] - row["started_at"]))] += 1
    return ChartData(span, bar, start, outcomes, waits, runs)
