"""Polling: one batched status request per backend, and what each status means for the job."""

from __future__ import annotations

import threading
import time

from syncd.backends.base import RemoteState, RemoteStatus
from syncd.engine.base import (
    MAX_UNKNOWN_POLLS,
    OUTCOME,
    TIMEOUT_GRACE,
    job_logger,
    job_with,
    remote_ref,
)
from syncd.engine.failures import FailurePolicy
from syncd.engine.requests import CANCEL_UNSTOPPABLE, cannot_stop
from syncd.errors import (
    AuthError,
    PermanentError,
    TransientError,
)
from syncd.intake.manifest import Manifest
from syncd.retry import backoff_delay
from syncd.state.share import Fenced
from syncd.state.store import (
    CANCELLED,
    COLLECTING,
    FAILED,
    QUEUED,
    REMOTE,
    RUNNING,
    STAGING,
    SUCCEEDED,
    TIMED_OUT,
    Job,
    StoreUnwritable,
)

HINT_KEPT = 10.0  # seconds a status hint waits for its job's submission to be recorded
DEADLINE_CANCELLED = 1  # the job passed its timeout and syncd cancelled it
DEADLINE_UNSTOPPABLE = 2  # it passed its timeout, but the service cannot stop it


class Polling(FailurePolicy):
    def poll_backend(self, name: str) -> None:
        """One batched status request for every due job of backend ``name``, and for every job it hinted at.

        Called on the backend's timer and, after a hint, by the pump: never two at once for one backend;
        a call that finds one under way has it go round once more instead."""
        with self._lock:
            lock = self._poll_locks.setdefault(name, threading.Lock())
        while lock.acquire(blocking=False):
            try:
                with self._lock:
                    self._poll_again.discard(name)
                with self.holding(f"poll:{name}"):
                    self._poll_once(name)
            finally:
                lock.release()
            with self._lock:
                if name not in self._poll_again:
                    return
        with self._lock:
            self._poll_again.add(name)

    def _take_hints(self, name: str, remote_ids: set[str]) -> None:
        """Drop the hints about ``remote_ids`` (polled now); hints for jobs not in a remote state yet (a
        hint can come before the submission is recorded) are kept a little while."""
        now = time.monotonic()
        with self._lock:
            hints = self._status_hints.pop(name, {})
            early = {rid: at for rid, at in hints.items() if rid not in remote_ids and now - at < HINT_KEPT}
            if early:
                self._status_hints.setdefault(name, {}).update(early)

    def _poll_once(self, name: str) -> None:
        if self._stopping.is_set() or not self._store_writable() or not self.may_act_everywhere():
            return
        now = self.clock()
        if self._paused_until(name) is not None:
            return
        with self._lock:
            hinted = set(self._status_hints.get(name, ()))
        due = self.store.to_poll(REMOTE, name, now, hinted)
        self._take_hints(name, {j.remote_id for j in due if j.remote_id})
        if not due:
            return
        backend = self.backends[name]
        started = time.monotonic()
        try:
            statuses = backend.poll([remote_ref(j) for j in due])
            if self.metrics is not None:
                self.metrics.poll_seconds.labels(name).observe(time.monotonic() - started)
        except AuthError as exc:
            self._pause_backend(name, exc)
            return
        except (TransientError, OSError, PermanentError) as exc:
            for job in due:
                self._transient(job, exc, getattr(exc, "retry_after", None))
            return
        self._backend_answered(name)
        unchanged: list[tuple[str, str, float, float]] = []
        for job in due:
            status = statuses.get(job.remote_id) or RemoteStatus(RemoteState.UNKNOWN, "not reported")
            try:
                self._apply(job, status, now, unchanged)
            except (StoreUnwritable, Fenced):
                return  # nothing more can be recorded now, or the jobs are another daemon's
            except Exception:
                job_logger(job).opt(exception=True).error("applying status {} failed", status)
        try:
            self.store.reschedule(unchanged)
        except StoreUnwritable:
            return

    def _apply(
        self, job: Job, status: RemoteStatus, now: float, unchanged: list[tuple[str, str, float, float]] | None = None
    ) -> None:
        """Act on one job's status. A job whose state did not change is only polled later: with
        ``unchanged``, that is added to it (and written with the others in one transaction)."""
        log = job_logger(job)
        first, poll = self.config.poll.first, self.config.poll
        if status.state.terminal:
            outcome = OUTCOME[status.state]
            if job.deadline_hit and outcome in (CANCELLED, FAILED):
                outcome = TIMED_OUT  # syncd stopped it at the manifest's timeout
            elif job.deadline_hit == DEADLINE_UNSTOPPABLE and outcome == SUCCEEDED:
                outcome = TIMED_OUT  # it ran past the manifest's timeout; that is not a success
            message = status.message
            if job.cancel_requested == CANCEL_UNSTOPPABLE and outcome in (SUCCEEDED, FAILED):
                message = (
                    f"cancel requested, but the service could not stop the job: it ran to its end "
                    f"({status.native}); its results are those of a cancelled job"
                )
                outcome = CANCELLED
            retries = Manifest.model_validate(job.manifest_data).retries
            if outcome in (FAILED, TIMED_OUT) and job.attempts <= retries and not job.cancel_requested:
                self.backends[job.backend].cleanup(remote_ref(job))
                if self.store.transition(
                    job.id,
                    job.state,
                    STAGING,
                    f"attempt {job.attempts} {outcome} (exit code {status.exit_code}); "
                    f"retrying as attempt {job.attempts + 1} of {retries + 1}",
                    attempts=job.attempts + 1,
                    remote_id=None,
                    handle=None,
                    next_at=0,
                    deadline_hit=0,
                    started_at=None,
                    **self._clear_failures(),
                ):
                    log.warning("attempt {} {}; retrying", job.attempts, outcome)
                return
            if self.store.transition(
                job.id,
                job.state,
                COLLECTING,
                f"{status.native}: {outcome}"
                + (f", exit code {status.exit_code}" if status.exit_code is not None else "")
                + (f" ({message})" if message else ""),
                outcome=outcome,
                exit_code=status.exit_code,
                remote_state=status.native,
                message=message or None,
                started_at=job.started_at or status.started,
                ended_at=status.ended or now,
                next_at=0,
                durable=False,  # lost in a power cut: the next poll finds the end again
                **self._clear_failures(),
            ):
                log.info("{} (exit code {}); collecting results", outcome, status.exit_code)
            return
        if status.state is RemoteState.UNKNOWN:
            failures = job.failures + 1
            if failures >= MAX_UNKNOWN_POLLS:
                self._hold(
                    job,
                    f"backend {job.backend} no longer knows {job.remote_id} ({status.message or status.native}); "
                    f"a vanished job is not a finished one. Check the service, then "
                    f"'{self.command('retry', job)}' or '{self.command('cancel', job)}'",
                )
                return
            self.store.update(
                job.id,
                expect=job.state,
                failures=failures,
                failing_since=job.failing_since or now,
                next_at=now + backoff_delay(self.config.retry, failures),
            )
            return
        new_state = RUNNING if status.state is RemoteState.RUNNING else QUEUED
        if new_state == RUNNING and self._deadline_passed(job, status, now):
            self._stop_at_timeout(job, status, now)
            return
        if new_state != job.state:
            started = job.started_at or (status.started or now if new_state == RUNNING else None)
            if self.store.transition(
                job.id,
                job.state,
                new_state,
                f"{status.native}",
                remote_state=status.native,
                started_at=started,
                next_at=now + first,
                poll_interval=first,
                **self._clear_failures(),
            ):
                log.info("{}", new_state)
        else:
            interval = min(poll.max, (job.poll_interval or first) * poll.factor)
            if unchanged is not None:
                unchanged.append((job.id, job.state, now + interval, interval))
            else:
                self.store.reschedule([(job.id, job.state, now + interval, interval)])

    def _stop_at_timeout(self, job: Job, status: RemoteStatus, now: float) -> None:
        """Cancel a job past the manifest's timeout; where the service cannot stop it, say so and let the
        service's own limit end it (it is reported timed out either way, never succeeded)."""
        log = job_logger(job)
        backend = self.backends[job.backend]
        ran = f"timeout reached after {now - (job.started_at or status.started or now):.0f}s of running"
        why = cannot_stop(backend.capabilities.cancel, job_with(job, state=RUNNING))
        if why is None:
            try:
                backend.cancel(remote_ref(job))
            except PermanentError as exc:
                why = f"backend {job.backend} refused to stop it ({exc})"
            except (TransientError, OSError) as exc:
                log.warning("timeout reached, but the cancel request failed ({}); trying again", exc)
                return
        next_at = now + self.config.poll.first
        if why is None:
            self.store.update(job.id, deadline_hit=DEADLINE_CANCELLED, next_at=next_at, event=f"{ran}; cancelling")
            log.warning("timeout reached; cancelling")
        else:
            self.store.update(
                job.id,
                deadline_hit=DEADLINE_UNSTOPPABLE,
                next_at=next_at,
                event=f"{ran}, but {why}: it runs until the service stops it, and is reported timed out",
            )
            log.warning("timeout reached, but {}; it will be reported timed out", why)

    def _deadline_passed(self, job: Job, status: RemoteStatus, now: float) -> bool:
        """The manifest's timeout, enforced here too: schedulers count in minutes, some not at all."""
        if job.deadline_hit:
            return False
        timeout = Manifest.model_validate(job.manifest_data).timeout
        started = job.started_at or status.started
        return bool(timeout and started and now - started >= timeout + TIMEOUT_GRACE)
