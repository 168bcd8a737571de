#!/usr/bin/env python3
"""What an idle daemon costs: CPU and memory with a long history and a crowded inbox on a polling observer.

Not a test: it prints figures (and optionally writes them as JSON) for BENCHMARKS.md.

    .venv/bin/python bench/idle.py                          # 10,000 finished jobs, 10,000 entries
    .venv/bin/python bench/idle.py --folders 1000           # 1,000 of the entries are folders

What it does, on the embedded default (local backend, file storage) with the inbox's observer set to
``polling`` (what a network share gets) and every other setting at its default:

1. runs one real job through ``syncd run``, then copies its rows (job and events) in the state
   database until it holds ``--jobs`` finished jobs, as months of use would leave it;
2. fills the inbox with ``--entries`` entries that are not jobs: files, and ``--folders`` of them
   folders without ``job.yaml`` (a folder a user keeps there);
3. starts ``syncd run``, lets it settle for ``--warmup`` seconds (its first rescans and settle
   checks), then samples its CPU time (utime + stime) and RSS for ``--seconds`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds, rss_mib  # noqa: E402
from tests.support.harness import make_config  # noqa: E402  (writes a site on the embedded default)


def start(config: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(config), "--log-format", "text"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 60
    while log_path.read_bytes().count(b"syncd ready") < start.count + 1:  # type: ignore[attr-defined]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"syncd did not start; see {log_path}")
        time.sleep(0.05)
    start.count += 1  # type: ignore[attr-defined]
    return proc


start.count = 0  # type: ignore[attr-defined]


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fill_history(db: Path, jobs: int) -> None:
    """Copy the one finished job's rows until the database holds ``jobs`` finished jobs."""
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    job = dict(conn.execute("SELECT * FROM jobs").fetchone())
    events = [dict(r) for r in conn.execute("SELECT * FROM events WHERE job_id = ?", (job["id"],))]
    columns = [c for c in job if c != "rowid"]
    event_columns = [c for c in events[0] if c != "seq"]
    with conn:
        for n in range(1, jobs):
            row = dict(job, id=f"{job['id']}-{n:05d}", name=f"{job['name']}-{n:05d}")
            row.update(
                {k: f"{row[k]}-{n:05d}" for k in ("dir_name", "folder", "spool_path", "dir_identity") if row.get(k)}
            )
            conn.execute(
                f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
                [row[c] for c in columns],
            )
            conn.executemany(
                f"INSERT INTO events ({', '.join(event_columns)}) VALUES ({', '.join('?' for _ in event_columns)})",
                [[row["id"] if c == "job_id" else e[c] for c in event_columns] for e in events],
            )
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="finished jobs in the state database")
    parser.add_argument("--entries", type=int, default=10_000, help="entries in the inbox that are not jobs")
    parser.add_argument("--folders", type=int, default=0, help="how many of those entries are folders")
    parser.add_argument("--warmup", type=float, default=45.0, help="seconds before sampling (default 45)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds sampled (default 60)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="syncd-idle-"))
    site = root / "site"
    config = make_config(site, observer="polling", settle="5s", rescan="30s", extra={"poll": {}, "retry": {}})
    log_path = site / "syncd.log"
    (site / "inbox" / "first").mkdir()
    (site / "inbox" / "first" / "job.yaml").write_text('command: "echo hi > out.txt"\n')
    proc = start(config, log_path)
    deadline = time.monotonic() + 120
    while not (site / "outbox" / "results" / "first" / "syncd-result.json").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the first job did not finish; see {log_path}")
        time.sleep(0.2)
    time.sleep(2)  # archived and finished
    stop(proc)
    fill_history(site / ".state" / "syncd.db", args.jobs)
    for n in range(args.entries):
        if n < args.folders:
            (site / "inbox" / f"kept folder {n:05d}").mkdir()
            (site / "inbox" / f"kept folder {n:05d}" / "notes.txt").write_text("not a job\n")
        else:
            (site / "inbox" / f"note {n:05d}.txt").write_text("not a job\n")

    proc = start(config, log_path)
    try:
        time.sleep(args.warmup)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        rss = []
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1)
            rss.append(rss_mib(proc.pid))
        cpu = cpu_seconds(proc.pid) - cpu0
        elapsed = time.monotonic() - t0
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    finally:
        stop(proc)
    figures = {
        "finished_jobs": args.jobs,
        "inbox_entries": args.entries,
        "of_which_folders": args.folders,
        "observer": "polling, poll_interval 2s, rescan 30s",
        "sampled_seconds": round(elapsed, 1),
        "cpu_percent_of_a_core": round(cpu * 100 / elapsed, 2),
        "rss_mib_max": round(max(rss), 1),
        "rss_mib_last": round(rss[-1], 1),
        "threads": threads,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
