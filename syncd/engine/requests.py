"""Requests from people: cancel (CLI or CANCEL file) and retry."""

from __future__ import annotations

from pathlib import Path

from syncd.backends.base import RemoteRef
from syncd.errors import (
    TransientError,
)
from syncd.state.store import (
    CANCELLED,
    CLAIMED,
    COLLECTING,
    FAILED,
    HELD,
    REJECTED,
    REMOTE,
    STAGED,
    STAGING,
    SUBMITTED,
    TERMINAL,
    TIMED_OUT,
    Job,
)
from syncd.engine.base import (
    job_logger,
)
from syncd.engine.failures import FailurePolicy


class Requests(FailurePolicy):
    def handle_requests(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job.cancel_requested == 1:
            self._cancel(job)
        if self.store.get(job_id).retry_requested:
            self._retry(self.store.get(job_id))

    def _cancel(self, job: Job) -> None:
        log = job_logger(job)
        if job.state in (CLAIMED, STAGING, STAGED, HELD) and not job.remote_id:
            if self.store.transition(job.id, job.state, COLLECTING, "cancelled before it was submitted",
                                     outcome=CANCELLED, cancel_requested=2, next_at=0, ended_at=self.clock(),
                                     message="cancelled before it was submitted"):
                log.info("cancelled before submission")
        elif job.state in REMOTE or (job.state == HELD and job.remote_id):
            try:
                self.backends[job.backend].cancel(RemoteRef(job.remote_id, job.handle_data))
            except (TransientError, OSError) as exc:
                log.warning("cancel request failed ({}); will try again", exc)
                return
            self.store.update(job.id, cancel_requested=2, next_at=0, event="cancel sent to the backend")
            if job.state == HELD:
                self.store.transition(job.id, HELD, job.held_from or SUBMITTED, "resumed to follow the cancel",
                                      **self._clear_failures())
            log.info("cancel sent to backend {}", job.backend)
        elif job.state in TERMINAL or job.state == COLLECTING:
            self.store.update(job.id, cancel_requested=0, event="cancel ignored: the job has already ended")

    def _retry(self, job: Job) -> None:
        log = job_logger(job)
        if job.state == HELD:
            self.store.transition(job.id, HELD, job.held_from or CLAIMED, "resumed by 'syncd retry'",
                                  retry_requested=0, next_at=0, **self._clear_failures())
            log.info("resumed from {}", job.held_from)
        elif job.state in (FAILED, TIMED_OUT, CANCELLED) and job.finished:
            if not Path(job.spool_path).exists():
                self.store.update(job.id, retry_requested=0, event="retry refused: the job's files are no longer "
                                  "kept (after: remove); drop the job folder into the inbox again")
                return
            inbox = self._inbox(job.inbox)
            with self._folder_lock:
                folder = self._reserve_folder(inbox, job.name)
                self.store.transition(
                    job.id, job.state, STAGING, f"retry by 'syncd retry'; results will go to {folder}/",
                    retry_requested=0, attempts=job.attempts + 1, folder=folder, remote_id=None, handle=None,
                    outcome=None, exit_code=None, remote_state=None, message=None, finished=0, cancel_requested=0,
                    deadline_hit=0,
                    started_at=None, ended_at=None, submitted_at=None, next_at=0, **self._clear_failures(),
                )
            log.info("retrying as attempt {}", job.attempts + 1)
        elif job.state == REJECTED:
            self.store.update(job.id, retry_requested=0, event="retry refused: fix the problems listed in "
                              "ERROR.txt and move the folder from failed/ back into the inbox")
        else:
            self.store.update(job.id, retry_requested=0, event=f"retry ignored: the job is {job.state}")
