"""``type: slurm``: jobs on a Slurm cluster through slurmrestd (REST + JWT), using requests.

Inputs are staged into ``<workdir_root>/<submit key>/work`` on a filesystem the
daemon host and the compute nodes share. A generated batch script runs the job's
command from a file in ``ctrl/`` (user text is never spliced into the script),
writes the Slurm job id when it starts and its exit status when it ends, so the
outcome is known even after slurmctld has forgotten the job (MinJobAge). The
submit key is the job's name and comment: after a crash the job is found by key
before anything is submitted again.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests
from pydantic import Field

from syncd.backends import http
from syncd.backends import slurm_api as api
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
from syncd.backends.tokens import TokenOptions, TokenSource
from syncd.backends.workdir import WorkFolder
from syncd.config import BackendOptions, ConfigPath, Duration
from syncd.errors import AuthError, NotFoundError, PermanentError, TransientError
from syncd.intake.manifest import InputFile

BATCH_SCRIPT = """\
#!/bin/bash
# Written by syncd. The job's command is read from $SYNCD_CTRL, never spliced into this script.
ctrl="$SYNCD_CTRL"
printf '%s\\n' "$SLURM_JOB_ID" > "$ctrl/slurm_job_id"
if [ -f "$ctrl/command.sh" ]; then
  /bin/sh "$ctrl/command.sh"
else
  mapfile -d '' -t argv < "$ctrl/command.argv"
  "${argv[@]}"
