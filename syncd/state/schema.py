"""The state database's tables: jobs, their events, paused backends, open circuits, notifications and the
delivery index; and the columns added since the first version (existing databases get them at start-up)."""

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    dir_name TEXT NOT NULL,
    inbox TEXT NOT NULL,
    backend TEXT NOT NULL,
    storage TEXT NOT NULL,
    bucket TEXT NOT NULL,
    folder TEXT,
    state TEXT NOT NULL,
    held_from TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    remote_id TEXT,
    handle TEXT,
    remote_state TEXT,
    exit_code INTEGER,
    outcome TEXT,
    error TEXT,
    message TEXT,
    manifest TEXT,
    spool_path TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    retry_requested INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    submitted_at REAL,
    started_at REAL,
    ended_at REAL,
    next_at REAL NOT NULL DEFAULT 0,
    poll_interval REAL,
    failing_since REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    finished INTEGER NOT NULL DEFAULT 0,
    deadline_hit INTEGER NOT NULL DEFAULT 0,
    dir_raw BLOB,
    dir_identity TEXT,
    results_waiting_since REAL,
    adopted_from TEXT,
    taken_by TEXT
);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (name);
-- Also the index of every question by state alone: a second index on (state) was one more page written
-- with every transition's commit.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (state, next_at);
DROP INDEX IF EXISTS jobs_state;
CREATE INDEX IF NOT EXISTS jobs_folder ON jobs (folder);
-- Partial indexes for what every pump asks: without them each pump read the whole table (time per pump, and
-- every connection's page cache filled up, in proportion to all the jobs ever run).
CREATE INDEX IF NOT EXISTS jobs_requested ON jobs (id) WHERE cancel_requested = 1 OR retry_requested = 1;
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (state) WHERE finished = 0;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS backend_pauses (
    backend TEXT PRIMARY KEY,
    until REAL NOT NULL,
    reason TEXT NOT NULL
);
-- Services whose circuit breaker is open (kept by the running daemon, shown by 'syncd status').
CREATE TABLE IF NOT EXISTS open_circuits (
    service TEXT PRIMARY KEY,
    since REAL NOT NULL,
    next_probe REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    sent_at REAL,
    last_error TEXT
);
-- A terminal transition and its notification are one transaction: none is lost to a crash.
CREATE TRIGGER IF NOT EXISTS notify_terminal AFTER UPDATE OF state ON jobs
WHEN NEW.state != OLD.state AND NEW.state IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'rejected',
                                               'validated')
BEGIN
    INSERT INTO notifications (job_id, state, created) VALUES (NEW.id, NEW.state, NEW.updated);
END;
CREATE TABLE IF NOT EXISTS delivered (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL
);
"""


# Columns added after the first schema; existing databases get them at start-up.
_ADDED_COLUMNS = {
    "deadline_hit": "INTEGER NOT NULL DEFAULT 0",
    "dir_raw": "BLOB",
    "dir_identity": "TEXT",
    "results_waiting_since": "REAL",
    "adopted_from": "TEXT",
    "taken_by": "TEXT",
}
