"""Delivering what a job left: outputs and logs to the bucket, mirrored into the outbox, the
result record last; and the reports a person reads (ERROR.txt for a rejection, the dry-run report).

Every function here is idempotent: re-running it after a crash gives the same outbox.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncd import __version__
from syncd.backends.base import JobLogs, JobSpec, OutputFile
from syncd.config import InboxConfig
from syncd.delivery.outbox import Outbox
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import read_regular, write_small
from syncd.intake.manifest import JobDirectory
from syncd.intake.spool import Spool
from syncd.names import (
    ERROR_JSON,
    RESULT_RECORD,
    STDERR_NAME,
    STDOUT_NAME,
    check_output_path,
    job_key_check,
    reserved,
)
from syncd.state.store import FAILED, REJECTED, SUCCEEDED, VALIDATED, Job
from syncd.storage.base import Storage
from syncd.text import shown, visible_json

RECORD_LIMIT = 16 * 1024 * 1024  # a result record or report syncd reads back is never larger


def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def record_matches(path: Path, job: Job) -> bool:
    """True when ``path`` already holds this attempt's result record (a crash came after writing it)."""
    try:
        data = json.loads(read_regular(path, RECORD_LIMIT, follow=False))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("id") == job.id and data.get("attempts") == job.attempts


def deliver(
    job: Job,
    *,
    inbox: InboxConfig,
    folder: str,
    storage: Storage,
    outbox: Outbox,
    outputs: list[OutputFile],
    logs: JobLogs | None,
    reports: dict[str, str],
    tmp_dir: Path,
    on_settled: Callable[[str | None, str | None], None] | None = None,
    on_progress: Callable[[int, int, int, int], None] | None = None,
) -> tuple[dict[str, Any], int]:
    """Put outputs, logs and reports into ``<bucket>/<folder>/``, mirror it, write the record last.

    A file that cannot be delivered (a name the outbox's rules refuse) is listed under ``refused`` and
    makes the job's outcome no plain success (:func:`settled_outcome`); ``on_settled(outcome, message)``
    records that before the record is written. ``outputs`` of the record are exactly the files in the
    folder; every path of the record is relative to the folder, written one way. ``on_progress(files done,
    files, bytes done, bytes)`` is called after each output is put (for the status page).

    Returns the result record and the bytes mirrored into the outbox.
    """
    record_key = f"{folder}/{RESULT_RECORD}"
    storage.ensure_bucket(job.bucket)
    delivered: list[dict[str, Any]] = []
    refused: dict[str, str] = {}  # path → reason
    seen_folded: dict[str, str] = {}
    tmp_dir.mkdir(parents=True, exist_ok=True)
    total_bytes, done_files, done_bytes = sum(item.size for item in outputs), 0, 0
    # Scratch files of this job's collect step (one at a time per job; a crash's are cleared at start).
    scratch = {name: tmp_dir / f"{job.id}.{name}" for name in ("empty", RESULT_RECORD, *reports)}
    written: list[Path] = []  # the scratch files this call made, removed at its end
    try:
        for item in outputs:
            if on_progress is not None:
                on_progress(done_files, len(outputs), done_bytes, total_bytes)
            done_files, done_bytes = done_files + 1, done_bytes + item.size
            shown = os.fsencode(item.relpath).decode("utf-8", "backslashreplace")
            if problem := output_problem(item.relpath, shown, seen_folded):
                refused.setdefault(shown, problem)
                continue
            seen_folded[item.relpath.casefold()] = item.relpath
            if item.remote is not None:
                place_remote(storage, job.bucket, f"{folder}/{item.relpath}", item)
            elif item.source is not None:
                storage.put_file(job.bucket, f"{folder}/{item.relpath}", item.source)
            else:
                raise PermanentError(
                    f"job {job.name}: the backend reported output {item.relpath} with neither a "
                    f"local file nor an object; this is a bug in backend {job.backend}"
                )
            delivered.append({"path": item.relpath, "size": item.size})
        for name, log in ((STDOUT_NAME, logs.stdout if logs else None), (STDERR_NAME, logs.stderr if logs else None)):
            if log is None:
                log = scratch["empty"]
                written.append(log)
                write_small(log, b"")
            storage.put_file(job.bucket, f"{folder}/{name}", log)
        for name, text in reports.items():
            written.append(scratch[name])
            write_small(scratch[name], text.encode())
            storage.put_file(job.bucket, f"{folder}/{name}", scratch[name])
        mirrored = outbox.mirror(
            storage, job.bucket, folder + "/", exclude={record_key}, check_key=job_key_check(folder)
        )
        top = folder + "/"
        for key, why in mirrored.refused:  # objects a service left beside the outputs, under refused names
            refused.setdefault(key[len(top) :] if key.startswith(top) else key, why)
        delivered = [entry for entry in delivered if entry["path"] not in refused]
        outcome, message = settled_outcome(job, refused)
        if on_settled is not None and (outcome, message) != (job.outcome, job.message):
            on_settled(outcome, message)
        job = replace(job, outcome=outcome, message=message)
        record = result_record(
            job, inbox, folder, delivered, [{"path": path, "reason": why} for path, why in refused.items()]
        )
        record_file = scratch[RESULT_RECORD]
        written.append(record_file)
        write_small(record_file, (visible_json(record, indent=2) + "\n").encode())
        storage.put_file(job.bucket, record_key, record_file)
        outbox.put_file(job.bucket, record_key, record_file)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    return record, mirrored.bytes


