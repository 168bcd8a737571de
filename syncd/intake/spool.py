"""Every move on disk of a job directory: claim, reject, archive. All atomic.

The spool (default ``<inbox>/.syncd``) is on the inbox's filesystem, so a claim
is a single ``rename``: only one process can win it, and the user's files move
as they are, never modified.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from pathlib import Path

from syncd.config import InboxConfig
from syncd.fsutil import fsync_dir
from syncd.intake.manifest import ERROR_JSON, ERROR_TEXT, is_syncd_report


def unique_path(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``… if taken."""
    candidate, n = parent / name, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = parent / f"{name}-{n}"
    return candidate


class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, inbox: InboxConfig):
        self.inbox = inbox
        self.root = inbox.spool_dir
        self.claimed = self.root / "claimed"
        self.done = self.root / "done"

    def prepare(self) -> None:
        for path in (self.inbox.path, self.claimed, self.done, self.inbox.failed):
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
        """Move a claimed job into ``failed/`` with ERROR.txt and syncd-error.json; every user file is kept."""
        # Our own earlier report (a folder moved back from failed/) is replaced; a user's file never is.
        ours = is_syncd_report(job_path / ERROR_JSON)
        json_name = ERROR_JSON if ours or not os.path.lexists(job_path / ERROR_JSON) \
            else f"syncd-error-{report.get('id', 'report')}.json"
        text_name = ERROR_TEXT if ours or not os.path.lexists(job_path / ERROR_TEXT) else "ERROR-syncd.txt"
        self._write(job_path / json_name, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        self._write(job_path / text_name, text)
        dest = unique_path(self.inbox.failed, dir_name)
        self._move(job_path, dest)
        return dest

    def archive(self, job_path: Path, job_id: str) -> Path:
        dest = self.done / job_id
        if job_path == dest or not job_path.exists():
            return dest
        self._move(job_path, dest)
        return dest

    def remove(self, job_path: Path) -> None:
        shutil.rmtree(job_path, ignore_errors=True)

    @staticmethod
    def _write(path: Path, content: str) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    @staticmethod
    def _move(source: Path, dest: Path) -> None:
        try:
            os.rename(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another filesystem: copy under a hidden name, then rename into place, then remove.
            staging = dest.with_name(f".{dest.name}.syncd-part")
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, symlinks=True)
            os.rename(staging, dest)
            shutil.rmtree(source)
        fsync_dir(dest.parent)
