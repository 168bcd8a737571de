"""Concurrent collects share ``outbox/.syncd-tmp``: none of them may fail because another one tidied it.

Found by the 5,000-job load benchmark (BENCHMARKS.md): ~4 % of the jobs were held with
"No such file or directory" / "the object does not exist" while collecting. Real Outbox, real file
storage, real state store, real threads; only the daemon around them is left out so the race is
exercised hundreds of times in a second.
"""

from __future__ import annotations

import threading
from pathlib import Path

from syncd.delivery.outbox import Outbox
from syncd.state.store import Store
from syncd.storage.file import FileStorage, FileStorageOptions


def test_outbox_mirror_of_many_jobs_at_once_never_fails_on_the_shared_tmp_folder(tmp_path: Path):
    root = tmp_path / "buckets"
    storage = FileStorage("local", FileStorageOptions(type="file", root=root))
    storage.ensure_bucket("results")
    source = tmp_path / "payload.txt"
    source.write_text("x\n")
    jobs = [f"job{i:03d}" for i in range(200)]
    for job in jobs:
        for name in ("out.txt", "syncd-stdout.txt", "syncd-stderr.txt"):
            storage.put_file("results", f"{job}/{name}", source)
    store = Store(tmp_path / "state" / "syncd.db")
    outbox = Outbox(tmp_path / "outbox", store)
    outbox.prepare()
    errors: list[str] = []
    lock = threading.Lock()
    pending = list(jobs)

    def worker() -> None:  # like the engine's 4 step workers, each collecting one job after another
        while True:
            with lock:
                if not pending:
                    return
                job = pending.pop()
            try:
                outbox.mirror(storage, "results", f"{job}/")
                outbox.put_file("results", f"{job}/syncd-result.json", source)
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(f"{job}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"{len(errors)} of {len(jobs)} collects failed, e.g. {errors[:3]}"
    for job in jobs:
        assert (tmp_path / "outbox" / "results" / job / "out.txt").read_text() == "x\n"
        assert (tmp_path / "outbox" / "results" / job / "syncd-result.json").exists()
