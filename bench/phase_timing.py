"""CPU time per engine step, measured inside a running daemon (for ``bench/load.py --phases``).

Not part of syncd: the bench starts the daemon with ``bench/phases`` on PYTHONPATH, whose
``sitecustomize`` calls :func:`install`. Each listed method is wrapped to add the calling thread's CPU
time (``time.thread_time``: user and system, not waiting) to a table, written as JSON to
``$SYNCD_BENCH_PHASES.<pid>`` every second (the daemon leaves with ``os._exit``, so no atexit hook).

Times are inclusive (``Engine.advance`` contains ``Collection._collect``); the wrapping adds a few
microseconds per call, so compare tables with each other, not with the plain run's total.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

#: module → class (or "" for module functions) → names
WRAPPED: dict[str, dict[str, tuple[str, ...]]] = {
    "syncd.engine.core": {"Engine": ("pump", "advance")},
    "syncd.engine.intake": {"Intake": ("claim", "_validate", "_complete_claims")},
    "syncd.engine.submission": {"Submission": ("_stage", "_preflight", "_start_submit", "_submit")},
    "syncd.engine.collection": {"Collection": ("_collect", "_complete", "finish")},
    "syncd.engine.polling": {"Polling": ("poll_backend", "_apply")},
    "syncd.engine.base": {"EngineBase": ("write_journals", "update_journal", "spec", "_load", "_reserve_folder")},
    "syncd.state.store": {
        "Store": ("transition", "update", "get", "create_job", "due", "count", "jobs", "unfinished_ids")
    },
    # calls of write: the store's writes; of _wait_for: writes whose commit another writer made
    "syncd.state.commits": {"GroupCommit": ("write", "_wait_for")},
    "syncd.intake.watch": {"InboxWatcher": ("check",)},
    "syncd.intake.spool": {"Spool": ("claim", "archive")},
    "syncd.delivery.outbox": {"Outbox": ("mirror", "put_file")},
    "syncd.delivery.mirror": {"Mirror": ("_fetch_one", "_record")},
    "syncd.delivery.index": {"DeliveryIndex": ("record_many",)},
    "syncd.storage.file": {"FileStorage": ("put_file",)},
    "syncd.backends.local": {"LocalBackend": ("stage", "submit", "poll", "outputs", "cleanup")},
    "syncd.backends.workdir": {"WorkFolder": ("stage", "remove")},
}


class PhaseTable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, list[float]] = {}  # label → [calls, cpu seconds]

    def timed(self, func: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return func(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self.lock:
                    row = self.rows.setdefault(label, [0, 0.0])
                    row[0] += 1
                    row[1] += spent

        return wrapper

    def write(self, path: str) -> None:
        with self.lock:
            rows = {label: {"calls": int(n), "cpu_ms": round(s * 1000, 1)} for label, (n, s) in self.rows.items()}
        if rows:
            with open(f"{path}.tmp", "w") as out:
                json.dump(rows, out, indent=1, sort_keys=True)
            os.replace(f"{path}.tmp", path)


def install(path: str) -> PhaseTable:
    table = PhaseTable()
    for module_name, classes in WRAPPED.items():
        module = importlib.import_module(module_name)
        for class_name, names in classes.items():
            owner = getattr(module, class_name)
            for name in names:
                if type(owner.__dict__.get(name)).__name__ != "function":
                    raise SystemExit(f"phase timing: {class_name}.{name} is not a plain method of {module_name}")
                setattr(owner, name, table.timed(owner.__dict__[name], f"{class_name}.{name}"))
    target = f"{path}.{os.getpid()}"

    def keep_writing() -> None:
        while True:
            time.sleep(1.0)
            table.write(target)

    threading.Thread(target=keep_writing, name="bench-phases", daemon=True).start()
    return table
