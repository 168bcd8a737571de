"""The failure policy: transient failures back off within a budget, permanent ones fail or hold the job, refused credentials pause the backend. Retries live here and nowhere else."""

from __future__ import annotations

import json

from syncd.engine.base import (
    EngineBase,
    job_logger,
)
from syncd.engine.breaker import (
    ServiceUnavailable,
)
from syncd.errors import AccountError, NotReady
from syncd.log import logger
from syncd.retry import backoff_delay, budget_spent
from syncd.state.store import (
    COLLECTING,
    FAILED,
    HELD,
    REJECTED,
    STAGED,
    STAGING,
    SUBMITTING,
    TERMINAL,
    Job,
)


class FailurePolicy(EngineBase):
    def _paused_until(self, backend: str) -> float | None:
        pause = self.store.backend_pauses().get(backend)
        return pause[0] if pause and pause[0] > self.clock() else None

    def _pause_backend(self, backend: str, exc: Exception) -> None:
        """Refused credentials, or an account that may not run jobs now, stop all work on a backend (one probe
        per pause), burning no job's retries."""
        until = self.clock() + self.config.retry.max
        if isinstance(exc, AccountError):
            reason = f"the account may not run jobs now: {exc}. syncd tries again every {self.config.retry.max:.0f}s"
        else:
            reason = (
                f"credentials refused: {exc}. Fix them in the config; syncd tries again every "
                f"{self.config.retry.max:.0f}s"
            )
        if backend not in self.store.backend_pauses():
            logger.bind(backend=backend).error("backend {} paused: {}", backend, reason)
        self.store.pause_backend(backend, until, reason)

    def _backend_answered(self, backend: str) -> None:
        if backend in self.store.backend_pauses():
            self.store.resume_backend(backend)
            logger.info("backend {} accepts the credentials again; resumed", backend)

    def _transient(self, job: Job, exc: BaseException, retry_after: float | None = None) -> None:
        now = self.clock()
        job = self.store.get(job.id)
        failing_since = job.failing_since or now
        failures = job.failures + 1
        if budget_spent(self.config.retry, failing_since, now):
            self._hold(
                job,
                f"still failing after {failures} attempts over "
                f"{int(now - failing_since)}s: {exc}. Fix the cause, then run 'syncd retry {job.id}'",
            )
            return
        delay = backoff_delay(self.config.retry, failures, retry_after)
        if self.metrics is not None:
            self.metrics.retries.labels(job.backend, job.state).inc()
            self.metrics.errors.labels(job.backend, type(exc).__name__).inc()
        # An open circuit was logged once for all its jobs.
        job_logger(job).log(
            "DEBUG" if isinstance(exc, ServiceUnavailable) else "WARNING",
            "{} failed ({}); retry {} in {:.1f}s",
            job.state,
            exc,
            failures,
            delay,
        )
        self.store.update(
            job.id,
            expect=job.state,
            failures=failures,
            failing_since=failing_since,
            next_at=now + delay,
            error=str(exc),
            event=f"transient failure in {job.state}: {exc}; retrying in {delay:.1f}s",
        )

    def _not_ready(self, job: Job, exc: NotReady) -> None:
        """The job ended but its results are not handed over yet: wait without spending retries, up to the
        backend's results_deadline, then hold the job with the reason."""
        now = self.clock()
        job = self.store.get(job.id)
        since = job.results_waiting_since or now
        deadline = self.backends[job.backend].options.results_deadline
        if now - since >= deadline:
            self._hold(
                job,
                f"backend {job.backend} has not handed over the results {int(now - since)}s after "
                f"asking to wait ({exc}); results_deadline is {int(deadline)}s. Check the service, "
                f"then run 'syncd retry {job.id}'",
            )
            return
        first = job.results_waiting_since is None
        if first:
            job_logger(job).info("results not ready yet ({}); waiting up to {}s", exc, int(deadline))
        self.store.update(
            job.id,
            expect=job.state,
            results_waiting_since=since,
            next_at=now + exc.retry_after,
            event=f"results not ready yet: {exc}; waiting up to {int(deadline)}s" if first else None,
        )

    def _permanent(self, job: Job, exc: Exception) -> None:
        job = self.store.get(job.id)
        if job.state in (STAGING, STAGED, SUBMITTING):
            job_logger(job).error("{}: {}", job.state, exc)
            self.store.transition(
                job.id,
                job.state,
                COLLECTING,
                f"cannot run: {exc}",
                outcome=FAILED,
                error=str(exc),
                message=str(exc),
                next_at=0,
            )
        else:
            self._hold(job, f"{exc}. Fix the cause, then run 'syncd retry {job.id}'")

    def _hold(self, job: Job, reason: str) -> None:
        job = self.store.get(job.id)
        if job.state in TERMINAL or job.state == HELD:
            return
        job_logger(job).error("held for attention: {}", reason)
        self.store.transition(job.id, job.state, HELD, f"held: {reason}", held_from=job.state, error=reason)

    def _reject(self, job: Job, problems: list[str]) -> None:
        job_logger(job).warning("rejected: {}", "; ".join(problems))
        self.store.transition(
            job.id,
            job.state,
            REJECTED,
            "rejected: " + "; ".join(problems),
            error="; ".join(problems),
            message=json.dumps(problems),
            outcome=REJECTED,
            ended_at=self.clock(),
        )
