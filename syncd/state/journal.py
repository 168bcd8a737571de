"""The job journal: a small text file beside an in-flight job, for people who only see the share.

``<inbox>/<folder name>.status.txt`` is rewritten (atomically) on every
transition and removed once the job has finished: by then its results are in
the outbox, or its files in ``failed/`` with ERROR.txt.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from pathlib import Path

from syncd.state.store import TERMINAL, Job

SUFFIX = ".status.txt"
TMP_SUFFIX = ".syncd-journal.tmp"  # a rewrite in progress; one a crash interrupted is removed at start


def journal_path(inbox: Path, job: Job) -> Path:
    return inbox / f"{job.dir_name}{SUFFIX}"


def render(job: Job, outbox_folder: Path | None) -> str:
    since = datetime.fromtimestamp(job.updated).astimezone().isoformat(timespec="seconds")
    lines = [
        f"job:        {job.name}",
        f"id:         {job.id}",
        f"state:      {job.state}",
        f"since:      {since}",
        f"backend:    {job.backend}" + (f" (remote id {job.remote_id})" if job.remote_id else ""),
    ]
    if job.error:
        lines.append(f"message:    {job.error}")
    elif job.message:
        lines.append(f"message:    {job.message}")
    if outbox_folder is not None:
        lines.append(f"results:    {outbox_folder}")
    lines += [
        "",
        f"To cancel it, create a file named CANCEL in {job.spool_path}",
        f"or run: syncd cancel {job.id}",
        "This file disappears when the job has finished.",
    ]
    return "\n".join(lines) + "\n"


def remove_leftovers(inbox: Path) -> None:
    """Remove half-written journals of a daemon that was killed while it wrote one."""
    try:
        for path in inbox.glob(f".*{TMP_SUFFIX}"):
            path.unlink(missing_ok=True)
    except OSError:
        pass


def update(inbox: Path, job: Job, outbox_folder: Path | None) -> None:
    """Write or remove the journal of ``job``. Never raises: the journal is a courtesy, not state."""
    path = journal_path(inbox, job)
    try:
        if job.state in TERMINAL:
            path.unlink(missing_ok=True)
            return
        if not inbox.is_dir():
            return
        tmp = inbox / f".{job.dir_name}.{uuid.uuid4().hex}{TMP_SUFFIX}"
        tmp.write_text(render(job, outbox_folder), encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass
