"""``type: memory``: the reference backend, and the engine's test double.

It keeps its "remote" jobs in a :class:`MemoryService` object (a fresh backend
instance given the same service sees the same jobs, as after a daemon crash),
runs each command as a local process in a work folder, and can be told to fail
the next calls with any error, so every engine path can be exercised without a
server. It is not meant for production: its jobs die with the process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from syncd.backends.base import (
    Backend,
    JobLogs,
    JobSpec,
    OutputFile,
    RemoteRef,
    RemoteState,
    RemoteStatus,
)
from syncd.backends.workdir import WorkFolder
from syncd.config import BackendOptions
from syncd.errors import PermanentError
from syncd.intake.manifest import InputFile


@dataclass
class _Job:
    key: str
    process: subprocess.Popen
    started: float
    timeout: float | None
    state: RemoteState = RemoteState.RUNNING
    exit_code: int | None = None
    ended: float | None = None
    cancelled: bool = False


@dataclass
class MemoryService:
    """The simulated remote side: its jobs, a request counter and injected failures."""

    jobs: dict[str, _Job] = field(default_factory=dict)
    requests: int = 0
    failures: list[Exception] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, error: Exception, times: int = 1) -> None:
        with self.lock:
            self.failures.extend([error] * times)

    def _call(self) -> None:
        with self.lock:
            self.requests += 1
            error = self.failures.pop(0) if self.failures else None
        if error is not None:
            raise error


class MemoryBackend(Backend):
    options_model = BackendOptions
    supported_resources = frozenset()

    def __init__(self, name: str, options: BackendOptions, work_root: Path, service: MemoryService | None = None):
        super().__init__(name, options, work_root)
        self.service = service or MemoryService()

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        WorkFolder(self.work_root, spec.submit_key).stage(inputs)

    def submit(self, spec: JobSpec) -> RemoteRef:
        self.service._call()
        with self.service.lock:
            if spec.submit_key in self.service.jobs:
                return RemoteRef(spec.submit_key)
            folder = WorkFolder(self.work_root, spec.submit_key)
            if not folder.staged:
                raise PermanentError(f"job {spec.name}: submit before staging finished")
            command = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) else list(spec.command)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.env, "SYNCD_JOB_ID": spec.job_id}
            with open(folder.ctrl / "stdout.txt", "wb") as out, open(folder.ctrl / "stderr.txt", "wb") as err:
                process = subprocess.Popen(command, cwd=folder.work, env=env, stdout=out, stderr=err,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
            self.service.jobs[spec.submit_key] = _Job(spec.submit_key, process, time.time(), spec.timeout)
        return RemoteRef(spec.submit_key)

    def find(self, spec: JobSpec) -> RemoteRef | None:
        self.service._call()
        return RemoteRef(spec.submit_key) if spec.submit_key in self.service.jobs else None

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        self.service._call()
        return {ref.remote_id: self._status(ref.remote_id) for ref in refs}

    def _status(self, key: str) -> RemoteStatus:
        job = self.service.jobs.get(key)
        if job is None:
            return RemoteStatus(RemoteState.UNKNOWN, "unknown", message=f"no job {key}")
        if job.state is RemoteState.RUNNING:
            code = job.process.poll()
            if code is None and job.timeout and time.time() - job.started >= job.timeout:
                self._kill(job)
                job.state, job.exit_code, job.ended = RemoteState.TIMED_OUT, None, time.time()
            elif code is not None:
                job.exit_code = code if code >= 0 else 128 - code
                job.ended = time.time()
                job.state = (RemoteState.CANCELLED if job.cancelled
                             else RemoteState.SUCCEEDED if code == 0 else RemoteState.FAILED)
        return RemoteStatus(job.state, job.state.value, exit_code=job.exit_code if job.state.terminal else None,
                            started=job.started, ended=job.ended)

    @staticmethod
    def _kill(job: _Job) -> None:
        try:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        job.process.wait()

    def cancel(self, ref: RemoteRef) -> None:
        self.service._call()
        job = self.service.jobs.get(ref.remote_id)
        if job is not None and job.process.poll() is None:
            job.cancelled = True
            self._kill(job)

    def logs(self, ref: RemoteRef) -> JobLogs:
        return WorkFolder(self.work_root, ref.remote_id).logs()

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        return WorkFolder(self.work_root, ref.remote_id).outputs(spec.outputs)

    def cleanup(self, ref: RemoteRef) -> None:
        WorkFolder(self.work_root, ref.remote_id).remove()
