"""How a job is shown to people and their tools: local times and the JSON summary."""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from syncd.state.store import REJECTED, Job


def local_iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else None


def job_summary(job: Job) -> dict[str, Any]:
    """The JSON shape of a job for people's tools: ``syncd status --json`` and the ``/jobs`` endpoint."""
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "backend": job.backend,
        "remote_id": job.remote_id,
        "created": local_iso(job.created),
        "updated": local_iso(job.updated),
        "error": job.error,
        "inbox": job.inbox,
        "directory": job.dir_name,
        "attempts": job.attempts,
        "exit_code": job.exit_code,
        "outcome": job.outcome,
        "message": None if job.state == REJECTED else job.message,
        "folder": job.folder,
        "bucket": job.bucket,
        "held_from": job.held_from,
        "submitted": local_iso(job.submitted_at),
        "started": local_iso(job.started_at),
        "ended": local_iso(job.ended_at),
        "owner": job.taken_by if job.taken_by else socket.gethostname(),
        "adopted_from": job.adopted_from,
    }
