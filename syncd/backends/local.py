"""``type: local``: runs jobs as processes on this host.

Each attempt gets ``<work_root>/<submit key>/`` holding ``work/`` (a copy of the
inputs; the job's working directory) and ``ctrl/`` (spec, logs, status). The
command is run by a detached runner (:mod:`syncd.backends.local_runner`) in its
own session, so it outlives a daemon crash; the daemon re-attaches by reading
``ctrl/`` and never starts an attempt twice.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from pydantic import Field

from syncd.backends.base import (
    Backend, JobLogs, JobSpec, OutputFile, RemoteRef, RemoteState, RemoteStatus,
)
from syncd.config import BackendOptions
from syncd.errors import PermanentError, TransientError
from syncd.backends.workdir import WorkFolder
from syncd.manifest import InputFile

# Variables passed through from the daemon; everything else (credentials!) stays out.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR")


class LocalOptions(BackendOptions):
    max_parallel: int = Field(2, gt=0, description="jobs running at once on this host")
    keep_workdir: bool = Field(False, description="keep each job's work folder after its results are delivered")


class LocalBackend(Backend):
    options_model = LocalOptions
    options: LocalOptions
    supported_resources = frozenset()
    remote_service = False

    def _dir(self, key: str) -> Path:
        return self.work_root / key

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        WorkFolder(self.work_root, spec.submit_key).stage(inputs)

    # -- submit / find -------------------------------------------------------
    def submit(self, spec: JobSpec) -> RemoteRef:
        attempt = self._dir(spec.submit_key)
        ctrl = attempt / "ctrl"
        if not (ctrl / "inputs.json").exists():
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        if (ctrl / "claim").exists():
            return self._ref(spec.submit_key)
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.update(spec.env)
        env.update(SYNCD_JOB_ID=spec.job_id, SYNCD_JOB_NAME=spec.name, SYNCD_ATTEMPT=str(spec.attempt))
        command = spec.command if isinstance(spec.command, str) else list(spec.command)
        tmp = ctrl / "spec.json.tmp"
        tmp.write_text(json.dumps({"command": command, "env": env, "timeout": spec.timeout}))
        os.replace(tmp, ctrl / "spec.json")
        try:
            with open(ctrl / "runner.log", "ab") as runner_log:
                launcher = subprocess.run(
                    [sys.executable, "-m", "syncd.backends.local_runner", str(attempt)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=runner_log,
                    timeout=30, start_new_session=True,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientError(f"starting the runner for {spec.name}: {exc}") from exc
        if launcher.returncode != 0:
            raise TransientError(f"the runner for {spec.name} exited with {launcher.returncode}; see {ctrl}/runner.log")
        # Wait briefly for the claim so that find() right after submit sees the job.
        for _ in range(100):
            if (ctrl / "claim").exists():
                break
            time.sleep(0.02)
        return self._ref(spec.submit_key)

    def _ref(self, key: str) -> RemoteRef:
        return RemoteRef(remote_id=key, handle={"dir": str(self._dir(key))})

    def find(self, spec: JobSpec) -> RemoteRef | None:
        return self._ref(spec.submit_key) if (self._dir(spec.submit_key) / "ctrl" / "claim").exists() else None

    # -- status --------------------------------------------------------------
    @staticmethod
    def _runner_alive(ctrl: Path) -> bool:
        try:
            fd = os.open(ctrl / "alive.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)  # closing releases a lock we may have taken
        return False

    def _status(self, ref: RemoteRef) -> RemoteStatus:
        ctrl = self._dir(ref.remote_id) / "ctrl"
        if not ctrl.is_dir():
            return RemoteStatus(RemoteState.UNKNOWN, "missing", message=f"no such local job {ref.remote_id}")
        status_file = ctrl / "status.json"
        if not status_file.exists():
            if not (ctrl / "claim").exists():
                return RemoteStatus(RemoteState.QUEUED, "starting")
            if self._runner_alive(ctrl):
                return RemoteStatus(RemoteState.RUNNING, "running")
            if not status_file.exists():  # the runner may have finished between the two checks
                return RemoteStatus(
                    RemoteState.FAILED, "lost", exit_code=None,
                    message="the job's runner died without recording an exit status (host reboot or kill -9)",
                )
        data = json.loads(status_file.read_text())
        if data.get("cancelled"):
            state, native = RemoteState.CANCELLED, "cancelled"
        elif data.get("timed_out"):
            state, native = RemoteState.TIMED_OUT, "timed_out"
        elif data.get("exit_code") == 0:
            state, native = RemoteState.SUCCEEDED, "exited"
        else:
            state, native = RemoteState.FAILED, "exited" if data.get("signal") is None else "killed"
        message = data.get("error") or (f"killed by signal {data['signal']}" if data.get("signal") else "")
        return RemoteStatus(state, native, exit_code=data.get("exit_code"), message=message,
                            started=data.get("started"), ended=data.get("ended"))

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        return {ref.remote_id: self._status(ref) for ref in refs}

    def cancel(self, ref: RemoteRef) -> None:
        ctrl = self._dir(ref.remote_id) / "ctrl"
        if ctrl.is_dir() and not (ctrl / "status.json").exists():
            (ctrl / "cancel").touch()

    # -- results -------------------------------------------------------------
    def logs(self, ref: RemoteRef) -> JobLogs:
        return WorkFolder(self.work_root, ref.remote_id).logs()

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        return WorkFolder(self.work_root, ref.remote_id).outputs(spec.outputs)

    def cleanup(self, ref: RemoteRef) -> None:
        if not self.options.keep_workdir:
            WorkFolder(self.work_root, ref.remote_id).remove()
