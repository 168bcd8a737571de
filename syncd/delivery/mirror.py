"""The mirror engine, shared by every storage: bring a local folder up to date with a remote prefix.

One LIST, then for each object: skip it when the delivery index in the state
store says the local file is the one fetched for this size and ETag (no GET, no
hashing); adopt a file already in place whose MD5 matches a single-part ETag;
otherwise fetch it in parallel into ``<tmp_dir>/<pid>-<random>.part`` (on the
destination's filesystem) and rename it into place. Nothing partial is ever at a
final path; a crash leaves only ``.part`` files, removed by the next run. The
index rows of objects the LIST no longer shows are forgotten (their files stay),
so the index of a mirror that runs for months holds what the bucket holds.

Remote keys are untrusted (:func:`syncd.delivery.outbox.check_outbox_key`). Local files
are deleted only with ``delete=True``, and never inside a job's results folder
(one that holds ``syncd-result.json``). Transient failures of one object are
retried with the configured retry policy up to ``attempts`` times; what still
fails is listed in the report, and :meth:`MirrorReport.raise_for_failures` turns
it into the error the engine classifies.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from syncd.config import RetryPolicy
from syncd.delivery.index import DeliveryIndex
from syncd.errors import PermanentError, SyncdError, TransientError
from syncd.fsutil import TMP_DIR, fsync_dir, fsync_path, os_error, read_small
from syncd.log import logger
from syncd.names import RESULT_RECORD
from syncd.retry import backoff_delay
from syncd.state.store import Store
from syncd.storage.base import ObjectInfo, Storage

INDEX_BATCH = 500
#: objects up to this size go through ``storage.fetch_many`` when the storage has a better one
BATCH_MAX_SIZE = 1024 * 1024
PROGRESS_INTERVAL = 0.1  # seconds between progress reports while objects arrive
DEAD_PARTS_SWEEP = 60.0  # seconds between two looks for a dead writer's parts in one temporary folder
ProgressHook = Callable[[str, int], None]


@dataclass
class MirrorReport:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, SyncdError]] = field(default_factory=list)
    bytes: int = 0

    def raise_for_failures(self) -> None:
        """Raise the first permanent failure, else a TransientError naming the objects that failed."""
        for _, error in self.failed:
            if not isinstance(error, TransientError):
                raise error
        if self.failed:
            first_key, first = self.failed[0]
            raise TransientError(
                f"{len(self.failed)} object(s) could not be fetched, e.g. {first_key}: {first}",
                retry_after=first.retry_after if isinstance(first, TransientError) else None,
            )


@dataclass(frozen=True)
class Target:
    """One object to fetch and the local path it goes to."""

    info: ObjectInfo
    path: Path


class Mirror:
    def __init__(
        self,
        store: Store,
        retry: RetryPolicy | None = None,
        *,
        attempts: int = 4,
        fsync: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.store = store
        self.index = DeliveryIndex(store)
        self.retry = retry or RetryPolicy()
        self.attempts = attempts
        self.fsync = fsync
        self.sleep = sleep
        self._swept: dict[Path, float] = {}  # temporary folder → when its dead parts were last removed
        self._tag: tuple[int, str] | None = None  # (pid, writer tag): read from /proc once per process

    def _writer_tag(self) -> str:
        pid = os.getpid()
        if self._tag is None or self._tag[0] != pid:  # a forked child is another writer
            self._tag = (pid, _writer_tag(pid))
        return self._tag[1]

    def _sweep(self, tmp_dir: Path) -> None:
        """Remove the parts of writers that died (a crash, a kill -9), once per DEAD_PARTS_SWEEP and folder:
        a living writer's parts are never removed, and a daemon's runs (one per job's collect) would otherwise
        read the folder, and each writer's /proc entry, every time."""
        now = time.monotonic()
        if now - self._swept.get(tmp_dir, -DEAD_PARTS_SWEEP) < DEAD_PARTS_SWEEP:
            return
        self._swept[tmp_dir] = now
        if tmp_dir.is_dir():  # even if nothing is left to fetch
            remove_dead_parts(tmp_dir)

    def run(
        self,
        storage: Storage,
        bucket: str,
        prefix: str,
        dest: Path,
        *,
        tmp_dir: Path,
        strip: str = "",
        exclude: Iterable[str] = (),
        delete: bool = False,
        check_key: Callable[[str], str | None],
        on_plan: Callable[[int, int], None] | None = None,
        on_done: ProgressHook | None = None,
    ) -> MirrorReport:
        """Mirror ``bucket/prefix`` into ``dest``; object ``strip + rel`` goes to ``dest/rel``. Idempotent."""
        report = MirrorReport()
        self._sweep(tmp_dir)
        excluded = set(exclude)
        index_prefix = f"{dest}{os.sep}"
        index = self.index.under(_index_prefix(dest, prefix, strip))
        seen_folded: dict[str, str] = {}
        remote_rel: set[str] = set()
        todo: list[Target] = []
        adopt: list[tuple[str, int, str, int]] = []
        # A folder that holds nothing: no file in it needs a look (saves a stat per object on a first mirror).
        # Only the folder this run writes into is read: the outbox's own can hold a folder per job ever run.
        targets = _target_folder(dest, prefix, strip)
        empty = _holds_nothing(targets, besides=TMP_DIR if targets == dest else None)
        for obj in storage.list(bucket, prefix):
            rel = obj.key[len(strip) :] if obj.key.startswith(strip) else obj.key
            if obj.key in excluded or not rel.rstrip("/"):
                index.pop(str(dest / rel), None)
                continue
            problem = check_key(rel)
            folded = rel.casefold()
            if problem is None and folded in seen_folded and seen_folded[folded] != rel:
                problem = (
                    f"differs only by letter case from '{strip}{seen_folded[folded]}' (SMB shares can't hold both)"
                )
            if problem:
                logger.error("refused remote object {}/{}: {}", bucket, obj.key, problem)
                report.refused.append((obj.key, problem))
                index.pop(str(dest / rel), None)
                continue
            seen_folded[folded] = rel
            remote_rel.add(rel.rstrip("/"))
            path = dest / rel
            if rel.endswith("/"):
                self._make_dir(path, bucket, obj.key, report)
                continue
            known = index.pop(str(path), None)
            try:
                st = None if empty else path.stat()
            except FileNotFoundError:
                st = None
            except OSError as exc:
                report.failed.append((obj.key, os_error(exc, f"reading {path}")))
                continue
            if (
                st is not None
                and known is not None
                and known[:2] == (obj.size, obj.etag)
                and (st.st_size, st.st_mtime_ns) == (obj.size, known[2])
            ):
                report.skipped.append(obj.key)
                continue
            if st is not None and st.st_size == obj.size and storage.same_content(obj, path):
                adopt.append((str(path), obj.size, obj.etag, st.st_mtime_ns))
                report.skipped.append(obj.key)
                continue
            todo.append(Target(obj, path))
        if index:  # what is left was delivered for objects the bucket no longer lists
            self.index.forget(index)
            logger.debug(
                "forgot {} delivery record(s) under {} of objects no longer in {}/{}; the files stay",
                len(index),
                dest,
                bucket,
                prefix,
            )
        self.index.record_many(adopt)
        if on_plan is not None:
            on_plan(len(todo), sum(t.info.size for t in todo))
        if todo:
            self._fetch_all(storage, bucket, todo, tmp_dir, report, on_done)
        if delete:
            self._delete_extra(dest, remote_rel, report, index_prefix)
        return report

    # -- fetching ---------------------------------------------------------------------------
    def _fetch_all(
        self,
        storage: Storage,
        bucket: str,
        todo: list[Target],
        tmp_dir: Path,
        report: MirrorReport,
        on_done: ProgressHook | None,
    ) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, int, str, int]] = []
        dirs: set[str] = set()
        made: set[str] = set()  # folders this run created or found: no mkdir per file
        names = _TmpNames(tmp_dir, self._writer_tag())

        def delivered(target: Target, row: tuple[str, int, str, int]) -> None:
            rows.append(row)
            dirs.add(os.path.dirname(row[0]))
            report.fetched.append(target.info.key)
            report.bytes += target.info.size
            if on_done is not None:
                on_done(target.info.key, target.info.size)
            if len(rows) >= INDEX_BATCH:
                self._record(rows, dirs)

        if storage.batch_fetch:
            small: list[Target] = []
            large: list[Target] = []
            for target in todo:
                (small if 0 < target.info.size <= BATCH_MAX_SIZE else large).append(target)
            if small:
                todo = self._fetch_batch(storage, bucket, small, names, made, report, delivered) + large
                if not todo:
                    self._record(rows, dirs)
                    return

        def handle(target: Target, row: tuple | None, error: BaseException | None) -> BaseException | None:
            """Account for one outcome; return an error that is not syncd's own, to be raised."""
            if error is None and row is not None:
                delivered(target, row)
            elif isinstance(error, SyncdError):
                report.failed.append((target.info.key, error))
            else:
                return error
            return None

        threads = storage.transfer_threads(len(todo), sum(target.info.size for target in todo))
        if threads <= 1:  # one at a time: no thread to start and switch to
            failure: BaseException | None = None
            for target in todo:
                try:
                    row = self._fetch_one(storage, bucket, target, names, made)
                except Exception as exc:  # as from a worker: the others are still fetched, then it is raised
                    other = handle(target, None, exc)
                    failure = failure or other
                    continue
                except BaseException:
                    self._record(rows, dirs)
                    raise
                handle(target, row, None)
            self._record(rows, dirs)
            if failure is not None:
                raise failure
            return
        # Workers take targets from one list and leave outcomes in another; this thread wakes for a
        # batch or every PROGRESS_INTERVAL, not once per object (a future and a thread switch each).
        pending = iter(todo)
        take = threading.Lock()
        outcomes: list[tuple[Target, tuple | None, BaseException | None]] = []
        arrived = threading.Condition()
        ended = [0]  # targets the workers are done with (under ``arrived``)
        # Workers wait for all to be started: Thread.start() waits until the new thread runs, and with
        # the first workers already busy, each start cost up to a GIL switch interval (5 ms).
        go = threading.Event()
        stop = threading.Event()  # set when this thread gives up: workers finish what they hold

        def work() -> None:
            go.wait()
            while not stop.is_set():
                with take:
                    target = next(pending, None)
                if target is None:
                    return
                outcome: tuple[Target, tuple | None, BaseException | None]
                try:
                    outcome = (target, self._fetch_one(storage, bucket, target, names, made), None)
                except BaseException as exc:  # handed to the main thread: SyncdError is reported, others raised
                    outcome = (target, None, exc)
                with arrived:
                    outcomes.append(outcome)
                    ended[0] += 1
                    if len(outcomes) >= INDEX_BATCH or ended[0] == len(todo):
                        arrived.notify()

        workers = [threading.Thread(target=work, name=f"syncd-mirror-{n}") for n in range(threads)]
        for worker in workers:
            worker.start()
        go.set()
        unexpected: BaseException | None = None
        handled = 0
        try:
            while handled < len(todo):
                with arrived:
                    if not outcomes:
                        arrived.wait(PROGRESS_INTERVAL)
                    batch, outcomes[:] = list(outcomes), []
                handled += len(batch)
                for target, fetched, error in batch:
                    other = handle(target, fetched, error)
                    unexpected = unexpected or other
        finally:  # never return (or raise) while a worker may still write into the destination
            stop.set()
            for worker in workers:
                worker.join()
        if unexpected is not None:
            self._record(rows, dirs)
            raise unexpected
        self._record(rows, dirs)
        # The temporary folder stays: removing it while empty would race a concurrent writer that has
        # just created it (another job's collect, a result record being written).

    def _fetch_batch(
        self,
        storage: Storage,
        bucket: str,
        targets: list[Target],
        names: _TmpNames,
        made: set[str],
        report: MirrorReport,
        delivered: Callable[[Target, tuple[str, int, str, int]], None],
    ) -> list[Target]:
        """Fetch small objects with ``storage.fetch_many`` in this thread; return those to fetch one by one.

        One attempt each: whatever fails here (a reset, a changed object, an error answer) goes
        back to :meth:`_fetch_one`, which reports, classifies and retries it.
        """
        pending = {names.next(): target for target in targets}  # outcome not yet seen
        again: list[Target] = []
        try:
            for _, tmp, outcome in storage.fetch_many(bucket, [(t.info, tmp) for tmp, t in pending.items()]):
                target = pending.pop(tmp)
                what = f"{storage.name}:{bucket}/{target.info.key}"
                if isinstance(outcome, BaseException):
                    tmp.unlink(missing_ok=True)
                    logger.debug("fetching {} with others failed ({}); fetching it alone", what, outcome)
                    again.append(target)
                    continue
                try:
                    row = self._place(tmp, target, what, made)
                except PermanentError as exc:
                    report.failed.append((target.info.key, exc))
                except OSError as exc:
                    report.failed.append((target.info.key, os_error(exc, f"writing {target.path} (from {what})")))
                else:
                    delivered(target, row)
                    continue
                tmp.unlink(missing_ok=True)
        except SyncdError as exc:  # no connection at all: the one-by-one path retries and reports
            logger.debug(
                "fetching {} objects of {}:{} together failed ({}); fetching them one by one",
                len(pending),
                storage.name,
                bucket,
                exc,
            )
        finally:
            for tmp in pending:  # a batch that ended early may have begun some of these
                tmp.unlink(missing_ok=True)
        # Failed, and never answered (the batch ended early): one by one.
        return again + list(pending.values())

    def _record(self, rows: list, dirs: set[str]) -> None:
        """Make the renames durable, then remember them (one transaction for the batch)."""
        if self.fsync:
            for directory in dirs:
                fsync_dir(directory, missing_ok=True)
        dirs.clear()
        self.index.record_many(rows)
        rows.clear()

    def _fetch_one(
        self, storage: Storage, bucket: str, target: Target, names: _TmpNames, made: set[str]
    ) -> tuple[str, int, str, int]:
        what = f"{storage.name}:{bucket}/{target.info.key}"
        for attempt in range(1, self.attempts + 1):
            tmp = names.next()
            placed = False
            try:
                if target.info.size == 0 and storage.remote_service:
                    tmp.touch()  # nothing to fetch: an empty object's content is known
                else:
                    storage.fetch(bucket, target.info.key, tmp, target.info)
                row = self._place(tmp, target, what, made)
                placed = True
                return row
            except TransientError as exc:
                if attempt == self.attempts:
                    raise
                delay = backoff_delay(self.retry, attempt, exc.retry_after)
                logger.warning("fetching {} failed ({}); retry {} in {:.1f}s", what, exc, attempt, delay)
                self.sleep(delay)
            except OSError as exc:
                raise os_error(exc, f"writing {target.path} (from {what})") from exc
            finally:
                if not placed:
                    tmp.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _place(self, tmp: Path, target: Target, what: str, made: set[str]) -> tuple[str, int, str, int]:
        dest = str(target.path)
        parent = os.path.dirname(dest)
        try:
            if self.fsync:
                fsync_path(tmp)
            os.chmod(tmp, 0o644)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            try:
                os.replace(tmp, dest)  # over a folder: EISDIR, never a merge
            except FileNotFoundError:
                if not os.path.exists(tmp):
                    raise
                os.makedirs(parent, exist_ok=True)  # the folder went away since this run made it
                os.replace(tmp, dest)
            if os.path.lexists(tmp):  # dest was already a link to the same inode: rename() left both names
                os.unlink(tmp)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise PermanentError(f"outbox {dest}: a file and a folder would share this path ({what})") from exc
        return (dest, target.info.size, target.info.etag, os.stat(dest).st_mtime_ns)

    def _make_dir(self, path: Path, bucket: str, key: str, report: MirrorReport) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            report.failed.append(
                (key, PermanentError(f"outbox {path}: a file and a folder would share this path ({bucket}/{key})"))
            )
        except OSError as exc:
            report.failed.append((key, os_error(exc, f"creating {path}")))

    # -- deleting -----------------------------------------------------------------------------
    def _delete_extra(self, dest: Path, remote_rel: set[str], report: MirrorReport, index_prefix: str) -> None:
        """Remove local files the remote no longer has, except in job results folders and temp folders."""
        gone: list[str] = []
        for dirpath, dirnames, filenames in os.walk(dest):
            here = Path(dirpath)
            if RESULT_RECORD in filenames:
                dirnames[:] = []  # a job's delivered results are never removed
                continue
            dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            for name in filenames:
                path = here / name
                rel = path.relative_to(dest).as_posix()
                if rel in remote_rel:
                    continue
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    report.failed.append((rel, os_error(exc, f"deleting {path}")))
                    continue
                gone.append(str(path))
                report.deleted.append(rel)
        if gone:
            self.index.forget(p for p in gone if p.startswith(index_prefix))


