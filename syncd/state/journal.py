"""The job journal: a small text file beside an in-flight job, for people who only see the share.

``<inbox>/<folder name>.status.txt`` is rewritten (atomically) on every transition and removed once
the job has finished: by then its results are in the outbox, or its files in ``failed/`` with
ERROR.txt. The inbox is the users' folder, so syncd proves a journal is its own before it replaces or
removes it: the file must be a regular file whose first line names this job's id
(:data:`HEADER`). A file of the user's at that path (or a folder, a link) is never written, replaced or
removed: the job simply has no journal, and the log says so once. A new journal is created with a
rename that fails rather than replace a file that appeared meanwhile. Rewrites are prepared in
syncd's own spool folder (``<inbox>/.syncd/tmp/``), never under a name in the inbox itself.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from datetime import datetime
from pathlib import Path

from syncd.fsutil import in_folder, read_regular, rename_noreplace, write_small
from syncd.names import fit_name
from syncd.state.store import TERMINAL, Job
from syncd.text import shown

SUFFIX = ".status.txt"
TMP_SUFFIX = ".syncd-journal.tmp"  # what syncd before version 16 of the issue list wrote in the inbox itself
HEADER = "# syncd status of job {id}; written by syncd and removed when the job has finished"
MAX_JOURNAL = 64 * 1024
_LEGACY_TMP = re.compile(r"^\..+\.[0-9a-f]{32}" + re.escape(TMP_SUFFIX) + "$", re.DOTALL)


def journal_path(inbox: Path, job: Job) -> Path:
    """``<inbox>/<folder name>.status.txt``, its folder name cut (with the job id) when the whole would be
    longer than a file name can be."""
    return inbox / fit_name(job.dir_name, SUFFIX, tag=job.id)


def render(job: Job, outbox_folder: Path | None, config: Path | None = None) -> str:
    since = datetime.fromtimestamp(job.updated).astimezone().isoformat(timespec="seconds")
    lines = [
        HEADER.format(id=job.id),
        f"job:        {shown(job.name)}",
        f"id:         {job.id}",
        f"state:      {job.state}",
        f"since:      {since}",
        f"backend:    {job.backend}" + (f" (remote id {shown(job.remote_id)})" if job.remote_id else ""),
    ]
    if job.error:
        lines.append(f"message:    {shown(job.error)}")
    elif job.message:
        lines.append(f"message:    {shown(job.message)}")
    if outbox_folder is not None:
        lines.append(f"results:    {shown(str(outbox_folder))}")
    lines += [
        "",
        f"To cancel it, create a file named CANCEL in {shown(job.spool_path)}",
        f"or run: syncd cancel {f'-c {shown(str(config))} ' if config else ''}{job.id}",
        "This file disappears when the job has finished.",
    ]
    return "\n".join(lines) + "\n"


def is_ours(path: Path, job: Job) -> bool:
    """Proof that ``path`` is this job's journal: a regular file (not a link) whose first line is the header
    with the job's id (or, from an older syncd, the id line and the closing line)."""
    try:
        text = read_regular(path, MAX_JOURNAL, follow=False).decode("utf-8", "replace")
    except OSError:  # missing, a folder, a link, a FIFO, too large: not a journal syncd wrote
        return False
    if text.startswith(HEADER.format(id=job.id) + "\n"):
        return True
    return f"\nid:         {job.id}\n" in text and text.endswith("This file disappears when the job has finished.\n")


def remove_leftovers(inbox: Path, tmp_dir: Path | None = None) -> None:
    """Remove half-written journals of a daemon that was killed while it wrote one: everything in syncd's
    own ``tmp_dir``, and in the inbox only files named and begun the way older versions wrote them."""
    try:
        if tmp_dir is not None and tmp_dir.is_dir():
            for path in tmp_dir.iterdir():
                if path.name.endswith(TMP_SUFFIX):
                    path.unlink(missing_ok=True)
        for path in inbox.glob(f".*{TMP_SUFFIX}"):
            if _LEGACY_TMP.match(path.name) and _begins_like_a_journal(path):
                path.unlink(missing_ok=True)
    except OSError:
        pass


def _begins_like_a_journal(path: Path) -> bool:
    try:
        return read_regular(path, MAX_JOURNAL, follow=False).startswith(b"job:")
    except OSError:
        return False


def update(inbox: Path, job: Job, outbox_folder: Path | None, tmp_dir: Path, config: Path | None = None) -> Path | None:
    """Write or remove the journal of ``job``. Never raises: the journal is a courtesy, not state.
    ``tmp_dir`` (on the inbox's filesystem, syncd's own) holds the rewrite until it is renamed into place.

    Returns the journal's path when a user's file, folder or link holds it (left alone: the caller may say
    so), else None."""
    try:
        path = journal_path(inbox, job)
    except ValueError:
        return None
    try:
        present = os.path.lexists(path)
        if present and not is_ours(path, job):
            return path
        if job.state in TERMINAL:
            if present:
                path.unlink()
            return None
        if not inbox.is_dir():
            return None
        tmp = tmp_dir / f"{uuid.uuid4().hex}{TMP_SUFFIX}"
        text = render(job, outbox_folder, config).encode()
        try:
            in_folder(tmp_dir, lambda: write_small(tmp, text, 0o644), parents=False)
            os.chmod(tmp, 0o644)  # whatever the umask: the job's user reads it
            if present:
                os.replace(tmp, path)  # over this job's own journal, just proven
            else:
                rename_noreplace(tmp, path)  # FileExistsError rather than replace a file that appeared meanwhile
        except BaseException:
            tmp.unlink(missing_ok=True)  # renamed into place, it is gone already
            raise
    except FileExistsError:
        return path
    except OSError:
        pass
    return None


def left_alone_warning(path: Path) -> str:
    """What to tell the admin about a journal path that holds a user's entry."""
    try:
        kind = "file" if stat.S_ISREG(os.lstat(path).st_mode) else "entry"
    except OSError:
        kind = "file"
    return f"{path} in the inbox is a {kind} that is not syncd's: it is left alone, and this job has no status file"
