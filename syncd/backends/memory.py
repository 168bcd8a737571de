"""``type: memory``: the reference backend, and the engine's test double.

It keeps its "remote" jobs in a :class:`MemoryService` object (a fresh backend instance given the same
service sees the same jobs, as after a daemon crash), runs each command as a local process in a work
folder, and can be told to fail the next calls with any error. Its switches make it behave like each kind
of remote service the contract allows: jobs that wait in a queue, no cancel or cancel only while queued,
no exit codes (the wrapper path), results handed over late (NotReady), outputs left in syncd's storage
or already in the results folder, inputs fetched by presigned URL, and a submission in three steps
(create, take inputs, start) with a hook after each step to simulate a crash there. It is not meant for
production: its jobs die with the process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import requests

from syncd.backends import wrapper
from syncd.backends.base import (
    Backend,
    CancelSupport,
    Capabilities,
    JobLogs,
    JobSpec,
    LogDelivery,
    OutputFile,
    RemoteObject,
    RemoteRef,
    RemoteState,
    RemoteStatus,
)
from syncd.backends.workdir import WorkFolder
from syncd.config import BackendOptions
from syncd.errors import NotReady, PermanentError, TransientError
from syncd.intake.manifest import InputFile

SUBMIT_STEPS = ("created", "inputs", "started")


@dataclass
class _Job:
    key: str
    spec: JobSpec
    created: float
    inputs_taken: bool = False
    start_requested: bool = False
    start_at: float | None = None
    process: subprocess.Popen | None = None
    started: float | None = None
    state: RemoteState = RemoteState.QUEUED
    exit_code: int | None = None
    ended: float | None = None
    cancelled: bool = False


@dataclass
class MemoryService:
    """The simulated remote side: its jobs, counters, injected failures and the switches of its behaviour."""

    jobs: dict[str, _Job] = field(default_factory=dict)
    requests: int = 0
    runs: int = 0  # processes started: a job that ran twice shows here
    failures: list[Exception] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    capabilities: Capabilities = Capabilities(native_timeout=True, logs=LogDelivery.STREAMED)
    queue_seconds: float = 0.0  # how long a job waits in the queue before it starts
    not_ready: int = 0  # how many calls to outputs() answer NotReady before the results are there
    not_ready_retry_after: float = 0.05
    outputs_to: Literal["workdir", "storage", "results"] = "workdir"
    inputs_by_url: bool = False  # the service fetches inputs from syncd's storage by presigned URL
    on_step: Callable[[str, str], None] | None = None  # (step, submit key) after each submission step

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

    def __init__(self, name: str, options: BackendOptions, work_root: Path, service: MemoryService | None = None):
        super().__init__(name, options, work_root)
        self.service = service or MemoryService()
        capabilities = self.service.capabilities
        if self.service.inputs_by_url or self.service.outputs_to != "workdir":
            capabilities = replace(capabilities, stages_to_storage=True)
        self.capabilities = capabilities

    # -- submission -----------------------------------------------------------------------
    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = WorkFolder(self.work_root, spec.submit_key)
        if not self.service.inputs_by_url:
            folder.stage(inputs)
        else:
            if spec.staging is None:
                raise PermanentError(
                    f"job {spec.name}: this backend fetches inputs from syncd's storage, "
                    f"but the job has no staging area"
                )
            folder.stage([])
            for item in inputs:
                info = spec.staging.put_input(item)
                url = spec.staging.url(info.key)
                self._fetch(url, folder.work / item.relpath)
        if not self.capabilities.exit_codes:
            wrapper.write(folder.work, spec.command)

    @staticmethod
    def _fetch(url: str, dest: Path) -> None:
        """What the service does with an input URL: download it."""
        try:
            response = requests.get(url, timeout=30)
        except requests.RequestException as exc:
            raise TransientError(f"fetching input {dest.name}: {exc}") from exc
        if response.status_code != 200:
            raise PermanentError(f"fetching input {dest.name}: HTTP {response.status_code}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(response.content)

    def submit(self, spec: JobSpec) -> RemoteRef:
        self.service._call()
        with self.service.lock:
            job = self.service.jobs.get(spec.submit_key)
            if job is None:
                if not WorkFolder(self.work_root, spec.submit_key).staged:
                    raise PermanentError(f"job {spec.name}: submit before staging finished")
                job = self.service.jobs[spec.submit_key] = _Job(spec.submit_key, spec, time.time())
                self._stepped("created", job)
            if not job.inputs_taken:
                job.inputs_taken = True
                self._stepped("inputs", job)
            if not job.start_requested:
                job.start_requested = True
                job.start_at = time.time() + self.service.queue_seconds
                self._start_when_due(job)
                self._stepped("started", job)
        return RemoteRef(spec.submit_key)

    def _stepped(self, step: str, job: _Job) -> None:
        if self.service.on_step is not None:
            self.service.on_step(step, job.key)

    def find(self, spec: JobSpec) -> RemoteRef | None:
        self.service._call()
        job = self.service.jobs.get(spec.submit_key)
        return None if job is None else RemoteRef(spec.submit_key, complete=job.start_requested)

    def _start_when_due(self, job: _Job) -> None:
        if job.process is not None or job.cancelled or job.start_at is None or time.time() < job.start_at:
            return
        spec = job.spec
        folder = WorkFolder(self.work_root, spec.submit_key)
        if not self.capabilities.exit_codes:
            command = wrapper.argv()
        elif isinstance(spec.command, str):
            command = ["/bin/sh", "-c", spec.command]
        else:
            command = list(spec.command)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **spec.env, "SYNCD_JOB_ID": spec.job_id}
        stderr_name = "stderr.txt" if self.capabilities.separate_stderr else "stdout.txt"
        with open(folder.ctrl / "stdout.txt", "ab") as out, open(folder.ctrl / stderr_name, "ab") as err:
            job.process = subprocess.Popen(
                command,
                cwd=folder.work,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        job.started, job.state = time.time(), RemoteState.RUNNING
        self.service.runs += 1

    # -- following ------------------------------------------------------------------------
    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        if self.capabilities.batched_poll:
            self.service._call()
        statuses = {}
        for ref in refs:
            if not self.capabilities.batched_poll:
                self.service._call()
            statuses[ref.remote_id] = self._status(ref.remote_id)
        return statuses

    def _status(self, key: str) -> RemoteStatus:
        with self.service.lock:
            job = self.service.jobs.get(key)
            if job is None:
                return RemoteStatus(RemoteState.UNKNOWN, "unknown", message=f"no job {key}")
            self._start_when_due(job)
            if job.state is RemoteState.RUNNING and job.process is not None:
                code = job.process.poll()
                timeout = job.spec.timeout if self.capabilities.native_timeout else None
                if code is None and timeout and time.time() - (job.started or 0) >= timeout:
                    self._kill(job)
                    job.state, job.exit_code, job.ended = RemoteState.TIMED_OUT, None, time.time()
                elif code is not None:
                    job.exit_code = code if code >= 0 else 128 - code
                    job.ended = time.time()
                    job.state = (
                        RemoteState.CANCELLED
                        if job.cancelled
                        else RemoteState.SUCCEEDED
                        if code == 0
                        else RemoteState.FAILED
                    )
            reported = job.exit_code if job.state.terminal and self.capabilities.exit_codes else None
            return RemoteStatus(job.state, job.state.value, exit_code=reported, started=job.started, ended=job.ended)

    @staticmethod
    def _kill(job: _Job) -> None:
        if job.process is None:
            return
        try:
            os.killpg(job.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        job.process.wait()

    def cancel(self, ref: RemoteRef) -> None:
        self.service._call()
        support = self.capabilities.cancel
        with self.service.lock:
            job = self.service.jobs.get(ref.remote_id)
            if job is None or job.state.terminal:
                return
            if support is CancelSupport.NEVER:
                raise PermanentError(f"job {ref.remote_id}: this service cannot cancel jobs")
            if job.process is not None:
                if support is CancelSupport.WHILE_QUEUED:
                    raise PermanentError(f"job {ref.remote_id} has started; this service stops only queued jobs")
                job.cancelled = True
                if job.process.poll() is None:
                    self._kill(job)
            else:
                job.cancelled = True
                job.state, job.ended = RemoteState.CANCELLED, time.time()

    # -- results --------------------------------------------------------------------------
    def logs(self, ref: RemoteRef) -> JobLogs:
        return WorkFolder(self.work_root, ref.remote_id).logs()

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        with self.service.lock:
            if self.service.not_ready > 0:
                self.service.not_ready -= 1
                raise NotReady(
                    f"job {ref.remote_id}: the service is still transferring its results",
                    retry_after=self.service.not_ready_retry_after,
                )
        folder = WorkFolder(self.work_root, ref.remote_id)
        found = [o for o in folder.outputs(spec.outputs) if not wrapper.is_wrapper_path(o.relpath)]
        exit_file = folder.work / wrapper.EXIT_FILE
        if not self.capabilities.exit_codes and exit_file.exists():
            found.append(OutputFile(wrapper.EXIT_FILE, exit_file, exit_file.stat().st_size))
        if self.service.outputs_to == "workdir":
            return found
        if spec.staging is None or (self.service.outputs_to == "results" and spec.results_prefix is None):
            raise PermanentError(
                f"job {spec.name}: this service writes outputs to syncd's storage, but the job has no staging area"
            )
        prefix = spec.results_prefix if self.service.outputs_to == "results" else spec.staging.outputs
        return [self._upload(spec, item, f"{prefix}{item.relpath}") for item in found]

    @staticmethod
    def _upload(spec: JobSpec, item: OutputFile, key: str) -> OutputFile:
        """What the service does with an output: put it into the bucket it was told to use."""
        assert spec.staging is not None and item.source is not None
        storage, bucket = spec.staging.storage, spec.staging.bucket
        if storage.head(bucket, key) is None:
            storage.put_file(bucket, key, item.source)
        md5 = hashlib.md5(item.source.read_bytes()).hexdigest()
        return OutputFile(item.relpath, None, item.size, remote=RemoteObject(bucket, key, md5))

    def cleanup(self, ref: RemoteRef) -> None:
        WorkFolder(self.work_root, ref.remote_id).remove()
