"""Benchmark (not a test): how long a job folder moved in on the server side takes to be claimed by a
daemon whose inbox is on an sshfs mount of that folder, by mount options and with or without syncd's
listing refresh (a hidden probe file created and removed in the inbox before each poll).

A real ``syncd run`` (the config's defaults: ``poll_interval: 2s``, ``rescan: 30s``) watches the inbox
through the mount; each job folder holds ``.ready`` so that ``settle`` does not count. The latency is
from the server-side rename to the folder leaving the server-side inbox (the claim's rename).
Needs root (scripts/share installs openssh-server and sshfs when missing). BENCHMARKS.md has figures.

    .venv/bin/python bench/network_latency.py --jobs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.harness import SyncdProcess, drop_job, make_config  # noqa: E402

SHARE = ROOT / "scripts" / "share"
# The daemon without the listing refresh: the watcher's refresh becomes a plain rescan.
NO_REFRESH = (
    "import syncd.intake.watch as w; w.InboxWatcher.refresh = w.InboxWatcher.rescan; from syncd.cli import main; main()"
)
CASES = [
    ("sshfs defaults", "", False),
    ("sshfs defaults", "", True),
    ("cache_timeout=1", "cache_timeout=1", False),
    ("cache_timeout=1", "cache_timeout=1", True),
    ("dir_cache=no", "dir_cache=no", False),
]


class Daemon(SyncdProcess):
    def __init__(self, config: Path, refresh: bool):
        super().__init__(config)
        self.refresh = refresh

    def start(self, wait: bool = True) -> SyncdProcess:
        if not self.refresh:
            import tests.support.harness as harness

            saved, harness.SYNCD = harness.SYNCD, [sys.executable, "-c", NO_REFRESH]
            try:
                return super().start(wait)
            finally:
                harness.SYNCD = saved
        return super().start(wait)


def run_case(
    work: Path, share_dir: Path, label: str, options: str, refresh: bool, jobs: int, gap: float
) -> list[float]:
    folder = share_dir / "export" / f"{label.replace('=', '-')}-{refresh}"
    for name in ("inbox", "outbox", "failed"):
        (folder / name).mkdir(parents=True)
    point = work / f"mount-{folder.name}"
    subprocess.run([str(SHARE), "mount", str(share_dir), str(point), *([options] if options else [])], check=True)
    shared = point / folder.name
    config = make_config(
        work / f"site-{folder.name}",
        settle="0.5s",
        path=str(shared / "inbox"),
        outbox=str(shared / "outbox"),
        failed=str(shared / "failed"),
        poll_interval="2s",
        rescan="30s",
    )
    daemon = Daemon(config, refresh).start()
    latencies = []
    try:
        for n in range(jobs):
            time.sleep(gap)
            name = f"job-{n}"
            start = time.monotonic()
            drop_job(folder / "inbox", name, {"command": "true"}, {".ready": ""})
            while (folder / "inbox" / name).exists():
                if time.monotonic() - start > 120:
                    raise SystemExit(f"{label}: {name} not claimed within 120 s")
                time.sleep(0.01)
            latencies.append(time.monotonic() - start)
    finally:
        daemon.stop()
        subprocess.run([str(SHARE), "umount", str(share_dir), str(point)], check=False)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per case")
    parser.add_argument("--gap", type=float, default=2.7, help="seconds between jobs (not a multiple of 2 s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="syncd-netbench-") as tmp:
        work = Path(tmp)
        share_dir = work / "share"
        subprocess.run([str(SHARE), "up", str(share_dir)], check=True)
        try:
            print("| mount options | listing refresh | claimed after (median, min–max) |")
            print("|---|---|---|")
            for label, options, refresh in CASES:
                values = run_case(work, share_dir, label, options, refresh, args.jobs, args.gap)
                print(
                    f"| `{label}` | {'on' if refresh else 'off'} | {statistics.median(values):.2f} s "
                    f"({min(values):.2f}–{max(values):.2f} s, {len(values)} jobs) |",
                    flush=True,
                )
        finally:
            subprocess.run([str(SHARE), "down", str(share_dir)], check=False)


if __name__ == "__main__":
    main()
