"""Diagnostic (not a test): memory per finished job, with the engine run in-process.

Drops ``--batch`` jobs at a time on the embedded default (local backend, file storage), runs the
engine until they are done, and prints after each batch: RSS (anon and file), glibc's bytes in use
and free bytes kept in its main heap (``mallinfo2``), SQLite's own memory, Python's traced memory
(``tracemalloc``), SQLite connections and threads. BENCHMARKS.md ("Growth per finished job") has
what it showed.

    .venv/bin/python bench/heap_growth.py --batches 8 --batch 200
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sqlite3
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger  # noqa: E402

from syncd.daemon import build_backends, build_storages, load  # noqa: E402
from syncd.engine import Engine  # noqa: E402
from syncd.store import Store  # noqa: E402
from tests.support.harness import make_config, make_job  # noqa: E402


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def figures(connections: list[int]) -> str:
    status = {}
    with open("/proc/self/status") as lines:
        for line in lines:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                status[key] = int(line.split()[1]) // 1024
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    heap = libc.mallinfo2()
    sqlite = ctypes.CDLL("libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    traced, _ = tracemalloc.get_traced_memory()
    return (f"rss {status['VmRSS']} MiB (anon {status['RssAnon']}, file {status['RssFile']}), "
            f"malloc in use {(heap.uordblks + heap.hblkhd) / 2**20:.1f} MiB, kept free {heap.fordblks / 2**20:.1f} MiB, "
            f"sqlite {sqlite.sqlite3_memory_used() / 2**20:.1f} MiB, python {traced / 2**20:.1f} MiB, "
            f"connections {connections[0]}, threads {threading.active_count()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    logger.remove()
    connections = [0]
    connect = sqlite3.connect

    def counting_connect(*a, **k):
        connections[0] += 1
        return connect(*a, **k)

    sqlite3.connect = counting_connect
    root = Path(tempfile.mkdtemp(prefix="syncd-heap-"))
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
    tracemalloc.start()
    done = 0
    for _ in range(args.batches):
        for _ in range(args.batch):
            name = f"j{done:06d}"
            make_job(inbox.path, name, {"command": "echo x > out.txt"})
            engine.claim(inbox, inbox.path / name)
            done += 1
        engine.run_until_idle(600)
        gc.collect()
        print(f"{done} jobs: {figures(connections)}", flush=True)
    engine.stop(10)
    print(f"site kept in {root}")


if __name__ == "__main__":
    main()
