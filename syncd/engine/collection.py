"""Collection: deliver outputs and logs, write the result record last, then finish the job folder."""

from __future__ import annotations

import json
from pathlib import Path

from syncd.backends.base import RemoteRef
from syncd.delivery import deliver
from syncd.delivery.outbox import RESULT_RECORD
from syncd.errors import (
    PermanentError,
    TransientError,
)
from syncd.state import journal
from syncd.state.store import (
    COLLECTING,
    FAILED,
    REJECTED,
    TERMINAL,
    VALIDATED,
    Job,
)
from syncd.engine.base import (
    job_logger,
)
from syncd.engine.failures import FailurePolicy


class Collection(FailurePolicy):
    def _collect(self, job: Job) -> None:
        """Deliver outputs and logs to the bucket, mirror into the outbox, write the result record last."""
        inbox = self._inbox(job.inbox)
        folder = job.folder or self._reserve_folder(inbox, job.name)
        outbox = self.outboxes[job.inbox]
        if deliver.record_matches(outbox.path_for(job.bucket, f"{folder}/{RESULT_RECORD}"), job):
            self._complete(job)
            return
        backend = self.backends[job.backend]
        outputs, logs = [], None
        if job.remote_id:
            ref = RemoteRef(job.remote_id, job.handle_data)
            outputs, logs = backend.outputs(ref, self.spec(job)), backend.logs(ref)
        reports = {}
        if job.outcome == VALIDATED:
            reports[deliver.VALIDATION_REPORT] = deliver.validation_report(job, self._load(job), self.spec(job))
        _, mirrored = deliver.deliver(
            self.store.get(job.id), inbox=inbox, folder=folder, storage=self.storages[job.storage], outbox=outbox,
            outputs=outputs, logs=logs, reports=reports, tmp_dir=self.tmp_dir)
        self.crash_points.reached("delivered-unrecorded")
        if self.metrics is not None:
            self.metrics.bytes_delivered.labels(job.inbox).inc(mirrored)
        self._complete(job)

    def stored_result(self, job: Job) -> dict | None:
        """The job's delivered result record, if there is one (for notifications)."""
        if not job.folder:
            return None
        try:
            return json.loads(self.outboxes[job.inbox].path_for(job.bucket, f"{job.folder}/{RESULT_RECORD}")
                              .read_text())
        except (OSError, ValueError, KeyError):
            return None

    def _complete(self, job: Job) -> None:
        if self.store.transition(job.id, COLLECTING, job.outcome or FAILED,
                                 f"results delivered to {job.bucket}/{job.folder}/", finished=0, next_at=0,
                                 **self._clear_failures()):
            job_logger(job).info("{}: results in {}", job.outcome, self.outboxes[job.inbox].path_for(
                job.bucket, job.folder or ""))

    def finish(self, job_id: str) -> None:
        """After a terminal state: move the claimed directory away and clean up the backend."""
        job = self.store.get(job_id)
        if job.state not in TERMINAL or job.finished:
            return
        spool = self.spools[job.inbox]
        inbox = self._inbox(job.inbox)
        path = Path(job.spool_path)
        journal.update(inbox.path, job, None)  # terminal: removes a journal a racing writer may have left
        try:
            if job.state == REJECTED:
                problems = json.loads(job.message) if job.message else [job.error or "rejected"]
                dest = deliver.reject(job, problems, inbox, spool)
                self.store.update(job.id, finished=1, spool_path=str(dest),
                                  event=f"moved to {dest} with ERROR.txt")
                job_logger(job).warning("rejected; moved to {}", dest)
                return
            if job.remote_id:
                self.backends[job.backend].cleanup(RemoteRef(job.remote_id, job.handle_data))
            if inbox.after == "remove":
                spool.remove(path)
                dest = path
            else:
                dest = spool.archive(path, job.id)
            self.crash_points.reached("archived-unrecorded")
            self.store.update(job.id, finished=1, spool_path=str(dest))
        except (OSError, PermanentError, TransientError) as exc:
            job_logger(job).warning("finishing failed ({}); will try again", exc)
            self.store.update(job.id, event=f"finishing failed: {exc}")
