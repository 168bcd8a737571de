"""What each backend's conformance test file provides: a harness around one backend instance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from syncd.backends.base import Backend, JobSpec, RemoteRef, RemoteStatus
from syncd.intake.manifest import InputFile


@dataclass
class Harness:
    backend: Backend
    new_backend: Callable[[], Backend]  # a fresh instance, as after a daemon crash
    scratch: Path
    poll_interval: float = 0.2
    timeout: float = 60.0
    request_count: Callable[[], int] | None = None  # how many requests the backend sent, if it sends any
    #: a ref the service does not know, built through the backend (each backend's test file says how)
    ghost_ref: Callable[[Harness], RemoteRef] = field(default=lambda harness: _no_ghost())
    #: the backend method through which the service takes a job, and which of its calls are that request
    #: (given the call's arguments): the contract kills the daemon right after one returns
    accepts: tuple[str, Callable[..., bool]] = ("", lambda *args, **kwargs: _no_accepts())
    specs: list[JobSpec] = field(default_factory=list)

    def spec(self, command, *, timeout: float | None = None, outputs=None, env=None, resources=None) -> JobSpec:
        job_id = uuid.uuid4().hex[:10]
        spec = JobSpec(
            job_id=job_id,
            name=f"conf-{job_id}",
            submit_key=f"syncd-{job_id}",
            attempt=1,
            command=command if isinstance(command, str) else tuple(command),
            env=env or {},
            timeout=timeout,
            resources=resources or {},
            outputs=tuple(outputs) if outputs is not None else None,
        )
        self.specs.append(spec)
        return spec

    def stage(self, spec: JobSpec, files: dict[str, bytes] | None = None) -> None:
        source = self.scratch / "inputs" / spec.job_id
        inputs = []
        for rel, content in (files or {}).items():
            path = source / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            inputs.append(InputFile(rel, path, len(content)))
        self.backend.stage(spec, inputs)

    def run(self, spec: JobSpec, files: dict[str, bytes] | None = None) -> RemoteRef:
        self.stage(spec, files)
        return self.backend.submit(spec)

    def wait_for(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met after {self.timeout}s")
            time.sleep(self.poll_interval)

    def wait(
        self,
        ref: RemoteRef,
        until: Callable[[RemoteStatus], bool] = lambda s: s.state.terminal,
        backend: Backend | None = None,
    ) -> RemoteStatus:
        deadline = time.monotonic() + self.timeout
        while True:
            status = (backend or self.backend).poll([ref])[ref.remote_id]
            if until(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"job {ref.remote_id} still {status} after {self.timeout}s")
            time.sleep(self.poll_interval)


def _no_accepts() -> bool:
    raise AssertionError("this backend's conformance file must pass accepts to its Harness")


def _no_ghost() -> RemoteRef:
    raise AssertionError("this backend's conformance file must pass ghost_ref to its Harness")
