"""Staging and submission: inputs to the backend, pre-flight, exactly one remote job per attempt."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable

from syncd.backends.base import Backend, JobSpec, RemoteRef
from syncd.engine.base import (
    OUTBOX_PROBE_INTERVAL,
    PROBE_INTERVAL,
    job_logger,
    job_with,
)
from syncd.engine.failures import FailurePolicy
from syncd.errors import (
    InputError,
    ManifestError,
    PermanentError,
    TransientError,
)
from syncd.fsutil import TMP_DIR
from syncd.state.share import Fenced
from syncd.state.store import (
    REMOTE,
    STAGED,
    STAGING,
    SUBMITTED,
    SUBMITTING,
    Job,
)


def submit_once(
    backend: Backend, spec: JobSpec, still_ours: Callable[[], bool] = lambda: True
) -> tuple[RemoteRef, str]:
    """The remote job of ``spec``'s attempt and how it was reached: asked for only if the service does not
    already hold it. The lookup comes first because a daemon may have died after the service accepted the
    job and before anything was recorded, on either side of the backend; a backend's own ``submit`` only
    knows what it recorded.

    ``still_ours`` is asked last, just before the submission: a daemon stopped past its lease in the
    lookup (another may have taken the job over and submitted it meanwhile) submits nothing."""
    ref = backend.find(spec)
    if ref is not None and ref.complete:
        return ref, "found after a restart"
    if not still_ours():
        raise Fenced(spec.submit_key, "another daemon", f"{spec.submit_key}: the lease lapsed before the submission")
    # An interrupted multi-step submission is finished by the same idempotent call.
    how = "submitted" if ref is None else "submission finished after a restart"
    return backend.submit(spec), how


class Submission(FailurePolicy):
    def _stage(self, job: Job) -> None:
        try:
            directory = self._scanned_at_validation(job) or self._load(job)
        except ManifestError as exc:
            raise PermanentError("; ".join(exc.problems)) from None
        try:
            self.backends[job.backend].stage(self.spec(job), directory.inputs)
        except InputError as exc:
            if job.attempts > 1:
                raise  # an earlier attempt ran: the job fails with the reason instead
            # Never submitted: like a bad manifest, the folder goes to failed/ with a report of what to fix.
            self._reject(job, exc.problems)
            return
        self.crash_points.reached("staged-unrecorded")
        self.store.transition(
            job.id,
            STAGING,
            STAGED,
            f"staged {len(directory.inputs)} input file(s)",
            durable=False,  # lost in a power cut: staged again (as after "staged-unrecorded")
            next_at=0,
            **self._clear_failures(),
        )

    def _preflight(self, job: Job) -> None:
        """Before submitting: the outbox can take results and the backend accepts us, or the job waits."""
        inbox = self._inbox(job.inbox)
        outbox = self.outboxes[job.inbox].root
        try:
            probed = self._outbox_probed.get(outbox)
            if probed is None or self.clock() - probed > OUTBOX_PROBE_INTERVAL:
                probe = outbox / TMP_DIR / f"preflight-{job.id}"
                probe.parent.mkdir(parents=True, exist_ok=True)
                probe.write_bytes(b"")
                probe.unlink()
                self._outbox_probed[outbox] = self.clock()
            free = shutil.disk_usage(outbox).free
        except OSError as exc:
            self._outbox_probed.pop(outbox, None)
            raise TransientError(
                f"outbox {outbox} is not writable ({exc.strerror}); results would have nowhere to go, so the job waits"
            ) from None
        if free < inbox.min_free_space:
            raise TransientError(
                f"outbox {outbox} has {free // 2**20} MiB free, less than min_free_space "
                f"({inbox.min_free_space // 2**20} MiB); the job waits until there is room"
            )
        if self.clock() - self._probed.get(job.backend, 0.0) > PROBE_INTERVAL:
            self.backends[job.backend].probe()
            self._probed[job.backend] = self.clock()

    def _start_submit(self, job: Job) -> None:
        backend = self.backends[job.backend]
        self._preflight(job)
        with self._submit_lock:
            running = self.store.count([SUBMITTING, *REMOTE], backend=job.backend)
            if running >= backend.options.max_parallel:
                return
            if not self.store.transition(job.id, STAGED, SUBMITTING, f"submitting as {job.submit_key}"):
                return
        self._submit(job_with(job, state=SUBMITTING))  # the transition changed nothing else _submit reads

    def _submit(self, job: Job) -> None:
        backend = self.backends[job.backend]
        spec = self.spec(job)
        started = time.monotonic()
        ref, how = submit_once(backend, spec, lambda: self.may_act(job.inbox))
        self.crash_points.reached("submitted-unrecorded")
        if self.metrics is not None:
            self.metrics.submit_seconds.labels(job.backend).observe(time.monotonic() - started)
        now = self.clock()
        first = self.config.poll.first
        self.store.transition(
            job.id,
            SUBMITTING,
            SUBMITTED,
            f"{how} as {ref.remote_id}",
            durable=False,  # lost in a power cut: found by its submit key (as after "submitted-unrecorded")
            remote_id=ref.remote_id,
            handle=json.dumps(dict(ref.handle)),
            submitted_at=now,
            next_at=now + first,
            poll_interval=first,
            **self._clear_failures(),
        )
        job_logger(job).info("{} to backend {} as {}", how, job.backend, ref.remote_id)