def output_problem(relpath: str, shown: str, seen_folded: dict[str, str]) -> str | None:
    """Why one output can't go into the results folder (the outbox's rules, the same as at claim time)."""
    if any(reserved(part) for part in relpath.split("/")):
        return "name is reserved for syncd's own files (at any depth, in any letter case)"
    if shown != relpath:
        return "the name is not valid UTF-8; object keys must be"
    if problem := check_output_path(relpath):
        return problem
    other = seen_folded.get(relpath.casefold())
    if other is not None:
        return f"differs only by letter case from '{other}' (SMB shares can't hold both)"
    return None


NOT_DELIVERED = "could not be delivered"


def settled_outcome(job: Job, refused: dict[str, str]) -> tuple[str | None, str | None]:
    """The outcome and message once delivery is known: a job whose files were refused is no plain success
    (a command that succeeded makes the job ``failed``, with the files named in the message). Idempotent."""
    if not refused or job.outcome in (None, VALIDATED):
        return job.outcome, job.message
    names = ", ".join(repr(path) for path in list(refused)[:5]) + (", …" if len(refused) > 5 else "")
    note = (
        f"{len(refused)} file(s) {NOT_DELIVERED} (names the outbox refuses; see 'refused' in "
        f"{RESULT_RECORD}): {names}; rename them in the job and run it again"
    )
    if job.message and note in job.message:
        return job.outcome, job.message
    if job.outcome == SUCCEEDED:
        return FAILED, f"the command succeeded, but {note}"
    return job.outcome, f"{job.message}; {note}" if job.message else note


def place_remote(storage: Storage, bucket: str, key: str, item: OutputFile) -> None:
    """Put an output that already sits in the storage at ``bucket/key``: copied server-side, or only checked
    when the service wrote it there itself. Either way its size (and MD5, where both sides know it) must match
    what the backend reported."""
    assert item.remote is not None
    source = item.remote
    if (source.bucket, source.key) == (bucket, key):
        info = storage.head(bucket, key)
        if info is None:
            raise TransientError(
                f"output {item.relpath}: the service reported it at {bucket}/{key}, but it is not there (yet)"
            )
    else:
        info = storage.copy(source.bucket, source.key, bucket, key)
    if info.size != item.size:
        raise TransientError(
            f"output {item.relpath}: {bucket}/{key} holds {info.size} bytes, the service reported "
            f"{item.size}; trying again"
        )
    stored_md5 = info.etag.strip('"')
    if (
        source.md5
        and len(stored_md5) == 32
        and all(c in "0123456789abcdef" for c in stored_md5)
        and stored_md5 != source.md5
    ):
        raise TransientError(
            f"output {item.relpath}: {bucket}/{key} has MD5 {stored_md5}, the service reported "
            f"{source.md5}; trying again"
        )


