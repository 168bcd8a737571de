#!/usr/bin/env python3
"""Drop-to-result latency of a trivial local job, beside the floor of a bare inotify loop.

Not a test: it prints figures (and optionally writes them as JSON) for BENCHMARKS.md.

    .venv/bin/python bench/latency.py                 # 10 drops each, after one warm-up drop
    .venv/bin/python bench/latency.py --drops 30

What it does, on the embedded default (local backend, file storage, ``settle: 0.2s``, native
observer, the default poll policy):

1. starts ``syncd run`` and waits for "syncd ready";
2. one job at a time: builds a folder outside the inbox (``job.yaml`` with
   ``command: "echo hi > out.txt"`` and a ``.ready`` marker), renames it into the inbox and waits for
   ``outbox/results/<name>/syncd-result.json`` (looked for every millisecond);
3. does the same against the floor: a loop of a few lines that waits on inotify for a folder moved
   into a second inbox, runs the same command in it with ``/bin/sh`` and copies ``out.txt`` and a
   small result record into a second outbox (write to a temporary name, then rename), which is the
   least any tool that does this job can do;
4. reports the median, minimum and maximum of each, syncd's median as a multiple of the floor's, and
   the daemon's CPU time per drop (utime + stime from ``/proc/<pid>/stat``; the detached local runner
   is a process of its own, reported beside it from the system's total).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from watchdog.events import DirCreatedEvent, DirMovedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds, machine_busy_seconds  # noqa: E402
from tests.support.harness import make_config  # noqa: E402  (writes a site on the embedded default)

COMMAND = "echo hi > out.txt"


def wait_for(path: Path, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if path.exists():
            return time.monotonic()
        time.sleep(0.001)
    return None


def build_job(parent: Path, name: str) -> Path:
    job = parent / name
    job.mkdir()
    (job / "job.yaml").write_text(f'command: "{COMMAND}"\n')
    (job / ".ready").touch()
    return job


class FloorLoop(FileSystemEventHandler):
    """The floor: on a folder moved into ``inbox``, run the command in it and copy its output out."""

    def __init__(self, inbox: Path, outbox: Path):
        self.inbox, self.outbox = inbox, outbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A folder renamed in from outside the watched one arrives as a creation.
        if isinstance(event, DirMovedEvent):
            job = Path(os.fsdecode(event.dest_path))
        elif isinstance(event, DirCreatedEvent):
            job = Path(os.fsdecode(event.src_path))
        else:
            return
        if not (job / ".ready").exists():
            return
        subprocess.run(["/bin/sh", "-c", COMMAND], cwd=job, check=True)
        dest = self.outbox / job.name
        dest.mkdir()
        shutil.copyfile(job / "out.txt", dest / "out.txt")
        tmp = dest / ".syncd-result.json.tmp"
        tmp.write_text(json.dumps({"state": "succeeded", "exit_code": 0}))
        os.replace(tmp, dest / "syncd-result.json")


def measure(drop: Path, build: Path, results: Path, prefix: str, drops: int, timeout: float) -> list[float]:
    times = []
    for i in range(drops + 1):
        name = f"{prefix}{i:03d}"
        job = build_job(build, name)
        start = time.monotonic()
        os.rename(job, drop / name)
        done = wait_for(results / name / "syncd-result.json", timeout)
        if done is None:
            raise SystemExit(f"{name}: no result within {timeout:.0f}s")
        if i:  # the first drop warms caches and imports up
            times.append(done - start)
        time.sleep(0.2)  # let the daemon finish its bookkeeping (archive, journal) before the next drop
    return times


def summary(times: list[float]) -> dict:
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drops", type=int, default=10, help="timed drops for each (default 10)")
    parser.add_argument("--timeout", type=float, default=60, help="longest wait for one result")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="syncd-latency-"))
    site = root / "site"
    config = make_config(
        site,
        settle="0.2s",
        max_parallel=8,
        observer="native",
        rescan="30s",
        extra={"poll": {}, "retry": {}},  # the embedded default's poll and retry policies
    )
    inbox, results, build = site / "inbox", site / "outbox" / "results", site / "build"
    build.mkdir()

    log_path = site / "syncd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(config), "--log-format", "text"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 30
        while b"syncd ready" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"syncd did not start; see {log_path}")
            time.sleep(0.01)
        cpu0, busy0 = cpu_seconds(proc.pid), machine_busy_seconds()
        syncd_times = measure(inbox, build, results, "job", args.drops, args.timeout)
        cpu1, busy1 = cpu_seconds(proc.pid), machine_busy_seconds()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    floor_inbox, floor_outbox = root / "floor-inbox", root / "floor-outbox"
    floor_inbox.mkdir()
    floor_outbox.mkdir()
    observer = Observer()
    observer.schedule(FloorLoop(floor_inbox, floor_outbox), str(floor_inbox), recursive=False)
    observer.start()
    try:
        floor_times = measure(floor_inbox, build, floor_outbox, "floor", args.drops, args.timeout)
    finally:
        observer.stop()
        observer.join()

    drops = args.drops + 1
    figures = {
        "drops": args.drops,
        "syncd": summary(syncd_times),
        "floor": summary(floor_times),
        "syncd_over_floor": round(statistics.median(syncd_times) / statistics.median(floor_times), 1),
        "daemon_cpu_ms_per_job": round((cpu1 - cpu0) * 1000 / drops, 1),
        "machine_cpu_ms_per_job": round((busy1 - busy0) * 1000 / drops, 1),
        "syncd_times_s": [round(t, 4) for t in syncd_times],
        "floor_times_s": [round(t, 4) for t in floor_times],
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
