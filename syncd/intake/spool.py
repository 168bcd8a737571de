"""Every move on disk of a job directory: claim, reject, archive. All atomic.

The spool (default ``<inbox>/.syncd``) is on the inbox's filesystem, so a claim
is a single ``rename``: only one process can win it, and the user's files move
as they are, never modified.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from syncd.config import InboxConfig
from syncd.fsutil import fsync_dir, read_regular, rename_noreplace
from syncd.intake.manifest import ERROR_JSON, ERROR_TEXT, REPORT_LIMIT, is_syncd_report
from syncd.names import fit_name
from syncd.text import visible_json


def unique_path(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``… if taken; a name too long for its suffix is cut (at a
    character boundary, marked ``~``) so that every derived name fits the filesystem's limit."""
    candidate, n = parent / name, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = parent / fit_name(name, f"-{n}", tag="")
    return candidate


TEXT_OPENING = "syncd could not accept the job '"  # how every ERROR.txt of syncd's begins


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, inbox: InboxConfig):
        self.inbox = inbox
        self.root = inbox.spool_dir
        self.claimed = self.root / "claimed"
        self.done = self.root / "done"
        self.tmp = self.root / "tmp"  # syncd's own scratch on the inbox's filesystem (journal rewrites)

    def prepare(self) -> None:
        for path in (self.inbox.path, self.claimed, self.done, self.tmp, self.inbox.failed):
            path.mkdir(parents=True, exist_ok=True)
        if os.stat(self.root).st_dev != os.stat(self.inbox.path).st_dev:
            raise SpoolError(
                f"inbox '{self.inbox.name}': spool {self.root} is not on the same filesystem as {self.inbox.path}; "
                f"a claim must be an atomic rename, so put the spool on the inbox's filesystem"
            )

    def claim(self, source: Path, job_id: str) -> Path:
        """Move ``source`` into the spool; FileNotFoundError if someone else took it first."""
        dest = self.claimed / job_id
        os.rename(source, dest)
        fsync_dir(self.claimed)
        fsync_dir(source.parent)
        return dest

    def reject(self, job_path: Path, dir_name: str, text: str, report: dict) -> Path:
        """Move a claimed job into ``failed/`` with ERROR.txt and syncd-error.json; every user file is kept.

        Our own earlier report (a folder moved back from failed/) is replaced, once proven ours by its
        content; a user's file never is: the report then goes beside it under the next free name."""
        job_id = report.get("id", "report")
        json_name, json_ours = _report_name(job_path, [ERROR_JSON, f"syncd-error-{job_id}.json"], is_syncd_report)
        pair = json_name == ERROR_JSON and json_ours  # syncd's earlier report: its ERROR.txt went with it

        def text_ours(path: Path) -> bool:
            return is_syncd_text(path) or (
                pair and path.name == ERROR_TEXT and path.is_file() and not path.is_symlink()
            )

        text_name, text_ours_now = _report_name(
            job_path, [ERROR_TEXT, "ERROR-syncd.txt", f"ERROR-syncd-{job_id}.txt"], text_ours
        )
        self._write(job_path / json_name, visible_json(report, indent=2) + "\n", replace=json_ours)
        self._write(job_path / text_name, text, replace=text_ours_now)
        dest = unique_path(self.inbox.failed, dir_name)
        self._move(job_path, dest, noreplace=True)
        return dest

    def archive(self, job_path: Path, job_id: str) -> Path:
        dest = self.done / job_id
        if job_path == dest or not job_path.exists():
            return dest
        self._move(job_path, dest)
        return dest

    def remove(self, job_path: Path) -> None:
        shutil.rmtree(job_path, ignore_errors=True)

    def _write(self, path: Path, content: str, *, replace: bool) -> None:
        """Write a report: over syncd's own earlier one (``replace``), else only where nothing is."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"report-{uuid.uuid4().hex}.tmp"  # syncd's own folder: no name in the user's is taken
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            if replace:
                os.replace(tmp, path)
            else:
                rename_noreplace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _move(source: Path, dest: Path, *, noreplace: bool = False) -> None:
        try:
            (rename_noreplace if noreplace else os.rename)(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy under a hidden name of syncd's own, then rename into place, then remove.
            staging = dest.parent / f".syncd-part-{uuid.uuid4().hex}"
            shutil.copytree(source, staging, symlinks=True)
            try:
                (rename_noreplace if noreplace else os.rename)(staging, dest)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(source)
        fsync_dir(dest.parent)


def is_syncd_text(path: Path) -> bool:
    """True when ``path`` is an ERROR.txt syncd wrote (its first words are syncd's), not a user's file."""
    try:
        return read_regular(path, REPORT_LIMIT, follow=False).startswith(TEXT_OPENING.encode())
    except OSError:
        return False


def _report_name(folder: Path, names: list[str], ours: Callable[[Path], bool]) -> tuple[str, bool]:
    """The first of ``names`` that is free or holds syncd's own report (then True: it is replaced); past the
    last, that name with -2, -3, …"""
    stem, dot, ext = names[-1].rpartition(".")
    candidates = itertools.chain(names, (f"{stem}-{n}{dot}{ext}" for n in itertools.count(2)))
    for name in candidates:
        path = folder / name
        if not os.path.lexists(path):
            return name, False
        if ours(path):
            return name, True
    raise AssertionError("unreachable")
