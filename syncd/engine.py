"""The life of a job, as idempotent steps over saved state.

Each step reads the job from the store, skips what is already done, does its
work, and persists the next state; every transition is written before the side
effect that depends on it. The scheduler calls :meth:`Engine.pump` (dispatch
due steps to worker threads) and :meth:`Engine.poll_backend` (one batched status
request per backend) on timers. Failures are classified by the backends and
storages; the retry policy lives here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from syncd.log import logger

from syncd import deliver, journal
from syncd.backends.base import Backend, JobSpec, RemoteRef, RemoteState, RemoteStatus
from syncd.breaker import CircuitBreaker, CircuitState, Guarded, ServiceUnavailable
from syncd.config import Config, InboxConfig
from syncd.crashpoints import CrashPoints
from syncd.errors import AuthError, InputError, ManifestError, PermanentError, TransientError
from syncd.manifest import Manifest, load_job_directory
from syncd.outbox import RESULT_RECORD, Outbox
from syncd.observe import Metrics
from syncd.retry import backoff_delay, budget_spent
from syncd.spool import Spool
from syncd.storage.base import Storage
from syncd.store import (
    CANCELLED, CLAIMED, CLAIMING, COLLECTING, FAILED, HELD, QUEUED, REJECTED, REMOTE, RUNNING, STAGED,
    STAGING, SUBMITTED, SUBMITTING, SUCCEEDED, TERMINAL, TIMED_OUT, VALIDATED, Job, Store, StoreUnwritable,
    local_iso,
)

STEP_STATES = (CLAIMED, STAGING, SUBMITTING, COLLECTING)
MAX_UNKNOWN_POLLS = 5
CANCEL_MARKER = "CANCEL"  # a folder verb: this file in a claimed job's folder cancels it
CANCEL_MARKER_INTERVAL = 2.0
DISPATCH_PER_WORKER = 8
PROBE_INTERVAL = 60.0
STORE_CHECK_INTERVAL = 1.0  # while the state database refuses writes, how often one test write is tried
TIMEOUT_GRACE = 2.0  # lets a backend that enforces the timeout itself report it first
OUTCOME = {
    RemoteState.SUCCEEDED: SUCCEEDED, RemoteState.FAILED: FAILED,
    RemoteState.CANCELLED: CANCELLED, RemoteState.TIMED_OUT: TIMED_OUT,
}


def new_job_id(now: float | None = None) -> str:
    """Sortable and short: creation time to the second plus random hex."""
    stamp = datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def job_logger(job: Job):
    return logger.bind(job_id=job.id, job_name=job.name)


class Engine:
    def __init__(self, config: Config, store: Store, backends: Mapping[str, Backend],
                 storages: Mapping[str, Storage], clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, crash_points: CrashPoints | None = None):
        self.config = config
        self.crash_points = crash_points or CrashPoints()
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self.backends = {name: self._guard("backend", name, b) for name, b in backends.items()}
        self.storages = {name: self._guard("storage", name, s) for name, s in storages.items()}
        self._inboxes = {inbox.name: inbox for inbox in config.inboxes}
        self.spools = {inbox.name: Spool(inbox) for inbox in config.inboxes}
        self.outboxes = {inbox.name: Outbox(inbox.outbox, store) for inbox in config.inboxes}
        self.tmp_dir = config.state_dir / "tmp"
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="syncd-step")
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._folder_lock = threading.Lock()
        self._stopping = threading.Event()
        self._probed: dict[str, float] = {}  # backend → when it last answered a probe
        self._markers_checked = 0.0
        self._store_checked = 0.0

    def _inbox(self, name: str) -> InboxConfig:
        """An inbox's config, also for inboxes a reload removed while their jobs are still in flight."""
        return self._inboxes[name]

    def reconfigure(self, config: Config, backends: Mapping[str, Backend], storages: Mapping[str, Storage]) -> None:
        """Apply a reloaded config. Jobs in flight keep the inbox, backend and storage they started with."""
        for inbox in config.inboxes:
            self.spools[inbox.name] = Spool(inbox)
            self.outboxes[inbox.name] = Outbox(inbox.outbox, self.store)
            self.spools[inbox.name].prepare()
            self.outboxes[inbox.name].root.mkdir(parents=True, exist_ok=True)
        self._inboxes.update({inbox.name: inbox for inbox in config.inboxes})
        self.backends.update({name: self._guard("backend", name, b) for name, b in backends.items()})
        self.storages.update({name: self._guard("storage", name, s) for name, s in storages.items()})
        self._probed.clear()
        self.config = config

    def _guard(self, kind: str, name: str, target: Any) -> Any:
        """Put a backend or storage that talks to a remote service behind its circuit breaker (kept across
        reloads)."""
        if not target.remote_service:
            return target
        service = f"{kind} {name}"
        breaker = self._breakers.get(service)
        if breaker is None:
            breaker = CircuitBreaker(service, self.config.retry, self.config.retry.circuit_after, self.clock,
                                     on_change=functools.partial(self._circuit_changed, kind, name))
            self._breakers[service] = breaker
        breaker.policy = self.config.retry
        breaker.threshold = self.config.retry.circuit_after
        return Guarded(target, breaker, target.remote_calls)

    def _circuit_changed(self, kind: str, name: str, circuit: CircuitState) -> None:
        if circuit.state == "closed":
            self.store.circuit_closed(circuit.service)
            woken = self.store.wake_waiting(self.clock(), **{kind: name})
            logger.info("{} answers again; calling it again ({} waiting job(s) resumed)", circuit.service, woken)
        else:
            first = circuit.service not in self.store.open_circuits()
            self.store.circuit_opened(circuit.service, circuit.since or self.clock(), circuit.next_probe or 0.0,
                                      circuit.reason or "")
            logger.log("ERROR" if first else "DEBUG", "{} is not answering ({}); its jobs wait and syncd probes "
                       "it once at {}", circuit.service, circuit.reason, local_iso(circuit.next_probe))
        if self.metrics is not None:
            self.metrics.circuit_open.labels(circuit.service).set(0 if circuit.state == "closed" else 1)

    def on_transition(self, job: Job) -> None:
        """Called by the store after every committed transition."""
        self.crash_points.reached(f"after:{job.state}")
        if self.metrics is not None:
            self.metrics.transitions.labels(job.state).inc()
        inbox = self._inbox(job.inbox)
        if inbox.journal:
            folder = self.outboxes[job.inbox].path_for(job.bucket, job.folder) if job.folder else None
            journal.update(inbox.path, job, folder)

    # -- start and stop ---------------------------------------------------------------
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
            journal.remove_leftovers(inbox.path)
        for outbox in self.outboxes.values():
            outbox.prepare()
        for job in self.store.jobs([CLAIMING]):
            if Path(job.spool_path).exists():
                self.store.transition(job.id, CLAIMING, CLAIMED, "claim completed after a restart")
            elif _spool_reachable(job):  # the rename never happened; while the share is away, nobody knows
                self.store.delete_unclaimed(job.id)

    def stop(self, timeout: float) -> bool:
        """Stop dispatching; wait up to ``timeout`` for running steps. True if all finished."""
        self._stopping.set()
        self._executor.shutdown(wait=False, cancel_futures=True)
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

    # -- intake ----------------------------------------------------------------------
    def claim(self, inbox: InboxConfig, path: Path) -> bool:
        """Take a settled job directory out of the inbox. False if it was gone already."""
        if self._stopping.is_set() or not self._store_writable():
            return False  # a claim nobody could record would be a job nobody follows
        spool = self.spools[inbox.name]
        try:
            st = path.lstat()
        except FileNotFoundError:
            return True
        identity = f"{st.st_dev}:{st.st_ino}"
        if (owner := self.store.unfinished_with_folder(identity)) is not None \
                and not Path(owner.spool_path).exists():
            return self._return_folder(owner, path)
        job_id = new_job_id()
        raw = os.fsencode(path.name)
        shown = raw.decode("utf-8", "backslashreplace")  # text for the store, logs and reports
        try:
            job = self.store.create_job(
                id=job_id, name=shown, dir_name=shown, dir_raw=None if shown == path.name else raw,
                inbox=inbox.name, backend=inbox.backend, storage=inbox.storage, bucket=inbox.bucket,
                spool_path=str(spool.claimed / job_id), dir_identity=identity,
            )
        except StoreUnwritable:
            return False
        try:
            spool.claim(path, job_id)
        except FileNotFoundError:
            self.store.delete_unclaimed(job_id)
            return True
        except OSError:
            self.store.delete_unclaimed(job_id)
            raise
        self.crash_points.reached("claimed-unrecorded")
        try:
            self.store.transition(job_id, CLAIMING, CLAIMED, f"claimed from {path}")
        except StoreUnwritable:
            return True  # the folder is in the spool: the pump completes the claim once the store can write
        job_logger(job).info("claimed job directory {}", path)
        return True

    def _return_folder(self, job: Job, path: Path) -> bool:
        """The claimed folder of a job in flight was moved back into the inbox: put it back, never run it twice."""
        os.rename(path, job.spool_path)
        job_logger(job).warning("the folder {} is job {}'s claimed folder, moved out of {} while the job was {}; "
                                "moved it back. Leave folders under {} alone: a job runs once", path, job.id,
                                job.spool_path, job.state, Path(job.spool_path).parent)
        self.store.update(job.id, event=f"claimed folder came back as {path}; moved back to {job.spool_path}")
        if job.state == HELD:
            self.store.request(job.id, "retry")
        return True

    # -- dispatch ----------------------------------------------------------------------
    def _dispatch(self, job_id: str, step: Callable[[str], None]) -> None:
        with self._lock:
            if job_id in self._in_flight or self._stopping.is_set():
                return
            self._in_flight.add(job_id)

        def run() -> None:
            try:
                step(job_id)
            except StoreUnwritable:
                pass  # logged once by the store; the step runs again once the store can record it
            except Exception:
                logger.opt(exception=True).bind(job_id=job_id).error("unexpected error in a job step")
            finally:
                with self._lock:
                    self._in_flight.discard(job_id)

        try:
            self._executor.submit(run)
        except RuntimeError:  # executor shut down
            with self._lock:
                self._in_flight.discard(job_id)

    def pump(self) -> None:
        """Dispatch every step that is due. Called on a timer."""
        if self._stopping.is_set() or not self._store_writable():
            return
        self._complete_claims()
        now = self.clock()
        if now - self._markers_checked >= CANCEL_MARKER_INTERVAL:
            self._markers_checked = now
            for job in self.store.active_with_cancel_marker_candidates():
                if (Path(job.spool_path) / CANCEL_MARKER).exists():
                    self.store.request(job.id, "cancel")
                    job_logger(job).info("found a {} file; cancelling", CANCEL_MARKER)
        for job in self.store.requests():
            self._dispatch(job.id, self.handle_requests)
        # Bounded: with thousands of jobs waiting, one pass hands out only what the workers can take.
        for job in self.store.due(STEP_STATES, now, limit=self.config.workers * DISPATCH_PER_WORKER):
            self._dispatch(job.id, self.advance)
        for name, backend in self.backends.items():
            room = backend.options.max_parallel - self.store.count([SUBMITTING, *REMOTE], backend=name)
            if room > 0:
                for job in self.store.due([STAGED], now, limit=room, backend=name):
                    self._dispatch(job.id, self.advance)
        for job in self.store.unfinished():
            self._dispatch(job.id, self.finish)

    def _store_writable(self) -> bool:
        """False while the state database refuses writes: then no step runs, so no side effect happens
        whose state change could not be recorded. One test write per interval finds out when it can."""
        if self.store.write_problem is None:
            return True
        if time.monotonic() - self._store_checked < STORE_CHECK_INTERVAL:
            return False
        self._store_checked = time.monotonic()
        return self.store.check_writable()

    def _complete_claims(self) -> None:
        """Record claims whose rename happened but whose record could not be written at the time."""
        for job in self.store.jobs([CLAIMING]):
            if Path(job.spool_path).exists():
                self.store.transition(job.id, CLAIMING, CLAIMED, "claim completed once the store could record it")

    def run_until_idle(self, timeout: float = 60.0) -> None:
        """Pump and poll until nothing is due or in flight (used by ``syncd`` tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pump()
            for name in self.backends:
                self.poll_backend(name)
            time.sleep(0.05)
            if not self.busy and not self.store.jobs([*STEP_STATES, STAGED, SUBMITTING, *REMOTE]) \
                    and not self.store.unfinished():
                return

    # -- one step ----------------------------------------------------------------------
    def advance(self, job_id: str) -> None:
        """Run the job's due steps one after another until it waits (on the backend, a slot or a retry)."""
        while not self._stopping.is_set():
            job = self.store.get(job_id)
            if job.next_at > self.clock() or not self._step(job):
                return
            now_state = self.store.get(job_id).state
            if now_state in TERMINAL:
                self.finish(job_id)
                return
            if now_state == job.state:
                return

    def _step(self, job: Job) -> bool:
        steps = {CLAIMED: self._validate, STAGING: self._stage, STAGED: self._start_submit,
                 SUBMITTING: self._submit, COLLECTING: self._collect}
        step = steps.get(job.state)
        if step is None:
            return False
        if job.state in (CLAIMED, STAGING) and not Path(job.spool_path).exists():
            if not _spool_reachable(job):
                self._transient(job, TransientError(
                    f"the inbox filesystem that holds {job.spool_path} is not reachable (an unmounted share?); "
                    f"the job waits until it is back"))
                return False
            self._hold(job, f"its claimed folder {job.spool_path} was moved or removed before the job was "
                            f"submitted. Move it into the inbox (syncd recognises it and resumes the job), or back to "
                            f"{job.spool_path} and run 'syncd retry {job.id}'; or 'syncd cancel {job.id}'")
            return False
        if (paused := self._paused_until(job.backend)) is not None:
            self.store.update(job.id, expect=job.state, next_at=paused)
            return False
        try:
            step(job)
        except StoreUnwritable:
            return False  # nothing more is done until the store can record it; the step is idempotent
        except AuthError as exc:
            self._pause_backend(job.backend, exc)
            self.store.update(job.id, expect=job.state, next_at=self._paused_until(job.backend) or 0,
                              error=str(exc))
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

    def _paused_until(self, backend: str) -> float | None:
        pause = self.store.backend_pauses().get(backend)
        return pause[0] if pause and pause[0] > self.clock() else None

    def _pause_backend(self, backend: str, exc: Exception) -> None:
        """Refused credentials stop all work on a backend (one probe per pause), burning no job's retries."""
        until = self.clock() + self.config.retry.max
        reason = f"credentials refused: {exc}. Fix them in the config; syncd tries again every " \
                 f"{self.config.retry.max:.0f}s"
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
            self._hold(job, f"still failing after {failures} attempts over "
                            f"{int(now - failing_since)}s: {exc}. Fix the cause, then run 'syncd retry {job.id}'")
            return
        delay = backoff_delay(self.config.retry, failures, retry_after)
        if self.metrics is not None:
            self.metrics.retries.labels(job.backend, job.state).inc()
            self.metrics.errors.labels(job.backend, type(exc).__name__).inc()
        # An open circuit was logged once for all its jobs.
        job_logger(job).log("DEBUG" if isinstance(exc, ServiceUnavailable) else "WARNING",
                            "{} failed ({}); retry {} in {:.1f}s", job.state, exc, failures, delay)
        self.store.update(job.id, expect=job.state, failures=failures, failing_since=failing_since,
                          next_at=now + delay, error=str(exc),
                          event=f"transient failure in {job.state}: {exc}; retrying in {delay:.1f}s")

    def _permanent(self, job: Job, exc: Exception) -> None:
        job = self.store.get(job.id)
        if job.state in (STAGING, STAGED, SUBMITTING):
            job_logger(job).error("{}: {}", job.state, exc)
            self.store.transition(job.id, job.state, COLLECTING, f"cannot run: {exc}", outcome=FAILED,
                                  error=str(exc), message=str(exc), next_at=0)
        else:
            self._hold(job, f"{exc}. Fix the cause, then run 'syncd retry {job.id}'")

    def _hold(self, job: Job, reason: str) -> None:
        job = self.store.get(job.id)
        if job.state in TERMINAL or job.state == HELD:
            return
        job_logger(job).error("held for attention: {}", reason)
        self.store.transition(job.id, job.state, HELD, f"held: {reason}", held_from=job.state, error=reason)

    def _clear_failures(self) -> dict[str, Any]:
        return {"failures": 0, "failing_since": None, "error": None}

    # -- validate ----------------------------------------------------------------------
    def spec(self, job: Job) -> JobSpec:
        manifest = Manifest.model_validate(job.manifest_data)
        return JobSpec(
            job_id=job.id, name=job.name, submit_key=job.submit_key, attempt=job.attempts,
            command=manifest.command if isinstance(manifest.command, str) else tuple(manifest.command),
            env=dict(manifest.env), timeout=manifest.timeout,
            resources=manifest.resources.model_dump(exclude_none=True),
            outputs=tuple(manifest.outputs) if manifest.outputs is not None else None,
        )

    def _load(self, job: Job):
        inbox = self._inbox(job.inbox)
        return load_job_directory(Path(job.spool_path), max_files=inbox.max_input_files,
                                  max_bytes=inbox.max_input_bytes, default_name=job.dir_name)

    def _validate(self, job: Job) -> None:
        inbox = self._inbox(job.inbox)
        try:
            directory = self._load(job)
            manifest_json = json.dumps(directory.manifest.model_dump(mode="json"))
            spec = self.spec(_with(job, name=directory.name, manifest=manifest_json, attempts=1))
            if problems := self.backends[job.backend].check(spec):
                raise ManifestError(job.spool_path, problems)
        except ManifestError as exc:
            self._reject(job, exc.problems)
            return
        with self._folder_lock:
            folder = self._reserve_folder(inbox, directory.name)
            if directory.manifest.dry_run:
                self.store.transition(
                    job.id, CLAIMED, COLLECTING, f"dry run: valid; report goes to {inbox.bucket}/{folder}/",
                    name=directory.name, manifest=manifest_json, folder=folder, outcome=VALIDATED,
                    message=f"dry run: valid, {len(directory.inputs)} input file(s); nothing was run",
                    ended_at=self.clock(), next_at=0)
                return
            self.store.transition(
                job.id, CLAIMED, STAGING, f"valid; results will go to {inbox.bucket}/{folder}/",
                name=directory.name, manifest=manifest_json, folder=folder,
                priority=directory.manifest.priority, attempts=1,
            )
        job_logger(_with(job, name=directory.name)).info(
            "valid: {} input file(s); results to {}/{}/", len(directory.inputs), inbox.bucket, folder)

    def _reserve_folder(self, inbox: InboxConfig, name: str) -> str:
        storage = self.storages[inbox.storage]
        outbox = self.outboxes[inbox.name]
        base = f"{inbox.prefix}/{name}" if inbox.prefix else name
        candidate, n = base, 1
        while (self.store.folder_in_use(inbox.storage, inbox.bucket, candidate)
               or outbox.path_for(inbox.bucket, candidate).exists()
               or _any(storage.list(inbox.bucket, candidate + "/"))):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _reject(self, job: Job, problems: list[str]) -> None:
        job_logger(job).warning("rejected: {}", "; ".join(problems))
        self.store.transition(job.id, job.state, REJECTED, "rejected: " + "; ".join(problems),
                              error="; ".join(problems), message=json.dumps(problems), outcome=REJECTED,
                              ended_at=self.clock())

    # -- stage and submit -----------------------------------------------------------------
    def _stage(self, job: Job) -> None:
        try:
            directory = self._load(job)
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
        self.store.transition(job.id, STAGING, STAGED, f"staged {len(directory.inputs)} input file(s)",
                              next_at=0, **self._clear_failures())

    def _preflight(self, job: Job) -> None:
        """Before submitting: the outbox can take results and the backend accepts us, or the job waits."""
        inbox = self._inbox(job.inbox)
        outbox = self.outboxes[job.inbox].root
        try:
            probe = outbox / ".syncd-tmp" / f"preflight-{job.id}"
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
            free = shutil.disk_usage(outbox).free
        except OSError as exc:
            raise TransientError(f"outbox {outbox} is not writable ({exc.strerror}); results would have nowhere "
                                 f"to go, so the job waits") from None
        if free < inbox.min_free_space:
            raise TransientError(f"outbox {outbox} has {free // 2**20} MiB free, less than min_free_space "
                                 f"({inbox.min_free_space // 2**20} MiB); the job waits until there is room")
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
        self._submit(self.store.get(job.id))

    def _submit(self, job: Job) -> None:
        backend = self.backends[job.backend]
        spec = self.spec(job)
        started = time.monotonic()
        ref = backend.find(spec)
        how = "found after a restart" if ref else "submitted"
        if ref is None:
            ref = backend.submit(spec)
            self.crash_points.reached("submitted-unrecorded")
        if self.metrics is not None:
            self.metrics.submit_seconds.labels(job.backend).observe(time.monotonic() - started)
        now = self.clock()
        first = self.config.poll.first
        self.store.transition(
            job.id, SUBMITTING, SUBMITTED, f"{how} as {ref.remote_id}", remote_id=ref.remote_id,
            handle=json.dumps(dict(ref.handle)), submitted_at=now, next_at=now + first, poll_interval=first,
            **self._clear_failures(),
        )
        job_logger(job).info("{} to backend {} as {}", how, job.backend, ref.remote_id)

    # -- poll -----------------------------------------------------------------------------
    def poll_backend(self, name: str) -> None:
        """One batched status request for every due job of backend ``name``."""
        if self._stopping.is_set() or not self._store_writable():
            return
        now = self.clock()
        if self._paused_until(name) is not None:
            return
        due = [j for j in self.store.jobs(REMOTE, backend=name) if j.next_at <= now]
        if not due:
            return
        backend = self.backends[name]
        started = time.monotonic()
        try:
            statuses = backend.poll([RemoteRef(j.remote_id, j.handle_data) for j in due])
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
        for job in due:
            status = statuses.get(job.remote_id) or RemoteStatus(RemoteState.UNKNOWN, "not reported")
            try:
                self._apply(job, status, now)
            except StoreUnwritable:
                return
            except Exception:
                job_logger(job).opt(exception=True).error("applying status {} failed", status)

    def _apply(self, job: Job, status: RemoteStatus, now: float) -> None:
        log = job_logger(job)
        first, poll = self.config.poll.first, self.config.poll
        if status.state.terminal:
            outcome = OUTCOME[status.state]
            if job.deadline_hit and outcome in (CANCELLED, FAILED):
                outcome = TIMED_OUT  # syncd stopped it at the manifest's timeout
            retries = Manifest.model_validate(job.manifest_data).retries
            if outcome in (FAILED, TIMED_OUT) and job.attempts <= retries and not job.cancel_requested:
                self.backends[job.backend].cleanup(RemoteRef(job.remote_id, job.handle_data))
                if self.store.transition(
                    job.id, job.state, STAGING,
                    f"attempt {job.attempts} {outcome} (exit code {status.exit_code}); "
                    f"retrying as attempt {job.attempts + 1} of {retries + 1}",
                    attempts=job.attempts + 1, remote_id=None, handle=None, next_at=0, deadline_hit=0,
                    started_at=None, **self._clear_failures(),
                ):
                    log.warning("attempt {} {}; retrying", job.attempts, outcome)
                return
            if self.store.transition(
                job.id, job.state, COLLECTING, f"{status.native}: {outcome}"
                + (f", exit code {status.exit_code}" if status.exit_code is not None else "")
                + (f" ({status.message})" if status.message else ""),
                outcome=outcome, exit_code=status.exit_code, remote_state=status.native,
                message=status.message or None, started_at=job.started_at or status.started,
                ended_at=status.ended or now, next_at=0, **self._clear_failures(),
            ):
                log.info("{} (exit code {}); collecting results", outcome, status.exit_code)
            return
        if status.state is RemoteState.UNKNOWN:
            failures = job.failures + 1
            if failures >= MAX_UNKNOWN_POLLS:
                self._hold(job, f"backend {job.backend} no longer knows {job.remote_id} ({status.message or status.native}); "
                                f"a vanished job is not a finished one. Check the service, then "
                                f"'syncd retry {job.id}' or 'syncd cancel {job.id}'")
                return
            self.store.update(job.id, expect=job.state, failures=failures, failing_since=job.failing_since or now,
                              next_at=now + backoff_delay(self.config.retry, failures))
            return
        new_state = RUNNING if status.state is RemoteState.RUNNING else QUEUED
        if new_state == RUNNING and self._deadline_passed(job, status, now):
            self.backends[job.backend].cancel(RemoteRef(job.remote_id, job.handle_data))
            self.store.update(job.id, deadline_hit=1, next_at=now + first,
                              event=f"timeout reached after {now - (job.started_at or status.started or now):.0f}s "
                                    f"of running; cancelling")
            log.warning("timeout reached; cancelling")
            return
        if new_state != job.state:
            started = job.started_at or (status.started or now if new_state == RUNNING else None)
            self.store.transition(job.id, job.state, new_state, f"{status.native}", remote_state=status.native,
                                  started_at=started, next_at=now + first, poll_interval=first,
                                  **self._clear_failures())
            log.info("{}", new_state)
        else:
            interval = min(poll.max, (job.poll_interval or first) * poll.factor)
            self.store.update(job.id, expect=job.state, next_at=now + interval, poll_interval=interval,
                              failures=0, failing_since=None)

    def _deadline_passed(self, job: Job, status: RemoteStatus, now: float) -> bool:
        """The manifest's timeout, enforced here too: schedulers count in minutes, some not at all."""
        if job.deadline_hit:
            return False
        timeout = Manifest.model_validate(job.manifest_data).timeout
        started = job.started_at or status.started
        return bool(timeout and started and now - started >= timeout + TIMEOUT_GRACE)

    # -- cancel and retry requests -----------------------------------------------------------
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
        # SUBMITTING: wait until the remote id is known, then the next pump sends it.

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

    # -- collect ---------------------------------------------------------------------------
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

    # -- finish -----------------------------------------------------------------------------
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


def _with(job: Job, **changes: Any) -> Job:
    return replace(job, **changes)


def _spool_reachable(job: Job) -> bool:
    """Whether the filesystem the job was claimed on is the one mounted now (False while a share is away:
    its mount point is then missing, or an empty folder on another device)."""
    try:
        device = Path(job.spool_path).parent.stat().st_dev
    except OSError:
        return False
    return job.dir_identity is None or device == int(job.dir_identity.split(":", 1)[0])


def _any(iterable) -> bool:
    return any(True for _ in iterable)