def result_record(job: Job, inbox: InboxConfig, folder: str, outputs: list, refused: list) -> dict[str, Any]:
    base = f"{inbox.prefix}/{job.name}" if inbox.prefix else job.name
    record = {
        "state": job.outcome,
        "exit_code": job.exit_code,
        "message": job.message,
        "job": job.name,
        "id": job.id,
        "directory": job.dir_name,
        "inbox": job.inbox,
        "backend": job.backend,
        "remote_id": job.remote_id,
        "remote_state": job.remote_state,
        "submit_key": job.submit_key if job.remote_id else None,
        "attempts": job.attempts,
        "bucket": job.bucket,
        "folder": folder,
        "created": iso(job.created),
        "submitted": iso(job.submitted_at),
        "started": iso(job.started_at),
        "ended": iso(job.ended_at),
        "outputs": outputs,
        "refused": refused,
        "syncd_version": __version__,
        "host": socket.gethostname(),  # the daemon's host that delivered the results
    }
    if job.adopted_from:  # another daemon of a shared inbox started the job; this one finished it
        record["adopted_from"] = job.adopted_from
    if folder != base:
        record["note"] = (
            f"an earlier job named '{job.name}' already has results in '{base}/'; this job's results are in '{folder}/'"
        )
    return record


def validation_report(job: Job, directory: JobDirectory, spec: JobSpec) -> str:
    lines = [
        f"Dry run of job '{shown(job.name)}' (id {job.id}): valid. Nothing was run.",
        "",
        f"backend:  {job.backend}",
        f"command:  {spec.command!r}",
        f"results would go to: {job.bucket}/{job.folder}/",
        "",
        f"{len(directory.inputs)} input file(s):",
    ]
    lines += [f"  {shown(item.relpath)}  ({item.size} bytes)" for item in directory.inputs]
    lines += ["", "Remove 'dry_run: true' from job.yaml and drop the folder again to run it."]
    return "\n".join(lines) + "\n"


def reject(job: Job, problems: list[str], inbox: InboxConfig, spool: Spool) -> Path:
    """Move a rejected job's folder into ``failed/`` with its reports; find it there after a crash."""
    path = Path(job.spool_path)
    if not path.exists():  # moved before a crash: find it by its report
        for candidate in inbox.failed.iterdir():
            try:
                report = json.loads(read_regular(candidate / ERROR_JSON, RECORD_LIMIT, follow=False))
            except (OSError, ValueError):  # not a folder, no report, a FIFO or link in its place: not this job's
                continue
            if isinstance(report, dict) and report.get("id") == job.id:
                return candidate
        raise PermanentError(f"claimed directory {path} of rejected job {job.id} is missing")
    report = {
        "state": REJECTED,
        "job": job.dir_name,
        "id": job.id,
        "inbox": job.inbox,
        "problems": problems,
        "rejected": iso(job.ended_at),
        "syncd_version": __version__,
        "next_step": f"fix the problems, then move this folder back into {inbox.path}",
    }
    text = (  # user text (names, problems quoting file names) escaped: one line per problem, nothing hidden
        f"syncd could not accept the job '{shown(job.dir_name)}' (id {job.id}).\n\n"
        "Problems:\n"
        + "".join(f"  - {shown(p)}\n" for p in problems)
        + "\nNothing was run. All of your files are still in this folder, unchanged.\n"
        f"Fix the problems above, then move this folder back into the inbox:\n  {shown(inbox.path)}\n"
    )
    return spool.reject(path, job.original_dir_name, text, report)
