"""What every part of the engine shares: its configuration, the store, guarded backends and storages, and the job's spec."""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncd.backends.base import Backend, JobSpec, RemoteRef, RemoteState, StagingArea
from syncd.config import Config, InboxConfig
from syncd.delivery.outbox import Outbox
from syncd.engine.breaker import (
    CircuitBreaker,
    CircuitState,
    Guarded,
)
from syncd.engine.crashpoints import CrashPoints
from syncd.engine.lanes import Lanes
from syncd.intake.manifest import JobDirectory, Manifest, load_job_directory
from syncd.intake.spool import Spool
from syncd.log import logger
from syncd.service.observe import Metrics
from syncd.state import journal
from syncd.state.store import (
    CANCELLED,
    CLAIMED,
    COLLECTING,
    FAILED,
    STAGING,
    SUBMITTING,
    SUCCEEDED,
    TERMINAL,
    TIMED_OUT,
    Job,
    Store,
)
from syncd.state.summary import local_iso
from syncd.storage.base import Storage

STEP_STATES = (CLAIMED, STAGING, SUBMITTING, COLLECTING)
MAX_UNKNOWN_POLLS = 5
CANCEL_MARKER = "CANCEL"  # a folder verb: this file in a claimed job's folder cancels it
CANCEL_MARKER_INTERVAL = 2.0
DISPATCH_PER_WORKER = 8
#: threads for the steps of jobs whose backend and storage are both on this machine (the local backend, a
#: folder storage): those steps are system calls and the interpreter's work, which threads side by side
#: only take turns at (each wait on the disk hands the interpreter lock to another). The second takes a
#: step only while the first has been busy with one for LOCAL_STEP_STALL seconds (see engine.lanes);
#: steps that wait on a service run on the ``workers`` threads
LOCAL_STEP_THREADS = 2
LOCAL_STEP_STALL = 0.1
PROBE_INTERVAL = 60.0
SCAN_REUSE = 1.0  # seconds a validation's reading of a job folder serves its staging
MANIFEST_CACHE = 256  # validated manifests kept for the steps of the jobs under way
#: how long an outbox that took a probe file counts as writable (a burst of jobs shares one probe)
OUTBOX_PROBE_INTERVAL = 1.0
STORE_CHECK_INTERVAL = 1.0  # while the state database refuses writes, how often one test write is tried
JOURNAL_DELAY = 1.0  # seconds from a job's change of state to its journal's rewrite
TIMEOUT_GRACE = 2.0  # lets a backend that enforces the timeout itself report it first
OUTCOME = {
    RemoteState.SUCCEEDED: SUCCEEDED,
    RemoteState.FAILED: FAILED,
    RemoteState.CANCELLED: CANCELLED,
    RemoteState.TIMED_OUT: TIMED_OUT,
}


def new_job_id(now: float | None = None) -> str:
    """Sortable and short: creation time to the second plus random hex."""
    stamp = datetime.fromtimestamp(now or time.time(), UTC).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def job_logger(job: Job):
    return logger.bind(job_id=job.id, job_name=job.name)


def remote_ref(job: Job) -> RemoteRef:
    """The reference the backend gave the job's current attempt (only for jobs that reached the service)."""
    if job.remote_id is None:
        raise ValueError(f"job {job.id} has no remote id")
    return RemoteRef(job.remote_id, job.handle_data)


def job_with(job: Job, **changes: Any) -> Job:
    return replace(job, **changes)


def spool_reachable(job: Job) -> bool:
    """Whether the filesystem the job was claimed on is the one mounted now (False while a share is away:
    its mount point is then missing, or an empty folder on another device)."""
    try:
        device = Path(job.spool_path).parent.stat().st_dev
    except OSError:
        return False
    return job.dir_identity is None or device == int(job.dir_identity.split(":", 1)[0])


def has_any(iterable) -> bool:
    return any(True for _ in iterable)


