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

import base64
import json
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import requests
from pydantic import Field, model_validator

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
from syncd.backends.workdir import WorkFolder
from syncd.config import BackendOptions, ConfigPath, Duration, StrictModel
from syncd.errors import AuthError, PermanentError, TransientError
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


class TokenOptions(StrictModel):
    file: ConfigPath | None = Field(None, description="read the token from this file (re-read when refused)")
    env: str | None = Field(None, description="read the token from this environment variable")
    command: str | list[str] | None = Field(
        None, description="run this to mint a token, e.g. 'scontrol token username=syncd lifespan=3600'; "
                          "its output may be the token or SLURM_JWT=<token>")
    refresh_before: Duration = Field(300.0, description="mint a new token when the current one expires sooner")

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("file", "env", "command") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of token.file, token.env or token.command")
        return self


class SlurmOptions(BackendOptions):
    url: str = Field(description="slurmrestd base URL, e.g. http://127.0.0.1:6820")
    api_version: str | None = Field(None, pattern=r"^v\d+\.\d+\.\d+$",
                                    description="OpenAPI version, e.g. v0.0.38 (default: the newest the server offers)")
    user: str = Field(description="the Slurm user the token belongs to; jobs run as this user")
    token: TokenOptions = Field(description="where the JWT comes from")
    partition: str | None = Field(None, description="partition to submit to (default: the cluster's default)")
    account: str | None = Field(None, description="account to charge")
    qos: str | None = Field(None, description="quality of service")
    workdir_root: ConfigPath = Field(description="shared folder seen by this host and the compute nodes")
    max_parallel: int = Field(50, gt=0, description="jobs submitted to Slurm at once")
    environment: dict[str, str] = Field(default_factory=lambda: {"PATH": "/usr/local/bin:/usr/bin:/bin"},
                                        description="base environment of every job (the manifest's env is added)")
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
    auth_fast_seconds: Duration = Field(
        2.0, description="slurmrestd 22.05 reports a refused token as HTTP 500; such an answer faster than this, "
                         "with a freshly minted token, counts as an auth failure (a down slurmctld answers slowly)")
    keep_workdir: bool = Field(False, description="keep each job's work folder after its results are delivered")