def _holds_nothing(folder: Path, *, besides: str | None = TMP_DIR) -> bool:
    """Whether ``folder`` is missing or holds nothing (but an entry named ``besides``: the temporary folder)."""
    try:
        with os.scandir(folder) as entries:
            return all(entry.name == besides for entry in entries)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not a folder, unreadable: look at each file, which reports the problem


def _narrowed(prefix: str, strip: str) -> str:
    """What every path a run writes starts with below its destination (``rel`` of each object listed), or
    "" when that can be any path: some keys keep their full name, or the prefix is all stripped."""
    if not prefix.startswith(strip):
        return ""
    narrowed = prefix[len(strip) :]
    return narrowed if narrowed.strip("/") else ""


def _target_folder(dest: Path, prefix: str, strip: str) -> Path:
    """The deepest folder that holds every path this run can write (``dest / rel`` for each object listed)."""
    narrowed = _narrowed(prefix, strip)
    if not narrowed:
        return dest
    under = dest / narrowed
    return under if narrowed.endswith("/") else under.parent  # "job1" starts job10's keys too


def _index_prefix(dest: Path, prefix: str, strip: str) -> str:
    """The start of the outbox paths this run can write: only their delivery index rows are read (reading the
    whole destination's would cost memory and time in proportion to every job ever delivered there)."""
    narrowed = _narrowed(prefix, strip)
    if not narrowed:
        return f"{dest}{os.sep}"
    # Path() drops a trailing "/" and collapses "//": what is left still starts every path dest / rel.
    # A prefix that ends a folder ("job1/") keeps its separator, so job10's rows are not job1's.
    return str(dest / narrowed) + (os.sep if narrowed.endswith("/") else "")


