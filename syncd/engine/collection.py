"""Collection: deliver outputs and logs, write the result record last, then finish the job folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from syncd.backends import wrapper
from syncd.backends.base import OutputFile, StagingArea
from syncd.delivery import deliver
from syncd.engine.base import (
    job_logger,
    remote_ref,
)
from syncd.engine.failures import FailurePolicy
from syncd.errors import (
    PermanentError,
    TransientError,
)
from syncd.fsutil import os_error, read_regular
from syncd.names import RESULT_RECORD, VALIDATION_REPORT
from syncd.retry import backoff_delay
from syncd.state.store import (
    COLLECTING,
    FAILED,
    REJECTED,
    SUCCEEDED,
    TERMINAL,
    VALIDATED,
    Job,
)

EXIT_FILE_LIMIT = 4096  # the wrapper writes a number and a newline


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
            ref = remote_ref(job)
            outputs, logs = backend.outputs(ref, self.spec(job)), backend.logs(ref)
            if not backend.capabilities.exit_codes:
                self._exit_code_from_wrapper(job, outputs)
            outputs = [item for item in outputs if not wrapper.is_wrapper_path(item.relpath)]
        reports = {}
        if job.outcome == VALIDATED:
            reports[VALIDATION_REPORT] = deliver.validation_report(job, self._load(job), self.spec(job))

        def settled(outcome: str | None, message: str | None) -> None:  # recorded before the record is written
            job_logger(job).warning("{}", message)
            self.store.update(
                job.id,
                expect=COLLECTING,
                outcome=outcome,
                message=message,
                event=f"delivered with refused files: {message}",
            )

        def progress(files_done: int, files: int, bytes_done: int, size: int) -> None:
            self.transfers[job.id] = (files_done, files, bytes_done, size)

        try:
            _, mirrored = deliver.deliver(
                # read again only if this step changed the record (a folder reserved, an exit code read)
                job if job.folder and backend.capabilities.exit_codes else self.store.get(job.id),
                inbox=inbox,
                folder=folder,
                storage=self.storages[job.storage],
                outbox=outbox,
                outputs=outputs,
                logs=logs,
                reports=reports,
                tmp_dir=self.tmp_dir,
                on_settled=settled,
                on_progress=progress,
            )
        finally:
            self.transfers.pop(job.id, None)
        self.crash_points.reached("delivered-unrecorded")
        if self.metrics is not None:
            self.metrics.bytes_delivered.labels(job.inbox).inc(mirrored)
        self._complete(self.store.get(job.id))

    def _exit_code_from_wrapper(self, job: Job, outputs: list[OutputFile]) -> None:
        """A service that reports no exit code ran the command through syncd's wrapper: read the code it wrote."""
        job = self.store.get(job.id)
        exit_file = next((item for item in outputs if item.relpath == wrapper.EXIT_FILE), None)
        if job.exit_code is not None or exit_file is None:
            return
        code = self._read_exit_file(job, exit_file)
        if code is None:
            return
        changes: dict[str, Any] = {"exit_code": code}
        if job.outcome == SUCCEEDED and code != 0:
            changes.update(outcome=FAILED, message=f"the command exited with code {code}")
        self.store.update(job.id, expect=COLLECTING, event=f"exit code {code}, from syncd's wrapper", **changes)

    def _read_exit_file(self, job: Job, item: OutputFile) -> int | None:
        if item.source is not None:  # the job wrote it: a FIFO or device in its place must not block
            try:
                return wrapper.parse_exit_code(
                    read_regular(item.source, EXIT_FILE_LIMIT, follow=False).decode(errors="replace")
                )
            except OSError:
                return None
        assert item.remote is not None
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        local = self.tmp_dir / f"exit-code-{job.id}"
        try:
            self.storages[job.storage].get_file(item.remote.bucket, item.remote.key, local)
            return wrapper.parse_exit_code(read_regular(local, EXIT_FILE_LIMIT).decode(errors="replace"))
        finally:
            local.unlink(missing_ok=True)

    def stored_result(self, job: Job) -> dict | None:
        """The job's delivered result record, if there is one (for notifications)."""
        if not job.folder:
            return None
        try:
            return json.loads(
                read_regular(
                    self.outboxes[job.inbox].path_for(job.bucket, f"{job.folder}/{RESULT_RECORD}"),
                    deliver.RECORD_LIMIT,
                    follow=False,
                )
            )
        except (OSError, ValueError, KeyError):
            return None

    def _complete(self, job: Job) -> None:
        if self.store.transition(
            job.id,
            COLLECTING,
            job.outcome or FAILED,
            f"results delivered to {job.bucket}/{job.folder}/",
            finished=0,
            next_at=0,
            **self._clear_failures(),
        ):
            job_logger(job).info(
                "{}: results in {}", job.outcome, self.outboxes[job.inbox].path_for(job.bucket, job.folder or "")
            )

    def finish(self, job_id: str) -> None:
        """After a terminal state: move the claimed directory away and clean up the backend."""
        job = self.store.get(job_id)
        if job.state not in TERMINAL or job.finished or not self.may_act(job.inbox):
            return
        # An ended job is never cancelled again: its cancel backoff would otherwise stay until a restart.
        self._cancel_tries.pop(job_id, None)
        self._cancel_retry_at.pop(job_id, None)
        if self.clock() < self._finish_retry.get(job_id, (0, 0.0))[1]:
            return  # backing off after a failure
        spool = self.spools[job.inbox]
        inbox = self._inbox(job.inbox)
        path = Path(job.spool_path)
        self.update_journal(job, None)  # terminal: removes a journal a racing writer may have left
        try:
            if job.state == REJECTED:
                problems = json.loads(job.message) if job.message else [job.error or "rejected"]
                dest = deliver.reject(job, problems, inbox, spool)
                self.store.update(job.id, finished=1, spool_path=str(dest), event=f"moved to {dest} with ERROR.txt")
                self.unshare_job(job)
                job_logger(job).warning("rejected; moved to {}", dest)
                return
            backend = self.backends[job.backend]
            if job.remote_id:
                backend.cleanup(remote_ref(job))
            if backend.capabilities.stages_to_storage:
                StagingArea.for_job(self.storages[job.storage], job.bucket, inbox.prefix, job.id).remove()
            if inbox.after == "remove":
                spool.remove(path)
                dest = path
            else:
                dest = spool.archive(path, job.id)
            self.crash_points.reached("archived-unrecorded")
            # Unflushed: lost in a power cut, the job is finished again (as after "archived-unrecorded").
            self.store.update(job.id, finished=1, spool_path=str(dest), durable=False)
            self.unshare_job(job)
        except (OSError, PermanentError, TransientError) as exc:
            self._finish_failed(job, path, os_error(exc, "finishing") if isinstance(exc, OSError) else exc)
        else:
            if self._finish_retry.pop(job.id, None) is not None:
                job_logger(job).info("finished after all")

    def _finish_failed(self, job: Job, path: Path, error: Exception) -> None:
        """A permanent failure is reported once and not tried again (the folder stays where it is, and
        status says where); a transient one is tried again with backoff, logged the first time only."""
        tries = self._finish_retry.get(job.id, (0, 0.0))[0] + 1
        if isinstance(error, PermanentError):
            self._finish_retry.pop(job.id, None)
            reason = f"finishing failed: {error}; its folder stays at {path}: move it yourself (not tried again)"
            job_logger(job).error("{}", reason)
            self.store.update(job.id, finished=1, error=reason, event=reason)
            self.unshare_job(job)
            return
        delay = backoff_delay(self.config.retry, tries)
        self._finish_retry[job.id] = (tries, self.clock() + delay)
        if tries == 1:
            job_logger(job).warning("finishing failed ({}); trying again with backoff", error)
            self.store.update(job.id, event=f"finishing failed: {error}; trying again with backoff")