fi
status=$?
printf '%s\\n' "$status" > "$ctrl/exit_status.tmp" && mv -f "$ctrl/exit_status.tmp" "$ctrl/exit_status"
exit "$status"
"""
NODE_CACHE_SECONDS = 300


class SlurmOptions(BackendOptions, TokenOptions):
    """slurmrestd's options; the JWT's source is :class:`~syncd.backends.tokens.TokenOptions`
    (``token: {command: …}``, as before, or ``token_command: …``)."""

    url: str = Field(description="slurmrestd base URL, e.g. http://127.0.0.1:6820")
    api_version: str | None = Field(
        None,
        pattern=r"^v\d+\.\d+\.\d+$",
        description="OpenAPI version, e.g. v0.0.38 (default: the newest the server offers)",
    )
    user: str = Field(description="the Slurm user the token belongs to; jobs run as this user")
    partition: str | None = Field(None, description="partition to submit to (default: the cluster's default)")
    account: str | None = Field(None, description="account to charge")
    qos: str | None = Field(None, description="quality of service")
    workdir_root: ConfigPath = Field(description="shared folder seen by this host and the compute nodes")
    max_parallel: int = Field(50, gt=0, description="jobs submitted to Slurm at once")
    environment: dict[str, str] = Field(
        default_factory=lambda: {"PATH": "/usr/local/bin:/usr/bin:/bin"},
        description="base environment of every job (the manifest's env is added)",
    )
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
    auth_fast_seconds: Duration = Field(
        2.0,
        description="slurmrestd 22.05 reports a refused token as HTTP 500; such an answer faster than this, "
        "with a freshly minted token, counts as an auth failure (a down slurmctld answers slowly)",
    )
    keep_workdir: bool = Field(False, description="keep each job's work folder after its results are delivered")


class _NoSuchJob(NotFoundError):
    """slurmctld does not know the job id (not any 404: a wrong URL is not a finished job)."""


def slurm_jwt(text: str) -> str:
    """The token in what ``scontrol token`` prints (``SLURM_JWT=<token>``), or the text itself."""
    match = re.search(r"SLURM_JWT=(\S+)", text)
    return match.group(1) if match else text.strip()


def unwritable_by(path: Path, user: str) -> str | None:
    """Why ``user`` (a local account) cannot create files in the folder ``path``, or None when it can or
    when the account is not known on this host (the cluster's directory may be its own)."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return None
    if account.pw_uid == 0:
        return None
    info = path.stat()
    groups = set(os.getgrouplist(user, account.pw_gid))
    if info.st_uid == account.pw_uid:
        allowed = info.st_mode & stat.S_IWUSR and info.st_mode & stat.S_IXUSR
    elif info.st_gid in groups:
        allowed = info.st_mode & stat.S_IWGRP and info.st_mode & stat.S_IXGRP
    else:
        allowed = info.st_mode & stat.S_IWOTH and info.st_mode & stat.S_IXOTH
    if allowed:
        return None
    owner = _name(pwd.getpwuid, info.st_uid)
    return f"it belongs to {owner}, mode {stat.S_IMODE(info.st_mode):04o}; the daemon runs as {_name(pwd.getpwuid, os.geteuid())}"


def _name(lookup, number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


class SlurmBackend(Backend):
    options_model = SlurmOptions
    options: SlurmOptions
    capabilities = Capabilities(logs=LogDelivery.STREAMED, resources=frozenset({"cpus", "memory", "walltime", "gpus"}))

    def __init__(self, name: str, options: SlurmOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.tokens = TokenSource(options, owner=f"backend '{name}'", extract=slurm_jwt)
        self.service = f"slurmrestd at {options.url}"
        self._session = requests.Session()
        self._version = options.api_version
        self._nodes: tuple[float, list[dict]] | None = None
        self._lock = threading.Lock()
        self.requests_sent = 0  # for tests and metrics: how many HTTP requests this instance made

    # -- HTTP ------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {
            "X-SLURM-USER-NAME": self.options.user,
            "X-SLURM-USER-TOKEN": self.tokens.get(),
            "Accept": "application/json",
        }

    def _request(self, method: str, url: str, what: str, body: Any = None, *, retry_auth: bool = True) -> dict:
        """The JSON object slurmrestd answers; its refusals classified by :mod:`syncd.backends.http`, and by the
        Slurm errors its body lists."""
        timeout = (self.options.connect_timeout, self.options.request_timeout)
        headers = self._headers()
        with self._lock:
            self.requests_sent += 1
        started = time.monotonic()
        try:
            response = self._session.request(method, url, json=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            raise http.classify_exception(
                exc, service=self.service, what=what, timeout=timeout, elapsed=time.monotonic() - started
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        errors = api.error_list(data)
        numbers = {e.get("error_number") for e in errors}
        error = http.classify_response(response, service=self.service, what=what)
        how = f"while {what} ({http.status_text(response)} after {http.elapsed(response):.2f}s)"
        said = http.redact_credentials(api.describe_errors(errors), response) if errors else ""
        if api.INVALID_JOB_ID in numbers:
            raise _NoSuchJob(f"Slurm does not know the job {how}: {said}")
        if error is None:
            if not isinstance(data, dict):
                raise TransientError(f"{self.service} answered with something other than a JSON object {how}")
            if errors:
                raise PermanentError(f"slurmctld refused the request {how}: {said}")
            return data
        if isinstance(error, AuthError) and retry_auth and self.tokens.can_refresh:
            self.tokens.invalidate()  # a minted token may have been revoked early: one more try with a new one
            return self._request(method, url, what, body, retry_auth=False)
        if isinstance(error, TransientError) and errors:
            if not numbers <= {-1, None}:  # slurmctld's own reason (bad partition, limits): asking again won't help
                raise PermanentError(f"slurmctld refused the request {how}: {said}")
            # 22.05 answers a refused token exactly like a down slurmctld, except that it answers at once.
            if http.elapsed(response) < self.options.auth_fast_seconds:
                if retry_auth and self.tokens.can_refresh:
                    self.tokens.invalidate()
                    return self._request(method, url, what, body, retry_auth=False)
                raise AuthError(
                    f"{self.service} refused user '{self.options.user}' with a fresh token {how}: "
                    f"{said}; check AuthAltTypes=auth/jwt, the jwt key "
                    f"and the user name"
                )
            raise TransientError(f"{error}; slurmrestd could not reach slurmctld", retry_after=error.retry_after)
        raise error

    def _url(self, path: str) -> str:
        return f"{self.options.url.rstrip('/')}/slurm/{self.version()}/{path}"

    def version(self) -> str:
        """The configured API version, or the newest one the server lists in its OpenAPI document."""
        if self._version is None:
            data = self._request("GET", f"{self.options.url.rstrip('/')}/openapi", "reading its OpenAPI document")
            versions = {m.group(1) for p in data.get("paths", {}) if (m := re.match(r"^/slurm/(v[\d.]+)/ping$", p))}
            if not versions:
                raise PermanentError(
                    f"slurmrestd at {self.options.url} offers no /slurm/vX/ping path; set api_version in the config"
                )
            self._version = max(versions, key=lambda v: tuple(int(x) for x in v[1:].split(".")))
        return self._version

    def probe(self) -> None:
        self._request("GET", self._url("ping"), "pinging slurmctld")

    def _jobs(self) -> dict[str, api.SlurmJob]:
        data = self._request("GET", self._url("jobs"), "listing jobs")
        return {job.job_id: job for job in map(api.parse_job, data.get("jobs") or [])}

    # -- contract ------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        wanted = spec.resources
        if not any(wanted.get(k) for k in ("cpus", "memory", "gpus")):
            return problems
        nodes = self._partition_nodes()
        if not nodes:
            return problems + [
                f"backend '{self.name}': partition '{self.options.partition or 'default'}' has no nodes; ask the admin"
            ]
        if (cpus := wanted.get("cpus")) and cpus > max(int(n.get("cpus") or 0) for n in nodes):
            problems.append(
                f"resources.cpus: {cpus} is more than any node has "
                f"({max(int(n.get('cpus') or 0) for n in nodes)}); ask for fewer"
            )
        if memory := wanted.get("memory"):
            biggest = max(int(n.get("real_memory") or 0) for n in nodes)
            if memory > biggest * 1024 * 1024:
                problems.append(f"resources.memory: more than any node has ({biggest} MiB); ask for less")
        if gpus := wanted.get("gpus"):
            counts = [sum(int(c) for c in re.findall(r"gpu(?::[^:(,]+)?:(\d+)", n.get("gres") or "")) for n in nodes]
            if gpus > max(counts):
                problems.append(
                    f"resources.gpus: {gpus} requested but no node in the partition has that many "
                    f"GPUs ({max(counts)}); remove it or use another inbox"
                )
        return problems

    def _partition_nodes(self) -> list[dict]:
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] > NODE_CACHE_SECONDS:
            nodes = self._request("GET", self._url("nodes"), "listing nodes").get("nodes") or []
            self._nodes = (now, nodes)
        nodes = self._nodes[1]
        if self.options.partition:
            nodes = [n for n in nodes if self.options.partition in (n.get("partitions") or [])]
        return nodes

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = WorkFolder(self.options.workdir_root, spec.submit_key)
        folder.stage(inputs)
        # slurmd opens ctrl/stdout.txt as the job's user; a folder it cannot write fails the job with
        # an empty log and "JobLaunchFailure" (the cause only in slurmd's own log), so say it here.
        for path in (folder.ctrl, folder.work):
            if (why := unwritable_by(path, self.options.user)) is not None:
                raise PermanentError(
                    f"job {spec.name} ({spec.job_id}): the Slurm user '{self.options.user}' cannot write {path} "
                    f"({why}), so Slurm could not start the job; run the daemon as '{self.options.user}' "
                    f"(the user jobs run as), or make workdir_root {self.options.workdir_root} its own"
                )

    def submit(self, spec: JobSpec) -> RemoteRef:
        folder = WorkFolder(self.options.workdir_root, spec.submit_key)
        if not folder.staged:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        if (known := folder.log("submitted_job_id")) and (job_id := known.read_text().strip()):
            return RemoteRef(job_id, {"dir": str(folder.path), "key": spec.submit_key})  # submitted already
        if isinstance(spec.command, str):
            folder.write_text("command.sh", spec.command)
        else:
            folder.write_text("command.argv", "".join(arg + "\0" for arg in spec.command))
        script = folder.write_text("batch.sh", BATCH_SCRIPT, mode=0o755)
        environment = {
            **self.options.environment,
            **spec.env,
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
            "SYNCD_CTRL": str(folder.ctrl),
        }
        limits = [t for t in (spec.timeout, spec.resources.get("walltime")) if t]
        body = api.submit_body(
            script=script.read_text(),
            name=spec.submit_key,
            comment=spec.submit_key,
            workdir=str(folder.work),
            environment=environment,
            stdout=str(folder.ctrl / "stdout.txt"),
            stderr=str(folder.ctrl / "stderr.txt"),
            # Slurm counts whole minutes; the engine enforces a finer timeout itself.
            time_limit_seconds=(min(limits) + 60) if limits else None,
            partition=self.options.partition,
            account=self.options.account,
            qos=self.options.qos,
            cpus=spec.resources.get("cpus"),
            memory_bytes=spec.resources.get("memory"),
            gpus=spec.resources.get("gpus"),
        )
        data = self._request("POST", self._url("job/submit"), f"submitting job {spec.submit_key}", body)
        new_id = data.get("job_id")
        if new_id is None:
            raise TransientError(f"slurmrestd accepted job {spec.submit_key} but returned no job id")
        folder.write_text("submitted_job_id", f"{new_id}\n")
        return RemoteRef(str(new_id), {"dir": str(folder.path), "key": spec.submit_key})

    def find(self, spec: JobSpec) -> RemoteRef | None:
        folder = WorkFolder(self.options.workdir_root, spec.submit_key)
        for job in self._jobs().values():
            if spec.submit_key in (job.comment, job.name):
                return RemoteRef(job.job_id, {"dir": str(folder.path), "key": spec.submit_key})
        # Forgotten by slurmctld (MinJobAge) but it did start: the batch script left its id behind.
        for marker in ("slurm_job_id", "submitted_job_id"):
            path = folder.ctrl / marker
            if path.exists() and (text := path.read_text().strip()):
                return RemoteRef(text, {"dir": str(folder.path), "key": spec.submit_key})
        return None

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        jobs = self._jobs()  # one request, whatever the number of jobs
        return {ref.remote_id: self._status(ref, jobs.get(ref.remote_id)) for ref in refs}

    def _status(self, ref: RemoteRef, job: api.SlurmJob | None) -> RemoteStatus:
        if job is not None:
            state = job.normalised
            message = job.reason if job.reason not in ("None", "") else ""
            if job.signal:
                message = f"{message + '; ' if message else ''}killed by signal {job.signal}"
            return RemoteStatus(
                state,
                job.state,
                exit_code=job.exit_status if state.terminal else None,
                message=message,
                started=job.start_time,
                ended=job.end_time,
            )
        # Vanished is not done: only the exit status the job wrote can tell how it ended.
        folder_path = ref.handle.get("dir")
        status_file = Path(folder_path) / "ctrl" / "exit_status" if folder_path else None
        if status_file is not None and status_file.exists():
            try:
                code = int(status_file.read_text().strip())
            except ValueError:
                code = None
            state = RemoteState.SUCCEEDED if code == 0 else RemoteState.FAILED
            return RemoteStatus(
                state,
                "FORGOTTEN",
                exit_code=code,
                message="slurmctld no longer lists the job; outcome read from its exit status file",
            )
        return RemoteStatus(
            RemoteState.UNKNOWN,
            "MISSING",
            message=f"slurmctld does not list job {ref.remote_id} and it left no exit status",
        )

    def cancel(self, ref: RemoteRef) -> None:
        try:
            self._request("DELETE", self._url(f"job/{ref.remote_id}"), f"cancelling job {ref.remote_id}")
        except _NoSuchJob:
            pass  # already gone: cancelling is harmless

    def logs(self, ref: RemoteRef) -> JobLogs:
        # The folder the job was given, as stored in its handle: `syncd logs` may run in a shell
        # without the variables the config's workdir_root was read from.
        if where := ref.handle.get("dir"):
            return WorkFolder(Path(where).parent, Path(where).name).logs()
        return WorkFolder(self.options.workdir_root, ref.handle.get("key", "")).logs()

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        return WorkFolder(self.options.workdir_root, ref.handle.get("key", spec.submit_key)).outputs(spec.outputs)

    def cleanup(self, ref: RemoteRef) -> None:
        if not self.options.keep_workdir and ref.handle.get("key"):
            WorkFolder(self.options.workdir_root, ref.handle["key"]).remove()

    def close(self) -> None:
        self._session.close()