class EngineBase:
    """Shared by the parts of the engine: config, store, guarded services, folders, the spec of a job."""

    def __init__(
        self,
        config: Config,
        store: Store,
        backends: Mapping[str, Backend],
        storages: Mapping[str, Storage],
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        crash_points: CrashPoints | None = None,
    ):
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
        #: job id → (files done, files, bytes done, bytes) of deliveries under way (the status page shows them)
        self.transfers: dict[str, tuple[int, int, int, int]] = {}
        self._executor = ThreadPoolExecutor(config.workers, thread_name_prefix="syncd-step")
        self._local_executor = Lanes(min(LOCAL_STEP_THREADS, config.workers), LOCAL_STEP_STALL, "syncd-local-step")
        self._in_flight: set[str] = set()
        self._holding: set[str] = set()  # polls and mirror passes under way (see holding)
        #: backends and storages a reload replaced, each closed once the work under way when it was replaced
        #: (steps by job id, polls, mirror passes) is done: that work may still be using it
        self._retired: list[tuple[Any, set[str]]] = []
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._folder_lock = threading.Lock()
        self._stopping = threading.Event()
        self._cancel_tries: dict[str, int] = {}  # job → failed cancel requests in a row (backoff)
        self._cancel_retry_at: dict[str, float] = {}
        self._requests_shared: dict[str, tuple[int, int]] = {}  # job → the requests its handoff record holds
        self._probed: dict[str, float] = {}  # backend → when it last answered a probe
        self._scans: dict[str, tuple[float, JobDirectory]] = {}  # job → its validation's reading (see _keep_scan)
        self._manifests: dict[str, Manifest] = {}  # manifest JSON → validated (see _manifest), oldest first
        self._outbox_probed: dict[Path, float] = {}  # outbox → when a probe file was last written into it
        self._markers_checked = 0.0
        self._finish_retry: dict[str, tuple[int, float]] = {}  # job → (failed finishing tries, next try)
        self._store_checked = 0.0
        self._claims_unrecorded = False  # a claim's folder is in the spool, its record still says claiming
        #: set by the daemon: called whenever there is work for the pump (a claim, a transition, a status
        #: hint), so that it runs now rather than at its next tick
        self.wake: Callable[[], None] = lambda: None
        self._journals_due: dict[str, float] = {}  # job id → when its journal is to be written
        self._journals_left_alone: set[str] = set()  # unfinished jobs whose journal path holds a user's entry
        self._status_hints: dict[str, dict[str, float]] = {}  # backend → remote id → when it was heard
        self._poll_locks: dict[str, threading.Lock] = {}
        self._poll_again: set[str] = set()
        self._shares: dict[str, Any] = {}  # inbox → its share (leases, handoff records): see engine.takeover
        for name, backend in self.backends.items():
            backend.watch(functools.partial(self.status_changed, name))

    @contextlib.contextmanager
    def holding(self, key: str) -> Iterator[None]:
        """Mark work other than a job's step that may use a backend or storage for a while (``poll:<backend>``,
        ``mirror:<name>``), so that one a reload replaces meanwhile is closed only after it."""
        with self._lock:
            self._holding.add(key)
        try:
            yield
        finally:
            with self._lock:
                self._holding.discard(key)
            self._done_with(key)

    def retire(self, replaced: list[Any]) -> None:
        """Close what a reload replaced once nothing started before the reload can still be using it."""
        with self._lock:
            waiting = self._in_flight | self._holding
            if waiting and replaced:
                self._retired.append((replaced, set(waiting)))
                return
        self._close(replaced)

    def _done_with(self, key: str) -> None:
        """Work ``key`` ended: close what was retired while it ran, once nothing else it waited for runs."""
        ready: list[Any] = []
        with self._lock:
            for replaced, waiting in self._retired:
                waiting.discard(key)
                if not waiting:
                    ready.extend(replaced)
            self._retired = [(replaced, waiting) for replaced, waiting in self._retired if waiting]
        self._close(ready)

    def close_retired(self) -> None:
        """Close whatever a reload replaced, whether or not work still holds it (at shutdown)."""
        with self._lock:
            left, self._retired = self._retired, []
        self._close([item for replaced, _waiting in left for item in replaced])

    @staticmethod
    def _close(replaced: list[Any]) -> None:
        for item in replaced:
            try:
                item.close()
            except Exception as exc:  # noqa: BLE001 - a replaced part that fails to close must not stop the rest
                logger.warning(
                    "closing {} '{}', which a reload replaced, failed: {}", type(item).__name__, item.name, exc
                )

    def status_changed(self, backend: str, remote_id: str) -> None:
        """A backend's hint that a job's status may have changed: poll it at once (see Backend.watch)."""
        with self._lock:
            self._status_hints.setdefault(backend, {})[remote_id] = time.monotonic()
        self.wake()

    def hinted_backends(self) -> list[str]:
        """Backends with jobs to poll at once."""
        with self._lock:
            return [name for name, hints in self._status_hints.items() if hints]

    def _inbox(self, name: str) -> InboxConfig:
        """An inbox's config, also for inboxes a reload removed while their jobs are still in flight."""
        return self._inboxes[name]

    def _guard(self, kind: str, name: str, target: Any) -> Any:
        """Put a backend or storage that talks to a remote service behind its circuit breaker (kept across
        reloads)."""
        if not target.remote_service:
            return target
        service = f"{kind} {name}"
        breaker = self._breakers.get(service)
        if breaker is None:
            breaker = CircuitBreaker(
                service,
                self.config.retry,
                self.config.retry.circuit_after,
                self.clock,
                on_change=functools.partial(self._circuit_changed, kind, name),
            )
            self._breakers[service] = breaker
        breaker.policy = self.config.retry
        breaker.threshold = self.config.retry.circuit_after
        return Guarded(target, breaker, target.remote_calls)

    def _circuit_changed(self, kind: str, name: str, circuit: CircuitState) -> None:
        if circuit.state == "closed":
            self.store.circuit_closed(circuit.service)
            woken = self.store.wake_waiting(self.clock(), **{kind: name})
            # The call that found it answering belongs to a job too: ``woken`` counts only the others.
            if woken:
                logger.info(
                    "{} answers again; its jobs carry on ({} more waiting job(s) resumed)", circuit.service, woken
                )
            else:
                logger.info("{} answers again; its jobs carry on", circuit.service)
        else:
            first = circuit.service not in self.store.open_circuits()
            self.store.circuit_opened(
                circuit.service, circuit.since or self.clock(), circuit.next_probe or 0.0, circuit.reason or ""
            )
            logger.log(
                "ERROR" if first else "DEBUG",
                "{} is not answering ({}); its jobs wait and syncd probes it once at {}",
                circuit.service,
                circuit.reason,
                local_iso(circuit.next_probe),
            )
        if self.metrics is not None:
            self.metrics.circuit_open.labels(circuit.service).set(0 if circuit.state == "closed" else 1)

    def command(self, verb: str, job: Job) -> str:
        """The ``syncd VERB`` line a person can paste to act on ``job`` (with this daemon's config)."""
        where = f" -c {self.config.source}" if self.config.source is not None else ""
        return f"syncd {verb}{where} {job.id}"

    # Several daemons on one shared inbox (engine.takeover overrides these; alone, a daemon always acts).
    def share_job(self, job: Job) -> None:
        """Record ``job`` where other daemons of a shared inbox can take it over."""

    def unshare_job(self, job: Job) -> None:
        """The job is finished: its record leaves the share."""

    def may_act(self, inbox: str) -> bool:
        """True while this daemon's lease on ``inbox``'s share is confirmed."""
        return True

    def may_act_everywhere(self) -> bool:
        return True

    def claim_still_ours(self, job: Job, path: Path) -> bool:
        """After a claim during which the lease lapsed: True if this daemon may complete it."""
        return True

    def on_transition(self, job: Job) -> None:
        """Called by the store after every committed transition."""
        self.share_job(job)  # before the step that follows: a taker must never read an older state
        self.crash_points.reached(f"after:{job.state}")
        if self.metrics is not None:
            self.metrics.transitions.labels(job.state).inc()
        self.wake()
        if self._inbox(job.inbox).journal and job.state not in TERMINAL:
            with self._lock:
                self._journals_due.setdefault(job.id, time.monotonic() + JOURNAL_DELAY)

    def write_journals(self) -> None:
        """Write the journals whose jobs changed state at least JOURNAL_DELAY ago (called by the pump).

        A person reads a journal in seconds, not milliseconds: a job that changes state several times
        in that while has its journal written once, with its state then, and a job that ends before
        that has none to write (``finish`` removes one that was written)."""
        now = time.monotonic()
        with self._lock:
            due = [job_id for job_id, at in self._journals_due.items() if at <= now]
            for job_id in due:
                del self._journals_due[job_id]
        if not due:
            return
        with self.store.snapshot():
            jobs = [self.store.get(job_id) for job_id in due]
        written = []
        for job in jobs:
            if job.state in TERMINAL or job.taken_by:
                continue  # a job taken over is the other daemon's to report
            folder = self.outboxes[job.inbox].path_for(job.bucket, job.folder) if job.folder else None
            self.update_journal(job, folder)
            written.append(job.id)
        if written:
            with self.store.snapshot():  # read after the writes: a job may have ended meanwhile
                ended = [job for job in map(self.store.get, written) if job.state in TERMINAL]
            for job in ended:  # perhaps after finish() looked for a journal to remove
                self.update_journal(job, None)

    def update_journal(self, job: Job, outbox_folder: Path | None) -> None:
        """Write or remove the job's journal; a user's entry in its place is said once per job, then left."""
        inbox = self._inbox(job.inbox)
        blocked = journal.update(inbox.path, job, outbox_folder, self.spools[job.inbox].tmp, self.config.source)
        if blocked is not None and job.state not in TERMINAL and job.id not in self._journals_left_alone:
            self._journals_left_alone.add(job.id)
            job_logger(job).warning("{}", journal.left_alone_warning(blocked))
        elif job.state in TERMINAL:
            self._journals_left_alone.discard(job.id)

    def _store_writable(self) -> bool:
        """False while the state database refuses writes: then no step runs, so no side effect happens
        whose state change could not be recorded. One test write per interval finds out when it can."""
        if self.store.write_problem is None:
            return True
        if time.monotonic() - self._store_checked < STORE_CHECK_INTERVAL:
            return False
        self._store_checked = time.monotonic()
        return self.store.check_writable()

    def _manifest(self, job: Job) -> Manifest:
        """The job's validated manifest; each step of a job needs it, and it changes only with a new claim."""
        text = job.manifest or ""
        with self._lock:
            manifest = self._manifests.get(text)
        if manifest is None:
            manifest = Manifest.model_validate(job.manifest_data)
            with self._lock:
                if len(self._manifests) >= MANIFEST_CACHE:
                    del self._manifests[next(iter(self._manifests))]
                self._manifests[text] = manifest
        return manifest

    def spec(self, job: Job) -> JobSpec:
        manifest = self._manifest(job)
        return JobSpec(
            job_id=job.id,
            name=job.name,
            submit_key=job.submit_key,
            attempt=job.attempts,
            command=manifest.command if isinstance(manifest.command, str) else tuple(manifest.command),
            env=dict(manifest.env),
            timeout=manifest.timeout,
            resources=manifest.resources.model_dump(exclude_none=True),
            outputs=tuple(manifest.outputs) if manifest.outputs is not None else None,
            staging=StagingArea.for_job(self.storages[job.storage], job.bucket, self._inbox(job.inbox).prefix, job.id),
            results_prefix=f"{job.folder}/" if job.folder else None,
        )

    def _keep_scan(self, job: Job, directory: JobDirectory) -> None:
        """Keep a validated job's reading of its folder for the staging step that follows at once."""
        now = time.monotonic()
        with self._lock:
            for stale in [key for key, (at, _) in self._scans.items() if now - at >= SCAN_REUSE]:
                del self._scans[stale]  # jobs whose staging did not follow (cancelled, a paused backend)
            self._scans[job.id] = (now, directory)

    def _scanned_at_validation(self, job: Job) -> JobDirectory | None:
        """The reading of the job's folder its validation made, if that was less than SCAN_REUSE ago;
        a staging that comes later (a paused backend, a retry, a restart) reads the folder again."""
        with self._lock:
            scanned_at, directory = self._scans.pop(job.id, (0.0, None))
        return directory if time.monotonic() - scanned_at < SCAN_REUSE else None

    def _load(self, job: Job) -> JobDirectory:
        inbox = self._inbox(job.inbox)
        return load_job_directory(
            Path(job.spool_path),
            max_files=inbox.max_input_files,
            max_bytes=inbox.max_input_bytes,
            default_name=job.dir_name,
        )

    def _reserve_folder(self, inbox: InboxConfig, name: str) -> str:
        storage = self.storages[inbox.storage]
        outbox = self.outboxes[inbox.name]
        base = f"{inbox.prefix}/{name}" if inbox.prefix else name
        candidate, n = base, 1
        while (
            self.store.folder_in_use(inbox.storage, inbox.bucket, candidate)
            or outbox.path_for(inbox.bucket, candidate).exists()
            or has_any(storage.list(inbox.bucket, candidate + "/"))
        ):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _clear_failures(self) -> dict[str, Any]:
        return {"failures": 0, "failing_since": None, "error": None, "results_waiting_since": None}
