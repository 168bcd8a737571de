"""The life of a job, as idempotent steps over saved state.

Each step reads the job from the store, skips what is already done, does its
work, and persists the next state; every transition is written before the side
effect that depends on it. The scheduler calls :meth:`Engine.pump` (dispatch
due steps to worker threads) and :meth:`Engine.poll_backend` (one batched status
request per backend) on timers. Failures are classified by the backends and
storages; the retry policy lives in engine.failures and nowhere else.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path

from syncd.backends.base import Backend
from syncd.config import Config
from syncd.delivery.outbox import Outbox
from syncd.engine.base import (
    CANCEL_MARKER,
    CANCEL_MARKER_INTERVAL,
    DISPATCH_PER_WORKER,
    STEP_STATES,
    job_logger,
    spool_reachable,
)
from syncd.engine.collection import Collection
from syncd.engine.intake import Intake
from syncd.engine.polling import Polling
from syncd.engine.requests import Requests
from syncd.engine.submission import Submission
from syncd.engine.takeover import Takeover
from syncd.errors import (
    AuthError,
    NotReady,
    PermanentError,
    TransientError,
)
from syncd.intake.spool import Spool
from syncd.log import logger
from syncd.state import journal
from syncd.state.share import Fenced
from syncd.state.store import (
    CLAIMED,
    CLAIMING,
    COLLECTING,
    REMOTE,
    STAGED,
    STAGING,
    SUBMITTING,
    TERMINAL,
    Due,
    Job,
    StoreUnwritable,
)
from syncd.storage.base import Storage


class Engine(Takeover, Intake, Submission, Polling, Requests, Collection):
    """The whole engine: the parts of a job's life, and the pump that dispatches their steps."""

    def reconfigure(self, config: Config, backends: Mapping[str, Backend], storages: Mapping[str, Storage]) -> None:
        """Apply a reloaded config. Jobs in flight keep the inbox, backend and storage they started with."""
        for inbox in config.inboxes:
            self.spools[inbox.name] = Spool(inbox)
            self.outboxes[inbox.name] = Outbox(inbox.outbox, self.store)
            self.spools[inbox.name].prepare()
            self.outboxes[inbox.name].root.mkdir(parents=True, exist_ok=True)
        self._inboxes.update({inbox.name: inbox for inbox in config.inboxes})
        replaced = [
            getattr(self.backends[name], "unwrapped", self.backends[name]) for name in backends if name in self.backends
        ]
        replaced += [
            getattr(self.storages[name], "unwrapped", self.storages[name]) for name in storages if name in self.storages
        ]
        self.backends.update({name: self._guard("backend", name, b) for name, b in backends.items()})
        for name, backend in backends.items():
            backend.watch(functools.partial(self.status_changed, name))
        self.storages.update({name: self._guard("storage", name, s) for name, s in storages.items()})
        self._probed.clear()
        self.config = config
        self.open_new_shares()
        self.retire(replaced)

    def prepare(self) -> None:
        """Create folders, clear temporary files, finish claims a crash interrupted."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.store.circuit_closed()  # breakers start closed: the first calls find out whether services answer
        for path in self.tmp_dir.iterdir():  # scratch files and folders of steps a crash interrupted
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for spool in self.spools.values():
            spool.prepare()
        for inbox in self._inboxes.values():
            journal.remove_leftovers(inbox.path, self.spools[inbox.name].tmp)
        for outbox in self.outboxes.values():
            outbox.prepare()
        self.prepare_share()
        for job in self.store.jobs([CLAIMING]):
            if Path(job.spool_path).exists():
                self.store.transition(job.id, CLAIMING, CLAIMED, "claim completed after a restart")
            elif spool_reachable(job):  # the rename never happened; while the share is away, nobody knows
                self.store.delete_unclaimed(job.id)
                self.unshare_job(job)

    def stop(self, timeout: float) -> bool:
        """Stop dispatching; wait up to ``timeout`` for running steps. True if all finished."""
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._local_executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._in_flight:
                    return True
            time.sleep(0.05)
        return False

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _on_this_machine(self, due: Due) -> bool:
        """Whether the job's backend and storage are both on this machine (its steps wait on no service)."""
        backend, storage = self.backends.get(due.backend), self.storages.get(due.storage)
        return backend is not None and storage is not None and not (backend.remote_service or storage.remote_service)

    def _dispatch(self, job_id: str, step: Callable[[str], None], *, local: bool = False) -> None:
        with self._lock:
            if job_id in self._in_flight or self._stopping.is_set():
                return
            self._in_flight.add(job_id)

        def run() -> None:
            try:
                step(job_id)
            except StoreUnwritable:
                pass  # logged once by the store; the step runs again once the store can record it
            except Fenced as exc:
                logger.bind(job_id=job_id).info("left alone: {}", exc)
            except Exception:
                logger.opt(exception=True).bind(job_id=job_id).error("unexpected error in a job step")
            finally:
                with self._lock:
                    self._in_flight.discard(job_id)
                self._done_with(job_id)
                self.wake()  # a worker is free: jobs the last pump had no room for can go

        def cancelled(future: Future) -> None:  # by stop(): ``run`` never ran, so nothing of it waits
            if future.cancelled():
                with self._lock:
                    self._in_flight.discard(job_id)
                self._done_with(job_id)

        try:
            (self._local_executor if local else self._executor).submit(run).add_done_callback(cancelled)
        except RuntimeError:  # executor shut down
            with self._lock:
                self._in_flight.discard(job_id)

    def pump(self) -> None:
        """Dispatch every step that is due. Called on a timer."""
        if self._stopping.is_set() or not self._store_writable() or not self.may_act_everywhere():
            return
        self._complete_claims()
        self.write_journals()
        now = self.clock()
        if now - self._markers_checked >= CANCEL_MARKER_INTERVAL:
            self._markers_checked = now
            for job in self.store.active_with_cancel_marker_candidates():
                if (Path(job.spool_path) / CANCEL_MARKER).exists():
                    self.store.request(job.id, "cancel")
                    job_logger(job).info("found a {} file; cancelling", CANCEL_MARKER)
        with self.store.snapshot():  # what is due, read at once
            requested = self.store.request_ids()
            # Bounded: with thousands of jobs waiting, one pass hands out only what the workers can take.
            due = self.store.due(STEP_STATES, now, limit=self.config.workers * DISPATCH_PER_WORKER)
            for name, backend in self.backends.items():
                room = backend.options.max_parallel - self.store.count([SUBMITTING, *REMOTE], backend=name)
                if room > 0:
                    due += self.store.due([STAGED], now, limit=room, backend=name)
            unfinished = self.store.unfinished_ids()
        for job_id in requested:
            self._dispatch(job_id, self.handle_requests)
        for item in due:
            self._dispatch(item.id, self.advance, local=self._on_this_machine(item))
        for job_id in unfinished:
            self._dispatch(job_id, self.finish)

    def run_until_idle(self, timeout: float = 60.0) -> None:
        """Pump and poll until nothing is due or in flight (used by ``syncd`` tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            for name in self.backends:
                self.poll_backend(name)
            time.sleep(0.05)
            if (
                not self.busy
                and not self.store.jobs([*STEP_STATES, STAGED, SUBMITTING, *REMOTE])
                and not self.store.unfinished_ids()
            ):
                return

    def advance(self, job_id: str) -> None:
        """Run the job's due steps one after another until it waits (on the backend, a slot or a retry)."""
        job = self.store.get(job_id)
        while not self._stopping.is_set():
            if job.next_at > self.clock() or not self._step(job):
                return
            was, job = job.state, self.store.get(job_id)
            if job.state in TERMINAL:
                self.finish(job_id)
                return
            if job.state == was:
                return

    def _step(self, job: Job) -> bool:
        steps = {
            CLAIMED: self._validate,
            STAGING: self._stage,
            STAGED: self._start_submit,
            SUBMITTING: self._submit,
            COLLECTING: self._collect,
        }
        step = steps.get(job.state)
        if step is None:
            return False
        if job.state in (CLAIMED, STAGING) and not Path(job.spool_path).exists():
            if not spool_reachable(job):
                self._transient(
                    job,
                    TransientError(
                        f"the inbox filesystem that holds {job.spool_path} is not reachable (an unmounted share?); "
                        f"the job waits until it is back"
                    ),
                )
                return False
            self._hold(
                job,
                f"its claimed folder {job.spool_path} was moved or removed before the job was "
                f"submitted. Move it into the inbox (syncd recognises it and resumes the job), or back to "
                f"{job.spool_path} and run '{self.command('retry', job)}'; or '{self.command('cancel', job)}'",
            )
            return False
        if (paused := self._paused_until(job.backend)) is not None:
            self.store.update(job.id, expect=job.state, next_at=paused)
            return False
        if not self.may_act(job.inbox):
            return False  # this daemon's lease on the share is not confirmed: the job may be another's now
        try:
            step(job)
        except StoreUnwritable:
            return False  # nothing more is done until the store can record it; the step is idempotent
        except Fenced:
            return False  # another daemon took the job over meanwhile (its transition was not shared)
        except NotReady as exc:
            self._not_ready(job, exc)
        except AuthError as exc:
            self._pause_backend(job.backend, exc)
            self.store.update(job.id, expect=job.state, next_at=self._paused_until(job.backend) or 0, error=str(exc))
        except PermanentError as exc:
            self._permanent(job, exc)
        except TransientError as exc:
            self._transient(job, exc, exc.retry_after)
        except OSError as exc:
            self._transient(job, exc)
        except Exception as exc:
            job_logger(job).opt(exception=True).error("step {} failed unexpectedly", job.state)
            self._transient(job, exc)
        else:
            if job.state in (STAGED, SUBMITTING, CLAIMED):
                self._backend_answered(job.backend)
            return True
        return False
