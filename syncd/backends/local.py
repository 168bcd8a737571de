"""``type: local``: runs jobs as processes on this host.

Each attempt gets ``<work_root>/<submit key>/`` holding ``work/`` (a copy of the
inputs; the job's working directory) and ``ctrl/`` (the runner's claim and its job's end, logs). The
command is run by a detached runner (:mod:`syncd.backends.local_runner`) in its
own session, so it outlives a daemon crash; the daemon re-attaches by reading
``ctrl/`` and never starts an attempt twice.

With ``run_as``, the runner stays root and only the job's process switches to that user:
``work/`` is handed to the user just before the job starts and taken back before its outputs are
read, while ``ctrl/`` (exit status, liveness lock, cancel flag) stays the daemon's, 0700.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import json
import os
import pwd
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from syncd.backends.base import (
    Backend,
    Capabilities,
    JobLogs,
    JobSpec,
    LogDelivery,
    OutputFile,
    RemoteRef,
    RemoteState,
    RemoteStatus,
)
from syncd.backends.containment import kill_leftover_cgroup
from syncd.backends.exits import ExitWatcher
from syncd.backends.job_user import (
    JobUser,
    hand_over,
    missing_privileges,
    take_back,
    unreachable_by,
)
from syncd.backends.local_runner import read_claim
from syncd.backends.workdir import WorkFolder
from syncd.config import BackendOptions, ConfigPath
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import os_error, write_small
from syncd.intake.manifest import InputFile
from syncd.log import logger

LAUNCH_TIMEOUT = 30.0  # seconds for the runner to start and claim its attempt
RUNNER_SCRIPT = str(Path(__file__).with_name("local_runner.py"))

# Variables passed through from the daemon; everything else (credentials!) stays out.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR")


def wait_exit(process: subprocess.Popen, timeout: float) -> int:
    """Wait for a child as ``Popen.wait(timeout)`` does, but woken by its end (a pidfd) rather than by
    polling with sleeps that grow to 50 ms; the launch of a runner is on every job's path."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        return process.wait(timeout)
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            process.kill()
            process.wait()
            raise subprocess.TimeoutExpired(process.args, timeout)
    finally:
        os.close(pidfd)
    return process.wait()


class Launcher:
    """The runner launcher: ``local_runner.py --serve``, started on first use and again after it died.
    One request at a time (a line of JSON out: the attempt folder and its runner's spec; a NUL back once the
    runner has claimed)."""

    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None

    def _running(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", RUNNER_SCRIPT, "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C meant for a daemon in a terminal is not for it
            )
        return self._process

    def start(self, attempt: Path, runner_spec: dict, timeout: float) -> None:
        """Have the runner of ``attempt`` started; OSError when the launcher does not do it in time."""
        request = json.dumps({"attempt": os.fsdecode(attempt), "spec": runner_spec}).encode() + b"\n"
        with self._lock:
            process = self._running()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(request)
                process.stdin.flush()
                if not select.select([process.stdout], [], [], timeout)[0]:
                    raise TimeoutError(f"no answer within {timeout:.0f}s")
                if os.read(process.stdout.fileno(), 1) != b"\0":
                    raise ConnectionError("it ended")
            except OSError:
                self._stop(process)
                raise

    def _stop(self, process: subprocess.Popen) -> None:
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        self._process = None

    def close(self) -> None:
        with self._lock:
            process = self._process
            if process is None:
                return
            self._process = None
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()  # its end of input: it exits (runners it started live on)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


