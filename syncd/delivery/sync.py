"""``syncd sync SRC DEST``: one-shot transfers between a storage prefix and a local folder.

Remote locations are written ``STORAGE:BUCKET[/PREFIX]``, STORAGE being a section
under ``storages:`` of the config. Remote → local is the mirror engine
(:mod:`syncd.delivery.mirror`); local → remote uploads files that are missing or differ,
remembering what it uploaded in the same delivery index, so an unchanged re-run
sends one LIST and nothing else.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from syncd.config import Config, RetryPolicy
from syncd.delivery.index import DeliveryIndex
from syncd.delivery.mirror import MirrorReport, ProgressHook
from syncd.delivery.outbox import check_outbox_key
from syncd.errors import SyncdError, TransientError
from syncd.fsutil import TMP_DIR, file_kind, os_error
from syncd.log import logger
from syncd.retry import backoff_delay
from syncd.state.store import Store
from syncd.storage.base import ObjectInfo, Storage, check_key


@dataclass(frozen=True)
class RemoteSpec:
    storage: str
    bucket: str
    prefix: str  # "" or ending in "/"


def parse_remote(text: str, config: Config) -> RemoteSpec | None:
    """``STORAGE:BUCKET[/PREFIX]`` when STORAGE names a configured storage, else None (a local path)."""
    name, sep, rest = text.partition(":")
    if not sep or name not in config.storages:
        return None
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"'{text}' names no bucket; write {name}:BUCKET[/PREFIX]")
    prefix = prefix.strip("/")
    if prefix:
        check_key(prefix)
    return RemoteSpec(name, bucket, f"{prefix}/" if prefix else "")


def upload_index_key(storage: Storage, bucket: str, key: str) -> str:
    return f"upload:{storage.name}:{bucket}/{key}"


def upload(
    storage: Storage,
    store: Store,
    source: Path,
    bucket: str,
    prefix: str,
    *,
    retry: RetryPolicy,
    attempts: int = 4,
    on_plan: Callable[[int, int], None] | None = None,
    on_done: ProgressHook | None = None,
) -> MirrorReport:
    """Upload every file under ``source`` missing from, or different in, ``bucket/prefix``. Idempotent."""
    from concurrent.futures import (  # only uploads need it: see S3Storage
        ThreadPoolExecutor,
        as_completed,
    )

    report = MirrorReport()
    remote = {info.key: info for info in storage.list(bucket, prefix)}
    index = DeliveryIndex(store).under(upload_index_key(storage, bucket, prefix))
    todo: list[tuple[Path, str, os.stat_result]] = []
    adopt = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d != TMP_DIR)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            key = prefix + path.relative_to(source).as_posix()
            try:
                st = path.stat()
            except OSError as exc:  # a link that points nowhere, a file gone since the listing
                report.failed.append((key, os_error(exc, f"reading {path}")))
                continue
            problem = check_outbox_key(key[len(prefix) :])
            if problem is None and not stat.S_ISREG(st.st_mode):  # never opened: a FIFO blocks, a device never ends
                problem = f"is {file_kind(st.st_mode)}, not a regular file; only regular files are uploaded"
            if problem:
                report.refused.append((key, problem))
                continue
            have, known = remote.get(key), index.get(upload_index_key(storage, bucket, key))
            if have is not None and known is not None and known == (st.st_size, have.etag, st.st_mtime_ns):
                report.skipped.append(key)
            elif have is not None and have.size == st.st_size and (st.st_size == 0 or storage.same_content(have, path)):
                adopt.append((upload_index_key(storage, bucket, key), st.st_size, have.etag, st.st_mtime_ns))
                report.skipped.append(key)
            else:
                todo.append((path, key, st))
    DeliveryIndex(store).record_many(adopt)
    if on_plan is not None:
        on_plan(len(todo), sum(st.st_size for _, _, st in todo))

    def put(path: Path, key: str) -> ObjectInfo:
        for attempt in range(1, attempts + 1):
            try:
                return storage.put_file(bucket, key, path)
            except TransientError as exc:
                if attempt == attempts:
                    raise
                delay = backoff_delay(retry, attempt, exc.retry_after)
                logger.warning("uploading {} failed ({}); retry {} in {:.1f}s", path, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def outcome(path: Path, key: str, st: os.stat_result, result: Callable[[], ObjectInfo]) -> None:
        try:
            info = result()
        except SyncdError as exc:
            report.failed.append((key, exc))
            return
        rows.append((upload_index_key(storage, bucket, key), st.st_size, info.etag, st.st_mtime_ns))
        report.fetched.append(key)
        report.bytes += st.st_size
        if on_done is not None:
            on_done(key, st.st_size)

    rows: list[tuple[str, int, str, int]] = []
    workers = storage.transfer_threads(len(todo), sum(st.st_size for _, _, st in todo))
    if workers <= 1:  # a thread of its own would only add a start and a switch per file
        for path, key, st in todo:
            outcome(path, key, st, partial(put, path, key))
    else:
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(put, path, key): (path, key, st) for path, key, st in todo}
            for future in as_completed(futures):
                outcome(*futures[future], future.result)
    DeliveryIndex(store).record_many(rows)
    return report