class _TmpNames:
    """``<tmp_dir>/<writer>-<random>-<n>.part``: unique without a random draw per file; the writer tag
    comes first so :func:`remove_dead_parts` can tell a dead writer's leftovers."""

    def __init__(self, tmp_dir: Path, writer: str):
        self._stem = f"{tmp_dir}{os.sep}{writer}-{uuid.uuid4().hex[:12]}-"
        self._numbers = itertools.count()

    def next(self) -> Path:
        return Path(f"{self._stem}{next(self._numbers)}.part")  # count() hands out each number once, across threads


def remove_dead_parts(tmp_dir: Path) -> None:
    """Remove ``.part`` files whose writing process is gone (a crash or kill -9)."""
    for part in tmp_dir.glob("*.part"):
        if _writer_gone(part.name.split("-", 1)[0]):
            part.unlink(missing_ok=True)


def _writer_tag(pid: int) -> str:
    """``<pid>.<start time>`` where the system tells start times (Linux), else ``<pid>``.

    A daemon runs for months and pids wrap (32,768 by default): a dead writer's pid may belong to
    another process by the time its leftovers are found. With the start time, that no longer matches.
    """
    stat = _proc_stat(pid)
    return f"{pid}.{stat[1]}" if stat else str(pid)


def _writer_gone(tag: str) -> bool:
    pid, _, started = tag.partition(".")
    if not pid.isdigit():
        return False  # not a name syncd gives: leave it
    if started:
        stat = _proc_stat(int(pid))
        if stat is not None:
            return stat[0] == "Z" or stat[1] != started
        # Gone, or hidden from us (/proc mounted with hidepid): the kernel tells which.
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """A process's state letter and start time (clock ticks after boot), from ``/proc``; None if unreadable."""
    try:
        stat = read_small(f"/proc/{pid}/stat")
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return (fields[0].decode(), fields[19].decode()) if len(fields) >= 20 else None
