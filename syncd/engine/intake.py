"""Intake: claim a settled job folder, validate its manifest, reserve its results folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from syncd.config import InboxConfig
from syncd.engine.base import (
    job_logger,
    job_with,
    new_job_id,
)
from syncd.engine.failures import FailurePolicy
from syncd.errors import (
    ManifestError,
)
from syncd.log import logger
from syncd.state.share import Fenced
from syncd.state.store import (
    CLAIMED,
    CLAIMING,
    COLLECTING,
    HELD,
    STAGING,
    VALIDATED,
    Job,
    StoreUnwritable,
)


class Intake(FailurePolicy):
    def claim(self, inbox: InboxConfig, path: Path) -> bool:
        """Take a settled job directory out of the inbox. False if it was gone already."""
        if self._stopping.is_set() or not self._store_writable() or not self.may_act(inbox.name):
            return False  # a claim nobody could record would be a job nobody follows
        spool = self.spools[inbox.name]
        try:
            st = path.lstat()
        except FileNotFoundError:
            return True
        identity = f"{st.st_dev}:{st.st_ino}"
        if (owner := self.store.unfinished_with_folder(identity)) is not None and not Path(owner.spool_path).exists():
            return self._return_folder(owner, path)
        job_id = new_job_id()
        raw = os.fsencode(path.name)
        shown = raw.decode("utf-8", "backslashreplace")  # text for the store, logs and reports
        try:
            job = self.store.create_job(
                id=job_id,
                name=shown,
                dir_name=shown,
                dir_raw=None if shown == path.name else raw,
                inbox=inbox.name,
                backend=inbox.backend,
                storage=inbox.storage,
                bucket=inbox.bucket,
                spool_path=str(spool.claimed / job_id),
                dir_identity=identity,
            )
        except StoreUnwritable:
            return False
        try:
            self.share_job(job)  # before the rename: a daemon taking this one over must know of the claim
        except (OSError, Fenced) as exc:
            self.store.delete_unclaimed(job_id)
            logger.warning(
                "inbox {}: not claiming {} now: cannot record the claim on the share ({})", inbox.name, path, exc
            )
            return False
        try:
            spool.claim(path, job_id)
        except FileNotFoundError:
            # Another daemon won the rename, unless the rename did happen: an NFSv3 client that retries a
            # request whose reply was lost reports "not found" for a rename the server already did.
            if not os.path.lexists(spool.claimed / job_id):
                self.store.delete_unclaimed(job_id)
                self.unshare_job(job)
                return True
        except OSError:
            self.store.delete_unclaimed(job_id)
            self.unshare_job(job)
            raise
        self.crash_points.reached("claimed-unrecorded")
        if not self.may_act(inbox.name) and not self.claim_still_ours(job, path):
            return True
        try:
            # Unflushed: lost in a power cut, the claim is completed again at start (as after "claimed-unrecorded").
            self.store.transition(job_id, CLAIMING, CLAIMED, f"claimed from {path}", durable=False)
        except StoreUnwritable:
            self._claims_unrecorded = True  # the folder is in the spool: the pump completes the claim
            return True
        except Fenced:
            return True  # taken over since the check above: the taker has the folder
        job_logger(job).info("claimed job directory {}", path)
        return True

    def _return_folder(self, job: Job, path: Path) -> bool:
        """The claimed folder of a job in flight was moved back into the inbox: put it back, never run it twice."""
        os.rename(path, job.spool_path)
        job_logger(job).warning(
            "the folder {} is job {}'s claimed folder, moved out of {} while the job was {}; "
            "moved it back. Leave folders under {} alone: a job runs once",
            path,
            job.id,
            job.spool_path,
            job.state,
            Path(job.spool_path).parent,
        )
        self.store.update(job.id, event=f"claimed folder came back as {path}; moved back to {job.spool_path}")
        if job.state == HELD:
            self.store.request(job.id, "retry")
        return True

    def _complete_claims(self) -> None:
        """Record claims whose rename happened but whose record could not be written at the time."""
        if not self._claims_unrecorded:
            return
        self._claims_unrecorded = False
        try:
            for job in self.store.jobs([CLAIMING]):
                if Path(job.spool_path).exists():
                    self.store.transition(job.id, CLAIMING, CLAIMED, "claim completed once the store could record it")
        except StoreUnwritable:
            self._claims_unrecorded = True
            raise

    def _validate(self, job: Job) -> None:
        inbox = self._inbox(job.inbox)
        try:
            directory = self._load(job)
            manifest_json = json.dumps(directory.manifest.model_dump(mode="json"))
            spec = self.spec(job_with(job, name=directory.name, manifest=manifest_json, attempts=1))
            if problems := self.backends[job.backend].check(spec):
                raise ManifestError(job.spool_path, problems)
        except ManifestError as exc:
            self._reject(job, exc.problems)
            return
        with self._folder_lock:
            folder = self._reserve_folder(inbox, directory.name)
            if directory.manifest.dry_run:
                self.store.transition(
                    job.id,
                    CLAIMED,
                    COLLECTING,
                    f"dry run: valid; report goes to {inbox.bucket}/{folder}/",
                    name=directory.name,
                    manifest=manifest_json,
                    folder=folder,
                    outcome=VALIDATED,
                    message=f"dry run: valid, {len(directory.inputs)} input file(s); nothing was run",
                    ended_at=self.clock(),
                    next_at=0,
                )
                return
            if self.store.transition(
                job.id,
                CLAIMED,
                STAGING,
                f"valid; results will go to {inbox.bucket}/{folder}/",
                durable=False,  # lost in a power cut: validated again; flushed with the submit, before it
                name=directory.name,
                manifest=manifest_json,
                folder=folder,
                priority=directory.manifest.priority,
                attempts=1,
            ):
                self._keep_scan(job, directory)
        job_logger(job_with(job, name=directory.name)).info(
            "valid: {} input file(s); results to {}/{}/", len(directory.inputs), inbox.bucket, folder
        )
