"""The backend contract: submit, find, poll, cancel, logs, outputs, cleanup.

Backends hold no job state. Everything needed to continue a job after a
restart is in the :class:`RemoteRef` (remote id + a small JSON handle) that the
engine stores. Backends only classify failures
(:class:`~syncd.errors.TransientError`, PermanentError, AuthError); retries
live in the engine.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from syncd.config import BackendOptions
from syncd.intake.manifest import InputFile


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


@dataclass(frozen=True)
class RemoteRef:
    remote_id: str
    handle: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    native: str  # the service's own word for the state
    exit_code: int | None = None
    message: str = ""
    started: float | None = None
    ended: float | None = None


@dataclass(frozen=True)
class OutputFile:
    relpath: str
    source: Path
    size: int


@dataclass(frozen=True)
class JobLogs:
    stdout: Path | None
    stderr: Path | None


class Backend(ABC):
    """One compute service. Built from its options; safe to use from several threads."""

    options_model: ClassVar[type[BackendOptions]] = BackendOptions
    #: resources (cpus, memory, walltime, gpus) this backend can honour
    supported_resources: ClassVar[frozenset[str]] = frozenset()
    #: False for backends that run on this host: nothing remote can stop answering, so no circuit breaker
    remote_service: ClassVar[bool] = True
    #: the methods that reach the service (the engine puts them behind its circuit breaker)
    remote_calls: ClassVar[frozenset[str]] = frozenset(
        {"probe", "stage", "submit", "find", "poll", "cancel", "logs", "outputs", "cleanup"})

    def __init__(self, name: str, options: BackendOptions, work_root: Path):
        self.name = name
        self.options = options
        self.work_root = work_root

    def check(self, spec: JobSpec) -> list[str]:
        """Problems that make ``spec`` impossible here (checked at claim time, before anything runs)."""
        unsupported = sorted(k for k, v in spec.resources.items() if v is not None and k not in self.supported_resources)
        return [f"resources.{k}: the '{self.name}' backend cannot honour this; remove it or use another inbox"
                for k in unsupported]

    def probe(self) -> None:
        """Check that the service answers and accepts the credentials (start-up, /readyz, pre-flight).

        Raises TransientError or AuthError; the default has nothing to check.
        """

    @abstractmethod
    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        """Put the inputs where the job will read them. Idempotent: re-staging reuses what is there."""

    @abstractmethod
    def submit(self, spec: JobSpec) -> RemoteRef:
        """Start the job under ``spec.submit_key``. Idempotent for the same key."""

    @abstractmethod
    def find(self, spec: JobSpec) -> RemoteRef | None:
        """The job submitted under ``spec.submit_key``, or None if it never reached the service."""

    @abstractmethod
    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        """Status of every ref, keyed by remote id, in as few requests as the service allows.

        A ref the service does not know is reported as UNKNOWN, never raised.
        """

    @abstractmethod
    def cancel(self, ref: RemoteRef) -> None:
        """Ask the service to stop the job. Harmless when repeated or when the job has ended."""

    @abstractmethod
    def logs(self, ref: RemoteRef) -> JobLogs:
        """The job's stdout and stderr as local files (fetched if need be)."""

    @abstractmethod
    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        """The output files to deliver, as local files with their relative paths."""

    def cleanup(self, ref: RemoteRef) -> None:
        """Remove what the job left on the service once its results are delivered. Idempotent."""

    def close(self) -> None:
        """Release connections. Optional."""