class LocalOptions(BackendOptions):
    max_parallel: int = Field(2, gt=0, description="jobs running at once on this host")
    keep_workdir: bool = Field(False, description="keep each job's work folder after its results are delivered")
    run_as: str | None = Field(
        None,
        description="run every job as this user (its uid, primary group and "
        "supplementary groups); the daemon must run as root",
    )
    run_as_group: str | None = Field(None, description="primary group of run_as jobs (default: the user's own)")
    containment: Literal["auto", "cgroup", "subreaper"] = Field(
        "auto",
        description="how a job's whole process tree is held so that nothing of it outlives the job: a "
        "cgroup v2 folder per job (cgroup), the runner as child subreaper plus a sweep "
        "(subreaper), or a cgroup where one can be made (auto)",
    )
    workdir_root: ConfigPath | None = Field(
        None,
        description="where the work folders go (default: <state_dir>/backends/<name>); required with run_as: "
        "a folder outside state_dir that the run_as user can reach",
    )

    @field_validator("run_as")
    @classmethod
    def _user_exists(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                pwd.getpwnam(name)
            except KeyError:
                raise ValueError(
                    f"no user named '{name}' on this host; create it (e.g. "
                    f"useradd --system --no-create-home {name}) or fix the name"
                ) from None
        return name

    @field_validator("run_as_group")
    @classmethod
    def _group_exists(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                grp.getgrnam(name)
            except KeyError:
                raise ValueError(
                    f"no group named '{name}' on this host; create it (groupadd {name}) or fix the name"
                ) from None
        return name

    @model_validator(mode="after")
    def _run_as_has_a_reachable_workdir(self) -> LocalOptions:
        if self.run_as_group is not None and self.run_as is None:
            raise ValueError("run_as_group needs run_as (the user jobs run as)")
        if self.run_as is not None and self.workdir_root is None:
            raise ValueError(
                f"run_as needs workdir_root: a folder outside state_dir (which only the daemon may "
                f"enter) that {self.run_as} can reach, e.g. /var/lib/syncd-work"
            )
        return self


class LocalBackend(Backend):
    options_model = LocalOptions
    options: LocalOptions
    capabilities = Capabilities(native_timeout=True, logs=LogDelivery.STREAMED, host_bound=True)
    remote_service = False

    def __init__(self, name: str, options: LocalOptions, work_root: Path):
        super().__init__(name, options, options.workdir_root or work_root)
        self.job_user: JobUser | None = None
        self._exits: ExitWatcher | None = None
        self._launcher = Launcher(f"syncd-launcher-{name}")
        if options.run_as is not None:
            user = JobUser.lookup(options.run_as, options.run_as_group)
            if (user.uid, user.gid) != (os.geteuid(), os.getegid()):
                self.job_user = user

    def probe(self) -> None:
        if self.job_user is not None:
            self._check_job_user()

    def _check_job_user(self) -> None:
        """Never fall back to running a job as the daemon's user: jobs wait until this passes."""
        user = self.job_user
        if user is None:
            return
        problem = missing_privileges(user)
        if problem is None and (blocked := unreachable_by(self.work_root, user)):
            problem = (
                f"run_as: {user.name} cannot reach the work folders under {self.work_root}: "
                f"{blocked} is closed to it; choose a workdir_root outside state_dir whose parent "
                f"folders others may pass through (o+x)"
            )
        if problem is not None:
            raise TransientError(problem)

    def _dir(self, key: str) -> Path:
        return self.work_root / key

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        if self.job_user is not None and not self.work_root.exists():
            self.work_root.mkdir(parents=True, mode=0o711, exist_ok=True)
            os.chmod(self.work_root, 0o711)  # the job user passes through to its own folder, lists nothing
        folder = WorkFolder(self.work_root, spec.submit_key)
        folder.stage(inputs)
        if self.job_user is not None:
            os.chmod(folder.ctrl, 0o700)

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
        runner_spec: dict = {"timeout": spec.timeout, "containment": self.options.containment}
        if self.job_user is not None:
            self._check_job_user()
            env.update(self.job_user.environment())
            runner_spec["user"] = {
                "uid": self.job_user.uid,
                "gid": self.job_user.gid,
                "groups": list(self.job_user.groups),
            }
            try:
                hand_over(attempt / "work", self.job_user)
            except OSError as exc:
                raise os_error(exc, f"handing the work folder of {spec.name} to {self.job_user.name}") from exc
        env.update(spec.env)
        env.update(SYNCD_JOB_ID=spec.job_id, SYNCD_JOB_NAME=spec.name, SYNCD_ATTEMPT=str(spec.attempt))
        runner_spec.update(command=spec.command if isinstance(spec.command, str) else list(spec.command), env=env)
        self._start_runner(spec, attempt, runner_spec)
        self._watch_runner(spec.submit_key)
        return self._ref(spec.submit_key)

    def _start_runner(self, spec: JobSpec, attempt: Path, runner_spec: dict) -> None:
        """Start the detached runner of ``attempt``; it claims the job itself (``ctrl/claim``).

        Through the launcher (one process started once, whose forks become the runners), which is handed
        ``runner_spec``; if that does not answer, by starting a Python of its own for this runner, which
        reads it from ``ctrl/spec.json``."""
        ctrl = attempt / "ctrl"
        try:
            self._launcher.start(attempt, runner_spec, LAUNCH_TIMEOUT)
        except OSError as exc:
            logger.debug(
                "the runner launcher of backend {} failed ({}); starting the runner on its own", self.name, exc
            )
            try:
                tmp = ctrl / "spec.json.tmp"
                write_small(tmp, json.dumps(runner_spec).encode())
                os.replace(tmp, ctrl / "spec.json")
                with open(ctrl / "runner.log", "ab") as runner_log:
                    launch = subprocess.Popen(
                        [sys.executable, "-I", "-S", RUNNER_SCRIPT, str(attempt)],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=runner_log,
                        start_new_session=True,
                    )
                code = wait_exit(launch, LAUNCH_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise TransientError(f"starting the runner for {spec.name}: {exc}") from exc
            if code != 0:
                raise TransientError(f"the runner for {spec.name} exited with {code}; see {ctrl}/runner.log") from None
        # The launcher returns once the runner has claimed the attempt (or found it claimed), so find()
        # right after submit sees the job; an older runner that returns at once is waited for here.
        for _ in range(100):
            if (ctrl / "claim").exists():
                return
            time.sleep(0.02)

    def watch(self, changed: Callable[[str], None]) -> None:
        if self._exits is not None:
            self._exits.close()
        self._exits = ExitWatcher(changed, name=f"syncd-exits-{self.name}")

    def _watch_runner(self, key: str) -> None:
        """Have the end of this attempt's runner heard at once (its status file is written by then)."""
        if self._exits is None or self._exits.watching(key):
            return
        ctrl = self._dir(key) / "ctrl"
        try:
            pid = read_claim(ctrl).pid
        except OSError:
            return
        if pid is not None:
            self._exits.add(key, pid, lambda: self._runner_alive(ctrl))

    def close(self) -> None:
        self._launcher.close()
        if self._exits is not None:
            self._exits.close()

    def _ref(self, key: str) -> RemoteRef:
        return RemoteRef(remote_id=key, handle={"dir": str(self._dir(key))})

    def find(self, spec: JobSpec) -> RemoteRef | None:
        return self._ref(spec.submit_key) if (self._dir(spec.submit_key) / "ctrl" / "claim").exists() else None

    # -- status --------------------------------------------------------------
    @staticmethod
    def _runner_alive(ctrl: Path) -> bool:
        """Whether the runner of ``ctrl`` lives: it holds a lock on its claim (on ``alive.lock`` where the
        filesystem has no hard links, and in runners of an older syncd) for as long as it does."""
        for name in ("alive.lock", "claim"):
            try:
                fd = os.open(ctrl / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return True
                raise
            finally:
                os.close(fd)  # closing releases a lock we may have taken
            return False
        return False

    def _status(self, ref: RemoteRef) -> RemoteStatus:
        if self._exits is not None and self._exits.watching(ref.remote_id):
            # Its runner lives, and its end will be heard: no need to read the claim of each job that
            # runs whenever one of them ends (a poll covers them all).
            return RemoteStatus(RemoteState.RUNNING, "running")
        ctrl = self._dir(ref.remote_id) / "ctrl"
        try:
            data = read_claim(ctrl).status  # most polls find a job that has ended: read at once
        except (FileNotFoundError, NotADirectoryError):
            if not ctrl.is_dir():
                return RemoteStatus(RemoteState.UNKNOWN, "missing", message=f"no such local job {ref.remote_id}")
            return RemoteStatus(RemoteState.QUEUED, "starting")
        if data is None:
            if self._runner_alive(ctrl):
                self._watch_runner(ref.remote_id)  # e.g. a job started before the daemon was
                return RemoteStatus(RemoteState.RUNNING, "running")
            data = read_claim(ctrl).status  # the runner may have finished between the two reads
            if data is None:
                return RemoteStatus(
                    RemoteState.FAILED,
                    "lost",
                    exit_code=None,
                    message="the job's runner died without recording an exit status (host reboot or kill -9)",
                )
        if data.get("cancelled"):
            state, native = RemoteState.CANCELLED, "cancelled"
        elif data.get("timed_out"):
            state, native = RemoteState.TIMED_OUT, "timed_out"
        elif data.get("exit_code") == 0:
            state, native = RemoteState.SUCCEEDED, "exited"
        else:
            state, native = RemoteState.FAILED, "exited" if data.get("signal") is None else "killed"
        message = data.get("error") or (f"killed by signal {data['signal']}" if data.get("signal") else "")
        return RemoteStatus(
            state,
            native,
            exit_code=data.get("exit_code"),
            message=message,
            started=data.get("started"),
            ended=data.get("ended"),
        )

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        return {ref.remote_id: self._status(ref) for ref in refs}

    def cancel(self, ref: RemoteRef) -> None:
        ctrl = self._dir(ref.remote_id) / "ctrl"
        try:
            ended = read_claim(ctrl).status is not None
        except FileNotFoundError:
            ended = False  # not claimed yet: its runner finds the request when it starts
        except NotADirectoryError:
            return
        if not ended and ctrl.is_dir():
            (ctrl / "cancel").touch()

    # -- results -------------------------------------------------------------
    def logs(self, ref: RemoteRef) -> JobLogs:
        return WorkFolder(self.work_root, ref.remote_id).logs()

    def _take_back(self, folder: WorkFolder) -> None:
        """Make the job user's files the daemon's before reading or removing them (see job_user)."""
        if self.job_user is not None and folder.work.exists():
            try:
                take_back(folder.work, self.job_user)
            except OSError as exc:
                raise os_error(exc, f"taking back {folder.work} from {self.job_user.name}") from exc

    def _kill_leftovers(self, ref: RemoteRef) -> None:
        """A runner that died (kill -9, OOM) could not end its job: kill what is left in the job's cgroup. One
        that recorded the job's end had killed all of it first."""
        ctrl = self._dir(ref.remote_id) / "ctrl"
        try:
            claim = read_claim(ctrl)
        except OSError:
            return
        if claim.status is not None or self._runner_alive(ctrl):
            return
        kill_leftover_cgroup((claim.runner.get("containment") or {}).get("cgroup"))

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        folder = WorkFolder(self.work_root, ref.remote_id)
        if self.job_user is None:
            return folder.outputs(spec.outputs)
        self._take_back(folder)
        return folder.outputs(spec.outputs, owner=os.geteuid())

    def cleanup(self, ref: RemoteRef) -> None:
        self._kill_leftovers(ref)
        if not self.options.keep_workdir:
            folder = WorkFolder(self.work_root, ref.remote_id)
            self._take_back(folder)
            folder.remove()