class _JobNotFound(Exception):
    pass


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(data["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class TokenSource:
    """Supplies a JWT: from a file, a variable or a command; minted anew before it expires."""

    def __init__(self, options: TokenOptions, environ: dict[str, str] | None = None):
        self.options = options
        self._environ = environ
        self._token: str | None = None
        self._expires: float | None = None
        self._lock = threading.Lock()

    @property
    def can_refresh(self) -> bool:
        return self.options.command is not None or self.options.file is not None

    def get(self) -> str:
        with self._lock:
            if self._token is None or (self._expires is not None
                                       and self._expires - time.time() < self.options.refresh_before):
                self._token = self._read()
                self._expires = _jwt_expiry(self._token)
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _read(self) -> str:
        opts = self.options
        if opts.env:
            value = (self._environ if self._environ is not None else os.environ).get(opts.env)
            if not value:
                raise AuthError(f"environment variable {opts.env} (token.env) is not set")
            return value.strip().removeprefix("SLURM_JWT=")
        if opts.file:
            try:
                return opts.file.read_text().strip().removeprefix("SLURM_JWT=")
            except OSError as exc:
                raise AuthError(f"cannot read the token file {opts.file}: {exc.strerror}") from None
        argv = shlex.split(opts.command) if isinstance(opts.command, str) else list(opts.command)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientError(f"token command {argv[0]} could not run: {exc}") from None
        if done.returncode != 0:
            raise AuthError(f"token command '{argv[0]}' exited {done.returncode}: {done.stderr.strip()[:200]}")
        match = re.search(r"SLURM_JWT=(\S+)", done.stdout)
        token = match.group(1) if match else done.stdout.strip()
        if not token:
            raise AuthError(f"token command '{argv[0]}' printed no token")
        return token


class SlurmBackend(Backend):
    options_model = SlurmOptions
    options: SlurmOptions
    capabilities = Capabilities(logs=LogDelivery.STREAMED, resources=frozenset({"cpus", "memory", "walltime", "gpus"}))

    def __init__(self, name: str, options: SlurmOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.tokens = TokenSource(options.token)
        self._session = requests.Session()
        self._version = options.api_version
        self._nodes: tuple[float, list[dict]] | None = None
        self._lock = threading.Lock()
        self.requests_sent = 0  # for tests and metrics: how many HTTP requests this instance made

    # -- HTTP ------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"X-SLURM-USER-NAME": self.options.user, "X-SLURM-USER-TOKEN": self.tokens.get(),
                "Accept": "application/json"}

    def _request(self, method: str, url: str, body: Any = None, *, retry_auth: bool = True) -> dict:
        started = time.monotonic()
        where = f"slurmrestd at {self.options.url}"
        try:
            with self._lock:
                self.requests_sent += 1
            response = self._session.request(
                method, url, json=body, headers=self._headers(),
                timeout=(self.options.connect_timeout, self.options.request_timeout),
            )
        except requests.Timeout:
            raise TransientError(f"{where} did not answer within {self.options.request_timeout:.0f}s") from None
        except requests.ConnectionError as exc:
            raise TransientError(f"cannot reach {where} ({type(exc).__name__}); is slurmrestd running?") from None
        elapsed = time.monotonic() - started
        status = response.status_code
        if status in (401, 403):
            raise AuthError(f"{where} refused the token of user '{self.options.user}' (HTTP {status}); "
                            f"check token and user in the config")
        if status in (429, 502, 503, 504):
            retry_after = response.headers.get("Retry-After")
            raise TransientError(f"{where} answered HTTP {status}",
                                 retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None)
        try:
            data = response.json()
        except ValueError:
            raise TransientError(f"{where} answered HTTP {status} with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise TransientError(f"{where} answered HTTP {status} with unexpected JSON")
        errors = api.error_list(data)
        if status < 400 and not errors:
            return data
        numbers = {e.get("error_number") for e in errors}
        if api.INVALID_JOB_ID in numbers:
            raise _JobNotFound(api.describe_errors(errors))
        if status == 500 and errors and numbers <= {-1, None}:
            # 22.05 answers a refused token exactly like a down slurmctld, except that it answers at once.
            if elapsed < self.options.auth_fast_seconds:
                if retry_auth and self.tokens.can_refresh:
                    self.tokens.invalidate()
                    return self._request(method, url, body, retry_auth=False)
                raise AuthError(f"{where} refused user '{self.options.user}' with a fresh token "
                                f"({api.describe_errors(errors)}); check AuthAltTypes=auth/jwt, the jwt key "
                                f"and the user name")
            raise TransientError(f"{where} could not reach slurmctld ({api.describe_errors(errors)})")
        if status >= 500 and not errors:
            raise TransientError(f"{where} answered HTTP {status}")
        raise PermanentError(f"{where} refused the request (HTTP {status}): {api.describe_errors(errors)}")

    def _url(self, path: str) -> str:
        return f"{self.options.url.rstrip('/')}/slurm/{self.version()}/{path}"

    def version(self) -> str:
        """The configured API version, or the newest one the server lists in its OpenAPI document."""
        if self._version is None:
            data = self._request("GET", f"{self.options.url.rstrip('/')}/openapi")
            versions = {m.group(1) for p in data.get("paths", {}) if (m := re.match(r"^/slurm/(v[\d.]+)/ping$", p))}
            if not versions:
                raise PermanentError(f"slurmrestd at {self.options.url} offers no /slurm/vX/ping path; "
                                     f"set api_version in the config")
            self._version = max(versions, key=lambda v: tuple(int(x) for x in v[1:].split(".")))
        return self._version

    def probe(self) -> None:
        self._request("GET", self._url("ping"))

    def _jobs(self) -> dict[str, api.SlurmJob]:
        data = self._request("GET", self._url("jobs"))
        return {job.job_id: job for job in map(api.parse_job, data.get("jobs") or [])}

    # -- contract ------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        wanted = spec.resources
        if not any(wanted.get(k) for k in ("cpus", "memory", "gpus")):
            return problems
        nodes = self._partition_nodes()
        if not nodes:
            return problems + [f"backend '{self.name}': partition '{self.options.partition or 'default'}' "
                               f"has no nodes; ask the admin"]
        if (cpus := wanted.get("cpus")) and cpus > max(int(n.get("cpus") or 0) for n in nodes):
            problems.append(f"resources.cpus: {cpus} is more than any node has "
                            f"({max(int(n.get('cpus') or 0) for n in nodes)}); ask for fewer")
        if (memory := wanted.get("memory")):
            biggest = max(int(n.get("real_memory") or 0) for n in nodes)
            if memory > biggest * 1024 * 1024:
                problems.append(f"resources.memory: more than any node has ({biggest} MiB); ask for less")
        if (gpus := wanted.get("gpus")):
            counts = [sum(int(c) for c in re.findall(r"gpu(?::[^:(,]+)?:(\d+)", n.get("gres") or "")) for n in nodes]
            if gpus > max(counts):
                problems.append(f"resources.gpus: {gpus} requested but no node in the partition has that many "
                                f"GPUs ({max(counts)}); remove it or use another inbox")
        return problems

    def _partition_nodes(self) -> list[dict]:
        now = time.monotonic()
        if self._nodes is None or now - self._nodes[0] > NODE_CACHE_SECONDS:
            nodes = self._request("GET", self._url("nodes")).get("nodes") or []
            self._nodes = (now, nodes)
        nodes = self._nodes[1]
        if self.options.partition:
            nodes = [n for n in nodes if self.options.partition in (n.get("partitions") or [])]
        return nodes

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        WorkFolder(self.options.workdir_root, spec.submit_key).stage(inputs)

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
        environment = {**self.options.environment, **spec.env, "SYNCD_JOB_ID": spec.job_id,
                       "SYNCD_JOB_NAME": spec.name, "SYNCD_ATTEMPT": str(spec.attempt),
                       "SYNCD_CTRL": str(folder.ctrl)}
        limits = [t for t in (spec.timeout, spec.resources.get("walltime")) if t]
        body = api.submit_body(
            script=script.read_text(), name=spec.submit_key, comment=spec.submit_key, workdir=str(folder.work),
            environment=environment, stdout=str(folder.ctrl / "stdout.txt"), stderr=str(folder.ctrl / "stderr.txt"),
            # Slurm counts whole minutes; the engine enforces a finer timeout itself.
            time_limit_seconds=(min(limits) + 60) if limits else None,
            partition=self.options.partition, account=self.options.account, qos=self.options.qos,
            cpus=spec.resources.get("cpus"), memory_bytes=spec.resources.get("memory"), gpus=spec.resources.get("gpus"),
        )
        data = self._request("POST", self._url("job/submit"), body)
        job_id = data.get("job_id")
        if job_id is None:
            raise TransientError(f"slurmrestd accepted job {spec.submit_key} but returned no job id")
        folder.write_text("submitted_job_id", f"{job_id}\n")
        return RemoteRef(str(job_id), {"dir": str(folder.path), "key": spec.submit_key})

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
            return RemoteStatus(state, job.state, exit_code=job.exit_status if state.terminal else None,
                                message=message, started=job.start_time, ended=job.end_time)
        # Vanished is not done: only the exit status the job wrote can tell how it ended.
        folder_path = ref.handle.get("dir")
        status_file = Path(folder_path) / "ctrl" / "exit_status" if folder_path else None
        if status_file is not None and status_file.exists():
            try:
                code = int(status_file.read_text().strip())
            except ValueError:
                code = None
            state = RemoteState.SUCCEEDED if code == 0 else RemoteState.FAILED
            return RemoteStatus(state, "FORGOTTEN", exit_code=code,
                                message="slurmctld no longer lists the job; outcome read from its exit status file")
        return RemoteStatus(RemoteState.UNKNOWN, "MISSING",
                            message=f"slurmctld does not list job {ref.remote_id} and it left no exit status")

    def cancel(self, ref: RemoteRef) -> None:
        try:
            self._request("DELETE", self._url(f"job/{ref.remote_id}"))
        except _JobNotFound:
            pass  # already gone: cancelling is harmless

    def logs(self, ref: RemoteRef) -> JobLogs:
        return WorkFolder(self.options.workdir_root, ref.handle.get("key", "")).logs()

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        return WorkFolder(self.options.workdir_root, ref.handle.get("key", spec.submit_key)).outputs(spec.outputs)

    def cleanup(self, ref: RemoteRef) -> None:
        if not self.options.keep_workdir and ref.handle.get("key"):
            WorkFolder(self.options.workdir_root, ref.handle["key"]).remove()

    def close(self) -> None:
        self._session.close()
