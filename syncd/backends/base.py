"""The backend contract: what a compute service must answer, and what it may declare it cannot do.

Backends hold no job state. Everything needed to continue a job after a restart is in the
:class:`RemoteRef` (remote id + a small JSON handle) that the engine stores. Backends only *classify*
failures; retries live in the engine:

- :class:`~syncd.errors.TransientError` (with ``retry_after`` when the service said so): worth retrying;
- :class:`~syncd.errors.AuthError`: credentials refused (or `AccountError`: no credits, a quota), every job
  of the backend pauses;
- :class:`~syncd.errors.PermanentError` (and ``NotFoundError``): retrying will not help;
- :class:`~syncd.errors.NotReady` from ``outputs``/``logs``: the job finished but the service hands its
  results over later; the job waits without spending its retries.

What a service can and cannot do is declared once, in :class:`Capabilities`; the engine and the
conformance suite read it instead of guessing.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from syncd.config import BackendOptions
from syncd.intake.manifest import InputFile
from syncd.storage.base import ObjectInfo, Storage, inputs_prefix

OUTPUTS_FOLDER = "_outputs"


class RemoteState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (RemoteState.SUCCEEDED, RemoteState.FAILED, RemoteState.CANCELLED, RemoteState.TIMED_OUT)


class CancelSupport(str, enum.Enum):
    """When the service can stop a job it runs."""

    ALWAYS = "always"
    WHILE_QUEUED = "while_queued"  # a started job runs to its end
    NEVER = "never"


class LogDelivery(str, enum.Enum):
    STREAMED = "streamed"  # readable while the job runs
    AT_END = "at_end"  # only once it has ended


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. The engine and the conformance suite act on these, never on the backend's type."""

    #: one ``poll`` request covers any number of jobs
    batched_poll: bool = True
    #: the service stops a job at ``spec.timeout`` itself (the engine enforces it too, a little later)
    native_timeout: bool = False
    cancel: CancelSupport = CancelSupport.ALWAYS
    #: poll reports the command's exit code; if not, the backend runs the command through the wrapper
    #: (:mod:`syncd.backends.wrapper`) and returns its exit file among the outputs
    exit_codes: bool = True
    logs: LogDelivery = LogDelivery.AT_END
    #: stderr is kept apart from stdout
    separate_stderr: bool = True
    #: resources (cpus, memory, walltime, gpus) the backend can honour; a job asking for others is rejected
    resources: frozenset[str] = frozenset()
    #: outputs end up as objects in syncd's storage (delivered by server-side copy, not downloaded)
    stages_to_storage: bool = False
    #: the service creates a job before taking its inputs: ``find`` may return an unfinished ref
    multi_step_submit: bool = False
    #: jobs run on the daemon's own host: another host finds them (``find``) only if their work folders are
    #: shared; a job it cannot find died with its host (the ``takeover: local_jobs`` policy decides)
    host_bound: bool = False


@dataclass(frozen=True)
class StagingArea:
    """The part of the inbox's storage a backend may use for one job: inputs to hand the service, and a place
    for the service to put outputs. Backends whose service reads from an object store stage inputs here and
    hand the service presigned URLs; the engine removes both prefixes once the job's results are delivered."""

    storage: Storage
    bucket: str
    inputs: str  # key prefix, ends with "/"
    outputs: str  # key prefix, ends with "/"

    @classmethod
    def for_job(cls, storage: Storage, bucket: str, inbox_prefix: str, job_id: str) -> StagingArea:
        base = inbox_prefix.strip("/")
        outputs = f"{base}/{OUTPUTS_FOLDER}/{job_id}/" if base else f"{OUTPUTS_FOLDER}/{job_id}/"
        return cls(storage, bucket, inputs_prefix(inbox_prefix, job_id), outputs)

    def input_key(self, relpath: str) -> str:
        return self.inputs + relpath

    def output_key(self, relpath: str) -> str:
        return self.outputs + relpath

    def put_input(self, item: InputFile) -> ObjectInfo:
        """Upload one input unless an object of the same size is already there (staging is idempotent)."""
        key = self.input_key(item.relpath)
        existing = self.storage.head(self.bucket, key)
        if existing is not None and existing.size == item.size:
            return existing
        return self.storage.put_file(self.bucket, key, item.source)

    def url(self, key: str, method: str = "GET", expires: float = 86400) -> str:
        """A presigned URL for the service (PUT for outputs it uploads). The ``file`` storage cannot give one."""
        return self.storage.presign(self.bucket, key, method=method, expires=expires)

    def remove(self) -> None:
        for prefix in (self.inputs, self.outputs):
            for info in list(self.storage.list(self.bucket, prefix)):
                self.storage.delete(self.bucket, info.key)
            self.storage.delete(self.bucket, prefix)  # a folder storage's emptied folders; a no-op on S3


