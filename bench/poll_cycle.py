#!/usr/bin/env python3
"""One poll cycle with a thousand remote jobs: requests sent and CPU spent, on the memory backend.

Not a test: it prints figures (and optionally writes them as JSON) for BENCHMARKS.md.

    .venv/bin/python bench/poll_cycle.py                 # 1,000 jobs, 20 cycles
    .venv/bin/python bench/poll_cycle.py --jobs 5000

What it does: runs the engine in this process on the memory backend (the reference backend: a
"service" in memory that counts every request it gets), claims ``--jobs`` jobs and pumps until every
one is submitted and waits in the service's queue (jobs stay queued for an hour, so nothing ends
during the measurement), with ``max_parallel`` as large as the job count. Then, ``--cycles`` times,
it makes every job due and runs one poll of the backend, as the daemon's timer does, and records
the requests the service received, the CPU time of the cycle (``time.thread_time``: the poll runs in
this thread) and its wall time. Last, it lets every job end at once and times the cycle that finds
them all ended (a state change per job, in the store).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from syncd.backends.memory import MemoryBackend, MemoryService  # noqa: E402
from syncd.engine.core import Engine  # noqa: E402
from syncd.service.daemon import build_storages, load  # noqa: E402
from syncd.state.store import REMOTE, Store  # noqa: E402
from tests.support.harness import make_config, make_job  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="remote jobs in flight (default 1000)")
    parser.add_argument("--cycles", type=int, default=20, help="poll cycles measured (default 20)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="syncd-poll-"))
    path = make_config(root / "site", backend="mem", extra={"backends": {"mem": {"type": "memory"}}})
    data = yaml.safe_load(path.read_text())
    data["backends"]["mem"]["max_parallel"] = args.jobs
    path.write_text(yaml.safe_dump(data))
    config = load(path)
    store = Store(config.db_path)
    service = MemoryService(queue_seconds=3600)
    backend = MemoryBackend("mem", config.backend_options["mem"], config.state_dir / "mem", service)
    engine = Engine(config, store, {"mem": backend}, build_storages(config))
    store.on_transition = engine.on_transition
    engine.prepare()
    inbox = config.inboxes[0]

    started = time.monotonic()
    for n in range(args.jobs):
        engine.claim(inbox, make_job(inbox.path, f"job{n:05d}", {"command": "true"}))
    while store.count(REMOTE, backend="mem") < args.jobs:
        engine.pump()
        time.sleep(0.05)
        if time.monotonic() - started > 1800:
            raise SystemExit("the jobs were not all submitted within 30 minutes")
    submitted_in = time.monotonic() - started

    def cycle() -> tuple[int, float, float]:
        store._conn().execute("UPDATE jobs SET next_at = 0")  # every job due, as after its interval
        before = service.requests
        cpu, wall = time.thread_time(), time.perf_counter()
        engine.poll_backend("mem")
        return service.requests - before, time.thread_time() - cpu, time.perf_counter() - wall

    cycles = [cycle() for _ in range(args.cycles)]
    for job in service.jobs.values():  # every job ends now (they run `true`)
        job.start_at = time.time()
    ending = cycle()
    collecting = store.count(["collecting"], backend="mem")
    engine.stop(5)
    store.close()
    shutil.rmtree(root, ignore_errors=True)

    cpu_ms = [c[1] * 1000 for c in cycles]
    figures = {
        "jobs": args.jobs,
        "submitted_in_seconds": round(submitted_in, 1),
        "cycles": args.cycles,
        "requests_per_cycle": sorted({c[0] for c in cycles}),
        "cpu_ms_per_cycle_median": round(statistics.median(cpu_ms), 1),
        "cpu_ms_per_cycle_max": round(max(cpu_ms), 1),
        "cpu_us_per_job_and_cycle": round(statistics.median(cpu_ms) * 1000 / args.jobs, 1),
        "wall_ms_per_cycle_median": round(statistics.median(c[2] for c in cycles) * 1000, 1),
        "cycle_where_every_job_started": {
            "requests": ending[0],
            "cpu_ms": round(ending[1] * 1000, 1),
            "wall_ms": round(ending[2] * 1000, 1),
        },
        "collecting_after_it": collecting,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
