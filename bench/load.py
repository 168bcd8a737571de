#!/usr/bin/env python3
"""Load benchmark: N tiny job directories dropped at once on the local backend.

Not a test: it prints figures (and optionally writes them as JSON) for BENCHMARKS.md.

    .venv/bin/python bench/load.py --jobs 5000          # the full run (a few minutes on 2 cores)
    .venv/bin/python bench/load.py --jobs 500           # a quick run
    .venv/bin/python bench/load.py --jobs 500 --phases  # and the daemon's CPU per engine step

What it does:

1. writes a site (local backend, ``max_parallel`` 8, settle 0.2s) in a fresh folder;
2. builds N job folders *outside* the inbox, then renames each into the inbox
   (all N are pending before the daemon starts);
3. starts ``syncd run`` as a subprocess and times "syncd ready" and the first claim;
4. samples the daemon's RSS (VmRSS, VmHWM) and open file descriptors (/proc/<pid>/fd)
   every second, together with the number of result records in the outbox;
5. waits for all N ``syncd-result.json`` files, then stops the daemon with SIGTERM.

It reports total time, jobs/s, peak RSS, fds at start/peak/end, and RSS/fds when
20 % and 100 % of the jobs had finished (growth per finished job would show there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_times, machine_busy_seconds  # noqa: E402
from tests.support.harness import make_config  # noqa: E402  (writes a site on the embedded default)

SYNCD = [sys.executable, "-m", "syncd"]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB and the number of open fds of ``pid`` (empty once it has exited)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return out


def count_results(results: Path) -> int:
    try:
        names = os.listdir(results)
    except FileNotFoundError:
        return 0
    return sum(1 for name in names if os.path.exists(os.path.join(results, name, "syncd-result.json")))


def log_time(log: Path, needle: bytes) -> bool:
    try:
        return needle in log.read_bytes()
    except FileNotFoundError:
        return False


def phases_per_job(site: Path, pid: int, jobs: int) -> dict[str, dict[str, float]]:
    """The daemon's CPU time per step and job, largest first (from bench/phase_timing.py's table)."""
    try:
        rows = json.loads((site / f"phases.json.{pid}").read_text())
    except (OSError, ValueError):
        return {}
    ordered = sorted(rows.items(), key=lambda item: -item[1]["cpu_ms"])
    return {
        label: {"ms_per_job": round(row["cpu_ms"] / jobs, 2), "calls_per_job": round(row["calls"] / jobs, 2)}
        for label, row in ordered
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5000, help="number of job folders (default 5000)")
    parser.add_argument("--max-parallel", type=int, default=8, help="local backend max_parallel (default 8)")
    parser.add_argument("--workers", type=int, help="the daemon's worker threads (default: syncd's own default)")
    parser.add_argument("--settle", default="0.2s", help="inbox settle time (default 0.2s)")
    parser.add_argument("--dir", type=Path, help="site folder (default: a fresh temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the site folder afterwards")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument(
        "--stall", type=float, default=120, help="stop when no job has finished for this many seconds (default 120)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also measure the daemon's CPU time per engine step (bench/phase_timing.py; adds a little)",
    )
    parser.add_argument(
        "--takeover", action="store_true", help="with takeover enabled: a lease and a handoff record per job"
    )
    args = parser.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="syncd-load-"))
    site = root / "site"
    extra: dict = {"takeover": {"enabled": True}} if args.takeover else {}
    if args.workers is not None:
        extra["workers"] = args.workers
    config = make_config(site, settle=args.settle, max_parallel=args.max_parallel, rescan="30s", extra=extra)
    inbox, results = site / "inbox", site / "outbox" / "results"
    build = site / "build"  # same filesystem as the inbox, outside it
    build.mkdir()

    t0 = time.monotonic()
    for i in range(args.jobs):
        job = build / f"job{i:05d}"
        job.mkdir()
        (job / "job.yaml").write_text('command: "cat in.txt > out.txt"\n')
        (job / "in.txt").write_text(f"{i}\n")
    built = time.monotonic() - t0
    t0 = time.monotonic()
    for i in range(args.jobs):
        os.rename(build / f"job{i:05d}", inbox / f"job{i:05d}")
    dropped = time.monotonic() - t0
    print(f"built {args.jobs} job folders in {built:.1f}s, renamed into the inbox in {dropped:.2f}s", flush=True)

    log_path = site / "syncd.log"
    log = open(log_path, "ab")
    busy_at_start = machine_busy_seconds()
    start = time.monotonic()
    env = dict(os.environ)
    phases_file = site / "phases.json"
    if args.phases:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench" / "phases"), env.get("PYTHONPATH")]))
        env["SYNCD_BENCH_PHASES"] = str(phases_file)
    proc = subprocess.Popen(
        [*SYNCD, "run", "-c", str(config), "--log-format", "text"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
    )
    samples: list[dict] = []
    marks: dict[str, float] = {}
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            now = time.monotonic() - start
            st = proc_status(proc.pid)
            if st:
                st.update(t=round(now, 1), done=count_results(results))
                samples.append(st)
            stop_sampling.wait(1.0)

    def watch_log() -> None:
        while not stop_sampling.is_set() and len(marks) < 2:
            if "ready" not in marks and log_time(log_path, b"syncd ready"):
                marks["ready"] = time.monotonic() - start
            if "first_claim" not in marks and log_time(log_path, b"claimed job directory"):
                marks["first_claim"] = time.monotonic() - start
            time.sleep(0.02)

    threads = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=watch_log, daemon=True)]
    for thread in threads:
        thread.start()
    finished_at = None
    last_done, last_change = -1, time.monotonic()
    try:
        while time.monotonic() - start < args.timeout:
            if proc.poll() is not None:
                print(f"syncd exited early with {proc.returncode}; see {log_path}", flush=True)
                break
            done = count_results(results)
            if done >= args.jobs:
                finished_at = time.monotonic() - start
                break
            if done != last_done:
                last_done, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > args.stall:
                print(f"no job finished for {args.stall:.0f}s ({done} of {args.jobs} done); giving up", flush=True)
                break
            time.sleep(0.5)
        if finished_at is not None:
            time.sleep(1.5)  # one more sample after the last job
    finally:
        stop_sampling.set()
        end_status = proc_status(proc.pid)
        daemon_times = cpu_times(proc.pid)
        daemon_cpu = None if daemon_times is None else sum(daemon_times)
        machine_cpu = machine_busy_seconds() - busy_at_start
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()

    status = subprocess.run(
        [*SYNCD, "status", "--json", "--all", "-c", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    store_states: dict[str, int] = {}
    held: list[str] = []
    try:
        for job in json.loads(status.stdout):
            store_states[job["state"]] = store_states.get(job["state"], 0) + 1
            if job["state"] not in ("succeeded",):
                held.append(f"{job['name']} {job['state']}: {job.get('error')}")
    except ValueError:
        store_states = {"status-unreadable": 1}
    states: dict[str, int] = {}
    for name in os.listdir(results) if results.exists() else []:
        try:
            state = json.loads((results / name / "syncd-result.json").read_text())["state"]
        except (OSError, ValueError, KeyError):
            state = "missing"
        states[state] = states.get(state, 0) + 1

    def at_done(count: int) -> dict:
        hits = [s for s in samples if s["done"] >= count]
        return hits[0] if hits else {}

    ready_at = marks.get("ready", 0.0)
    first = next((s for s in samples if s["t"] >= ready_at), samples[0] if samples else {})
    fifth = at_done(max(1, args.jobs // 5))
    last_sample = samples[-1] if samples else {}
    figures = {
        "jobs": args.jobs,
        "max_parallel": args.max_parallel,
        "workers": args.workers,
        "settle": args.settle,
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "build_seconds": round(built, 1),
        "ready_seconds": round(marks.get("ready", float("nan")), 2),
        "first_claim_seconds": round(marks.get("first_claim", float("nan")), 2),
        "total_seconds": round(finished_at, 1) if finished_at else None,
        "jobs_per_second": round(args.jobs / finished_at, 2) if finished_at else None,
        # both from start to the end (syncd's start-up and the last samples included)
        "daemon_cpu_seconds": daemon_cpu,
        "daemon_cpu_ms_per_job": round(daemon_cpu * 1000 / args.jobs, 1) if daemon_cpu is not None else None,
        # in the interpreter and libraries (user) against in the kernel for it (system: files, fsync, futexes)
        "daemon_user_system_ms_per_job": (
            [round(t * 1000 / args.jobs, 1) for t in daemon_times] if daemon_times is not None else None
        ),
        "machine_cpu_ms_per_job": round(machine_cpu * 1000 / args.jobs, 1),
        "finished": sum(states.values()),
        "states": states,
        "store_states": store_states,
        "not_succeeded": held[:20],
        "peak_rss_mib": round(max((s.get("VmHWM", 0) for s in samples), default=0) / 1024, 1),
        "rss_mib_at_ready": round(first.get("VmRSS", 0) / 1024, 1),
        "rss_mib_at_20pct": round(fifth.get("VmRSS", 0) / 1024, 1),
        "rss_mib_at_end": round(last_sample.get("VmRSS", 0) / 1024, 1),
        "done_at_20pct_sample": fifth.get("done"),
        "fds_at_ready": first.get("fds"),
        "fds_peak": max((s.get("fds", 0) for s in samples), default=None),
        "fds_at_20pct": fifth.get("fds"),
        "fds_at_end": (end_status or last_sample).get("fds"),
        "threads_peak": max((s.get("Threads", 0) for s in samples), default=None),
        "samples": len(samples),
        "site": str(root),
    }
    # throughput over time: jobs finished per 10% slice, to see whether the rate falls as the store grows
    slices = []
    for k in range(1, 11):
        hit = at_done(args.jobs * k // 10)
        if hit:
            slices.append(hit["t"])
    figures["seconds_at_each_10pct"] = slices
    if args.phases:
        figures["phases_ms_per_job"] = phases_per_job(site, proc.pid, args.jobs)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**figures, "timeline": samples}, indent=1))
    if not args.keep and not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    if not finished_at:
        print(f"NOT ALL FINISHED: {sum(states.values())} result records of {args.jobs}; see {log_path}")
    ok = finished_at is not None and states.get("succeeded") == args.jobs
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
