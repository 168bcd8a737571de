"""Diagnostic (not a test): memory per finished job, with the engine (or the whole daemon) run in-process.

Drops ``--batch`` jobs at a time on the embedded default (local backend, file storage), runs the
engine until they are done (or, with ``--daemon``, waits for their result records while the daemon's
own timers, inbox watcher and http endpoint run), and prints after each batch: the batch's seconds, RSS
(anon and file), glibc's bytes in use and free bytes kept in its heaps (``mallinfo2``), SQLite's own
memory, Python's live blocks and gc objects (and traced memory with ``--tracemalloc``), SQLite
connections and threads. ``--malloc-info`` adds anonymous RSS by holder (glibc's main heap, its thread
arenas, the rest, with Python's object arenas and glibc's mmap'd chunks) and glibc's free chunks per
arena by size. ``--workload`` bisects a job's life: ``reject`` (claim and validate only), ``dry-run``
(validate and collect a report, nothing run), ``run`` (everything). BENCHMARKS.md ("Growth per finished
job") has what it showed.

    .venv/bin/python bench/heap_growth.py --batches 15 --batch 200
    .venv/bin/python bench/heap_growth.py --daemon --batches 10 --batch 300 --malloc-info
    .venv/bin/python bench/heap_growth.py --batches 5 --batch 200 --workload reject

``tracemalloc`` is off unless asked for: its bookkeeping is a malloc per traced block, made in the
allocating thread's arena and kept as long as the block, so it changes the glibc figures it sits beside.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger  # noqa: E402

from syncd.engine.core import Engine  # noqa: E402
from syncd.service.daemon import Daemon, build_backends, build_storages, load  # noqa: E402
from syncd.service.logsetup import setup_logging  # noqa: E402
from syncd.state.store import Store  # noqa: E402
from tests.support.harness import drop_job, make_config, make_job  # noqa: E402

WORKLOADS = {
    "run": {"command": "echo x > out.txt"},
    "dry-run": {"command": "echo x > out.txt", "dry_run": True},
    "reject": {"command": "echo x > out.txt", "no_such_field": 1},
}


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> MallInfo2:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2()


def figures(connections: list[int]) -> str:
    status = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                status[key] = int(line.split()[1]) // 1024
    heap = mallinfo()
    sqlite = ctypes.CDLL("libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    traced, _ = tracemalloc.get_traced_memory()  # 0 unless --tracemalloc
    return (
        f"rss {status['VmRSS']} MiB (anon {status['RssAnon']}, file {status['RssFile']}), "
        f"malloc in use {(heap.uordblks + heap.hblkhd) / 2**20:.1f} MiB, kept free {heap.fordblks / 2**20:.1f} MiB, "
        f"sqlite {sqlite.sqlite3_memory_used() / 2**20:.1f} MiB, python {traced / 2**20:.1f} MiB traced, "
        f"{sys.getallocatedblocks()} blocks, {len(gc.get_objects())} objects, "
        f"connections {connections[0]}, threads {threading.active_count()}"
    )


def malloc_info_xml() -> str:
    libc = ctypes.CDLL("libc.so.6")
    libc.open_memstream.restype = ctypes.c_void_p
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = ctypes.c_void_p(libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size)))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    xml = ctypes.string_at(buffer, size.value).decode()
    libc.free(buffer)
    return xml


def free_chunks() -> str:
    """Per arena (glibc ``malloc_info``): heap size and the free bytes in its bins by chunk size (many small
    ones: fragmentation; the top chunk, given back only by trimming, is not in a bin)."""
    lines = []
    for number, heap in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', malloc_info_xml(), re.S):
        classes = {"<1K": 0, "1-8K": 0, "8-64K": 0, ">=64K": 0}
        count = 0
        for low, total, n in re.findall(
            r'<(?:size|unsorted) from="(\d+)" to="\d+" total="(\d+)" count="(\d+)"/>', heap
        ):
            low, total = int(low), int(total)
            key = "<1K" if low < 1024 else "1-8K" if low < 8192 else "8-64K" if low < 65536 else ">=64K"
            classes[key] += total
            count += int(n)
        system = int(re.search(r'<system type="current" size="(\d+)"/>', heap).group(1))
        lines.append(
            f"  arena {number}: heap {system / 2**20:.1f} MiB, {count} free chunks: "
            + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in classes.items())
            + " MiB"
        )
    return "\n".join(lines)


def python_arenas() -> str:
    """Python's object allocator (``sys._debugmallocstats``, which writes to fd 2): its 1 MiB arenas now and at
    most, the bytes in live blocks, and what the arenas hold free (free blocks in used pools, empty pools)."""
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode()

    def figure(label: str) -> int:
        return int(re.search(rf"{label}\s*=\s*([\d,]+)", text).group(1).replace(",", ""))

    unused = re.search(r"(\d+) unused pools \* (\d+) bytes", text)
    return (
        f"python arenas {figure('# arenas allocated current')} (at most "
        f"{figure('# arenas highwater mark')}) MiB holding {figure('# bytes in allocated blocks') / 2**20:.1f} "
        f"live, {figure('# bytes in available blocks') / 2**20:.1f} free in used pools, "
        f"{int(unused.group(1)) * int(unused.group(2)) / 2**20:.1f} in empty pools"
    )


def anon_rss_by_kind() -> str:
    """Anonymous resident memory by what holds it, from /proc/self/smaps: glibc's main heap, glibc's thread
    arenas (mappings aligned to their 64 MiB reservations), and the rest (Python's object arenas, glibc's
    mmap'd chunks, thread stacks, libraries' data), with the sizes of Python's arenas and glibc's mmap'd
    chunks for comparison."""
    kinds = {"main heap": 0, "thread arenas": 0, "other": 0}
    start = size = 0
    name = ""
    with open("/proc/self/smaps") as lines:
        for line in lines:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                start, size, name = low, high - low, fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Anonymous:":
                resident = int(fields[1]) * 1024
                if name == "[heap]":
                    kinds["main heap"] += resident
                elif not name and start % (64 << 20) == 0 and size <= (64 << 20):
                    kinds["thread arenas"] += resident
                else:
                    kinds["other"] += resident
    heap = mallinfo()
    return (
        ", ".join(f"{k} {v / 2**20:.1f}" for k, v in kinds.items()) + f" MiB; of the other: {python_arenas()}, "
        f"glibc mmap'd chunks {heap.hblks} / {heap.hblkhd / 2**20:.1f} MiB"
    )


def count_results(outbox: Path) -> int:
    if not outbox.is_dir():
        return 0
    return sum(1 for folder in outbox.iterdir() if (folder / "syncd-result.json").exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument(
        "--workload",
        choices=sorted(WORKLOADS),
        default="run",
        help="run: a command on the local backend; dry-run: validated and reported, never run; "
        "reject: an invalid job.yaml, moved to failed/",
    )
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="run the whole daemon in-process (timers, inbox watcher, http endpoint, log lines to "
        "<site>/syncd.log) on bench/load.py's site, instead of the engine alone",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python's memory (its bookkeeping mallocs live as long as each traced block, in "
        "the allocating thread's arena: it changes the heap it measures)",
    )
    parser.add_argument("--malloc-info", action="store_true", help="also print free chunks per arena")
    args = parser.parse_args()
    connections = [0]
    connect = sqlite3.connect

    def counting_connect(*a, **k):
        connections[0] += 1
        return connect(*a, **k)

    sqlite3.connect = counting_connect
    root = Path(tempfile.mkdtemp(prefix="syncd-heap-"))
    if args.daemon:
        path = make_config(root / "site", settle="0.2s", max_parallel=8, rescan="30s")  # as bench/load.py
        sys.stderr = open(root / "site" / "syncd.log", "a")  # where the daemon's log lines go
        setup_logging("INFO", "text")
        sys.stderr = sys.__stderr__
        daemon = Daemon(load(path))
        daemon.start()
        config, engine = daemon.config, daemon.engine
    else:
        logger.remove()
        path = make_config(root / "site", max_parallel=8)
        data = yaml.safe_load(path.read_text())
        data["retry"] = {"initial": "0.05s", "max": "0.3s"}
        data["poll"] = {"first": "0.05s", "max": "0.2s"}
        path.write_text(yaml.safe_dump(data))
        config = load(path)
        store = Store(config.db_path)
        engine = Engine(config, store, build_backends(config), build_storages(config))
        store.on_transition = engine.on_transition
        engine.prepare()
    inbox = config.inboxes[0]
    if args.tracemalloc:
        tracemalloc.start()
    try:
        measure(args, engine, inbox, connections)
    finally:
        if args.daemon:
            daemon.stop()
        else:
            engine.stop(10)
        print(f"site kept in {root}")


def measure(args: argparse.Namespace, engine: Engine, inbox, connections: list[int]) -> None:
    outbox = inbox.outbox / inbox.bucket
    finished = inbox.failed if args.workload == "reject" else outbox
    done = 0
    for _ in range(args.batches):
        started = time.monotonic()
        for _ in range(args.batch):
            name = f"j{done:06d}"
            if args.daemon:
                drop_job(inbox.path, name, WORKLOADS[args.workload])
            else:
                make_job(inbox.path, name, WORKLOADS[args.workload])
                engine.claim(inbox, inbox.path / name)
            done += 1
        if args.daemon:
            while (len(os.listdir(finished)) if args.workload == "reject" else count_results(finished)) < done:
                time.sleep(0.5)
        else:
            engine.run_until_idle(600)
        gc.collect()
        print(f"{done} jobs ({time.monotonic() - started:.0f}s): {figures(connections)}", flush=True)
        if args.malloc_info:
            print(f"  anonymous RSS: {anon_rss_by_kind()}", flush=True)
            print(free_chunks(), flush=True)


if __name__ == "__main__":
    main()
