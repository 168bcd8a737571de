"""Requests from people: cancel (CLI or CANCEL file) and retry."""

from __future__ import annotations

from pathlib import Path

from syncd.backends.base import CancelSupport
from syncd.engine.base import (
    job_logger,
    remote_ref,
)
from syncd.engine.failures import FailurePolicy
from syncd.errors import (
    AuthError,
    PermanentError,
)
from syncd.retry import backoff_delay
from syncd.state.store import (
    CANCELLED,
    CLAIMED,
    COLLECTING,
    FAILED,
    HELD,
    REJECTED,
    REMOTE,
    RUNNING,
    STAGED,
    STAGING,
    SUBMITTED,
    TERMINAL,
    TIMED_OUT,
    Job,
)

CANCEL_REQUESTED = 1
CANCEL_SENT = 2
CANCEL_UNSTOPPABLE = 3  # asked for, but the service cannot stop the job


def cannot_stop(support: CancelSupport, job: Job) -> str | None:
    """Why the backend cannot stop ``job`` now, or None if it can (by the backend's declared capability)."""
    if support is CancelSupport.NEVER:
        return f"backend {job.backend} cannot cancel jobs"
    running = job.state == RUNNING or (job.state == HELD and job.held_from == RUNNING)
    if support is CancelSupport.WHILE_QUEUED and running:
        return f"the job has started, and backend {job.backend} stops only queued jobs"
    return None


class Requests(FailurePolicy):
    def handle_requests(self, job_id: str) -> None:
        job = self.store.get(job_id)
        # A request is no transition: on a shared inbox it reaches the job's record before it is carried
        # out, so a daemon that takes the job over carries it out if this one stops first. Once per request:
        # one that waits (a paused backend, a backoff) comes round at every pass.
        asked = (job.cancel_requested, job.retry_requested)
        if self._requests_shared.get(job_id) != asked:
            self.share_job(job)
            self._requests_shared[job_id] = asked
        if job.cancel_requested == CANCEL_REQUESTED:
            self._cancel(job)
        after = self.store.get(job_id)
        if after.retry_requested:
            self._retry(after)
            after = self.store.get(job_id)
        if after.cancel_requested != CANCEL_REQUESTED and not after.retry_requested:
            self._requests_shared.pop(job_id, None)

    def _cancel(self, job: Job) -> None:
        log = job_logger(job)
        if job.state in (CLAIMED, STAGING, STAGED, HELD) and not job.remote_id:
            if self.store.transition(
                job.id,
                job.state,
                COLLECTING,
                "cancelled before it was submitted",
                outcome=CANCELLED,
                cancel_requested=CANCEL_SENT,
                next_at=0,
                ended_at=self.clock(),
                message="cancelled before it was submitted",
            ):
                log.info("cancelled before submission")
        elif job.state in REMOTE or (job.state == HELD and job.remote_id):
            self._cancel_remote(job)
        elif job.state in TERMINAL or job.state == COLLECTING:
            self.store.update(job.id, cancel_requested=0, event="cancel ignored: the job has already ended")

    def _cancel_remote(self, job: Job) -> None:
        log = job_logger(job)
        backend = self.backends[job.backend]
        if (why := cannot_stop(backend.capabilities.cancel, job)) is not None:
            self._unstoppable(job, why)
            return
        now = self.clock()
        if self._paused_until(job.backend) is not None or now < self._cancel_retry_at.get(job.id, 0.0):
            return  # sent once the credentials work again, or once the backoff has passed
        try:
            backend.cancel(remote_ref(job))
        except AuthError as exc:
            self._pause_backend(job.backend, exc)
            return
        except PermanentError as exc:
            self._unstoppable(job, f"backend {job.backend} refused to stop it ({exc})")
            return
        except Exception as exc:  # transport trouble, or a backend bug: try again later, never on every pump
            tries = self._cancel_tries.get(job.id, 0) + 1
            delay = backoff_delay(self.config.retry, tries, getattr(exc, "retry_after", None))
            self._cancel_tries[job.id], self._cancel_retry_at[job.id] = tries, now + delay
            log.warning("cancel request failed ({}); trying again in {:.0f}s", exc, delay)
            return
        self._cancel_tries.pop(job.id, None)
        self._cancel_retry_at.pop(job.id, None)
        self.store.update(job.id, cancel_requested=CANCEL_SENT, next_at=0, event="cancel sent to the backend")
        if job.state == HELD:
            self.store.transition(
                job.id, HELD, job.held_from or SUBMITTED, "resumed to follow the cancel", **self._clear_failures()
            )
        log.info("cancel sent to backend {}", job.backend)

    def _unstoppable(self, job: Job, why: str) -> None:
        """The service cannot stop the job: it runs to its end, and its results are marked cancelled."""
        job_logger(job).warning("cannot cancel: {}; it runs to its end and its results will be marked cancelled", why)
        self.store.update(
            job.id,
            cancel_requested=CANCEL_UNSTOPPABLE,
            event=f"cancel requested, but {why}: the job runs to its end; its results will be "
            f"delivered marked cancelled, not as a success",
        )

    def _retry(self, job: Job) -> None:
        log = job_logger(job)
        if job.state == HELD:
            self.store.transition(
                job.id,
                HELD,
                job.held_from or CLAIMED,
                "resumed by 'syncd retry'",
                retry_requested=0,
                next_at=0,
                **self._clear_failures(),
            )
            log.info("resumed from {}", job.held_from)
        elif job.state in (FAILED, TIMED_OUT, CANCELLED) and job.finished:
            if not Path(job.spool_path).exists():
                self.store.update(
                    job.id,
                    retry_requested=0,
                    event="retry refused: the job's files are no longer "
                    "kept (after: remove); drop the job folder into the inbox again",
                )
                return
            inbox = self._inbox(job.inbox)
            with self._folder_lock:
                folder = self._reserve_folder(inbox, job.name)
                self.store.transition(
                    job.id,
                    job.state,
                    STAGING,
                    f"retry by 'syncd retry'; results will go to {folder}/",
                    retry_requested=0,
                    attempts=job.attempts + 1,
                    folder=folder,
                    remote_id=None,
                    handle=None,
                    outcome=None,
                    exit_code=None,
                    remote_state=None,
                    message=None,
                    finished=0,
                    cancel_requested=0,
                    deadline_hit=0,
                    started_at=None,
                    ended_at=None,
                    submitted_at=None,
                    next_at=0,
                    **self._clear_failures(),
                )
            log.info("retrying as attempt {}", job.attempts + 1)
        elif job.state == REJECTED:
            self.store.update(
                job.id,
                retry_requested=0,
                event="retry refused: fix the problems listed in "
                "ERROR.txt and move the folder from failed/ back into the inbox",
            )
        else:
            self.store.update(job.id, retry_requested=0, event=f"retry ignored: the job is {job.state}")