@dataclass(frozen=True)
class JobSpec:
    """What a backend needs to run one attempt of a job."""

    job_id: str
    name: str
    submit_key: str
    attempt: int
    command: str | tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None
    #: where in syncd's storage this job may stage inputs and outputs (None in tests without a storage)
    staging: StagingArea | None = None
    #: the key prefix (in ``staging``'s bucket) of the job's results folder: an output a service already put
    #: there is recorded, not copied
    results_prefix: str | None = None


@dataclass(frozen=True)
class RemoteRef:
    remote_id: str
    handle: Mapping[str, Any] = field(default_factory=dict)
    #: False while a multi-step submission (create, upload inputs, start) has not finished: the engine then
    #: calls ``submit`` again, which must finish it without creating a second job
    complete: bool = True


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    native: str  # the service's own word for the state
    exit_code: int | None = None
    message: str = ""
    started: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class RemoteObject:
    """An output that already sits in syncd's storage (bucket and key), with what is known of its content."""

    bucket: str
    key: str
    md5: str | None = None


@dataclass(frozen=True)
class OutputFile:
    """One output: a local file (``source``) or an object already in syncd's storage (``remote``)."""

    relpath: str
    source: Path | None
    size: int
    remote: RemoteObject | None = None


@dataclass(frozen=True)
class JobLogs:
    stdout: Path | None
    stderr: Path | None


class Backend(ABC):
    """One compute service. Built from its options; safe to use from several threads."""

    options_model: ClassVar[type[BackendOptions]] = BackendOptions
    #: what the service can do; an instance may narrow it from its options
    capabilities: Capabilities = Capabilities()
    #: False for backends that run on this host: nothing remote can stop answering, so no circuit breaker
    remote_service: ClassVar[bool] = True
    #: the methods that reach the service (the engine puts them behind its circuit breaker)
    remote_calls: ClassVar[frozenset[str]] = frozenset(
        {"probe", "stage", "submit", "find", "poll", "cancel", "logs", "outputs", "cleanup"}
    )

    def __init__(self, name: str, options: BackendOptions, work_root: Path):
        self.name = name
        self.options = options
        self.work_root = work_root

    def check(self, spec: JobSpec) -> list[str]:
        """Problems that make ``spec`` impossible here (checked at claim time, before anything runs)."""
        unsupported = sorted(
            k for k, v in spec.resources.items() if v is not None and k not in self.capabilities.resources
        )
        return [
            f"resources.{k}: the '{self.name}' backend cannot honour this; remove it or use another inbox"
            for k in unsupported
        ]

    def probe(self) -> None:
        """Check that the service answers and accepts the credentials (start-up, /readyz, pre-flight).

        Raises TransientError or AuthError; the default has nothing to check.
        """

    @abstractmethod
    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        """Put the inputs where the job will read them (a work folder, or ``spec.staging``).

        Idempotent: re-staging after a crash reuses what is there. Raises InputError when an input file
        cannot be read (the user's to fix), TransientError, PermanentError.
        """

    @abstractmethod
    def submit(self, spec: JobSpec) -> RemoteRef:
        """Start the job under ``spec.submit_key`` and return a complete ref.

        Idempotent for the same key: if a job with this key exists, return it; if its submission is
        unfinished (created but not started), finish it. Never creates a second job for one key.
        """

    @abstractmethod
    def find(self, spec: JobSpec) -> RemoteRef | None:
        """The job submitted under ``spec.submit_key``, or None if it never reached the service.

        A ref with ``complete=False`` means a submission was interrupted; the engine then calls ``submit``.
        """

    @abstractmethod
    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        """Status of every ref, keyed by remote id, in as few requests as the service allows.

        A ref the service does not know is reported as UNKNOWN, never raised.
        """

    @abstractmethod
    def cancel(self, ref: RemoteRef) -> None:
        """Ask the service to stop the job. Harmless when repeated or when the job has ended.

        Called only as ``capabilities.cancel`` allows; raises PermanentError when the service refuses
        (e.g. the job started and can no longer be stopped).
        """

    @abstractmethod
    def logs(self, ref: RemoteRef) -> JobLogs:
        """The job's stdout and stderr as local files (fetched if need be). May raise NotReady."""

    @abstractmethod
    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        """The output files to deliver: local files, or objects already in ``spec.staging``'s storage.

        Idempotent (called again after a crash). May raise NotReady while the service still hands results over.
        """

    def cleanup(self, ref: RemoteRef) -> None:
        """Remove what the job left on the service once its results are delivered. Idempotent."""

    def watch(self, changed: Callable[[str], None]) -> None:
        """From now on, call ``changed(remote_id)`` (from any thread) as soon as a job's status may have
        changed, so that it is polled then instead of at its next turn. A hint, never a status: ``poll``
        still says what happened. Optional; a service that cannot tell is polled on its schedule."""

    def close(self) -> None:
        """Release connections. Optional."""
