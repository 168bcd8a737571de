"""``type: cybergis``: jobs on an HPC through a CyberGIS-Compute gateway (REST), using requests.

Each job is a folder ``<data_path>/<submit key>/``: ``work/`` holds the inputs and syncd's exit-code wrapper (the
command in data files, :mod:`syncd.backends.wrapper`) and is handed to the gateway as the job's data folder,
as a path on its server or through Globus; ``ctrl/`` keeps syncd's notes (the gateway's job id, a cancel,
a Globus transfer); ``result/`` receives the results by Globus unless the HPC's folders are mounted here.
The gateway runs the registered runner (``examples/cybergis/runner``), which copies the data folder into the
result folder and runs the wrapper there; syncd sends it nothing to execute, only its key in ``param``.

The gateway has no client-chosen name: the key travels as ``param.syncd_key`` and a job is looked up by it in
``GET /user/job`` before anything is created again; the id of a draft is written down before it is filled in
and submitted, so an interrupted submission is finished, not repeated.
"""

from __future__ import annotations

import json
import posixpath
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from syncd.backends import http, wrapper
from syncd.backends.base import (
    Backend,
    CancelSupport,
    Capabilities,
    JobLogs,
    JobSpec,
    LogDelivery,
    OutputFile,
    RemoteRef,
    RemoteState,
    RemoteStatus,
)
from syncd.backends.cybergis import api, results
from syncd.backends.cybergis.options import CybergisOptions
from syncd.backends.tokens import TokenSource
from syncd.backends.workdir import WorkFolder
from syncd.errors import AuthError, NotReady, PermanentError, TransientError
from syncd.fsutil import os_error
from syncd.intake.manifest import InputFile

CATALOGUE_SECONDS = 300
ENV_FOLDER = f"{wrapper.FOLDER}/env"
CANNOT_STOP = (
    "the gateway can stop only the jobs its supervisor holds in memory: not one still waiting in its "
    "queue, nor one it forgot when it restarted"
)


class CybergisBackend(Backend):
    options_model = CybergisOptions
    options: CybergisOptions
    capabilities = Capabilities(
        batched_poll=True,
        native_timeout=False,
        cancel=CancelSupport.ALWAYS,
        exit_codes=False,
        logs=LogDelivery.AT_END,
        separate_stderr=True,
        resources=frozenset({"cpus", "memory", "walltime", "gpus"}),
        stages_to_storage=False,
        multi_step_submit=True,
    )

    def __init__(self, name: str, options: CybergisOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.tokens = TokenSource(options, owner=f"backend '{name}'")
        self.base = api.base_url(options.url, options.prefix)
        self.service = f"CyberGIS-Compute at {self.base}"
        self._session = requests.Session()
        self._catalogue: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self.requests_sent = 0  # for tests and metrics

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        route: str,
        what: str,
        body: dict[str, Any] | None = None,
        *,
        auth: bool = True,
        retry_auth: bool = True,
    ) -> Any:
        """The JSON the gateway answers. Its token rides in the JSON body of every method, GET included; a refusal
        is read from the body's ``error`` key, whatever the status code; the rest goes to the one classifier."""
        payload = dict(body or {})
        if auth:
            payload["jupyterhubApiToken"] = api.encode_token(self.options.jupyterhub_host, self.tokens.get())
        timeout = (self.options.connect_timeout, self.options.request_timeout)
        with self._lock:
            self.requests_sent += 1
        started = time.monotonic()
        try:
            response = self._session.request(method, self.base + route, json=payload, timeout=timeout)
        except requests.RequestException as exc:
            raise http.classify_exception(
                exc, service=self.service, what=what, timeout=timeout, elapsed=time.monotonic() - started
            ) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        error: Exception | None
        status = response.status_code
        if status >= 500 or status in http.TRANSIENT_4XX or not (isinstance(data, dict) and "error" in data):
            error = http.classify_response(response, service=self.service, what=what)
        else:
            error = api.refusal(data, service=self.service, what=what, status=status, host=self.options.jupyterhub_host)
        if isinstance(error, AuthError) and retry_auth and self.tokens.can_refresh:
            self.tokens.invalidate()  # a file or command may hold a new token by now: one more try with it
            return self._request(method, route, what, body, auth=auth, retry_auth=False)
        if error is not None:
            raise error
        if data is None:
            raise TransientError(
                f"{self.service} answered {what} with something other than JSON "
                f"({http.status_text(response)}): {http.body_excerpt(response)!r}"
            )
        return data

    def _job(self, job_id: str) -> api.GatewayJob:
        job = api.parse_job(self._request("GET", f"/job/{job_id}", f"reading job {job_id}"))
        if job is None:
            raise TransientError(f"{self.service} answered a job object without an id for job {job_id}")
        return job

    def _jobs(self) -> list[api.GatewayJob]:
        return api.job_list(self._request("GET", "/user/job", "listing the user's jobs"))

    def _folder(self, key: str) -> WorkFolder:
        return WorkFolder(self.options.data_path, key)

    # -- catalogue and resources --------------------------------------------------------------------------------
    def _limits(self) -> tuple[str | None, dict[str, float]]:
        """(the HPC, the largest slurm values it takes), from GET /hpc, /git and /maintainer, cached a while."""
        now = time.monotonic()
        if self._catalogue is None or now - self._catalogue[0] > CATALOGUE_SECONDS:
            found = {
                name: self._request("GET", f"/{name}", f"reading its {name} list", auth=False).get(name) or {}
                for name in ("hpc", "git", "maintainer")
            }
            self._catalogue = (now, found)
        catalogue = self._catalogue[1]
        hpc = self.options.hpc or (catalogue["maintainer"].get(self.options.maintainer) or {}).get("default_hpc")
        if self.options.maintainer not in catalogue["maintainer"]:
            raise PermanentError(
                f"backend '{self.name}': {self.service} has no maintainer "
                f"'{self.options.maintainer}' (it has: {', '.join(sorted(catalogue['maintainer']))})"
            )
        if hpc not in catalogue["hpc"]:
            raise PermanentError(
                f"backend '{self.name}': {self.service} has no HPC '{hpc}' "
                f"(it has: {', '.join(sorted(catalogue['hpc']))}); fix hpc in the config"
            )
        if self.options.runner not in catalogue["git"]:
            raise PermanentError(
                f"backend '{self.name}': {self.service} lists no git runner '{self.options.runner}'; "
                f"register examples/cybergis/runner with the gateway, or fix runner in the config"
            )
        return hpc, api.ceilings(catalogue["hpc"][hpc], catalogue["git"][self.options.runner])

    def check(self, spec: JobSpec) -> list[str]:
        hpc, limits = self._limits()
        return super().check(spec) + api.resource_problems(spec, limits, f"HPC '{hpc}' through {self.service}")

    def probe(self) -> None:
        self._request("GET", "/user", "checking the token")

    # -- submission ----------------------------------------------------------------------------------------------
    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = self._folder(spec.submit_key)
        folder.stage(inputs)
        env = {
            **spec.env,
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
            "SYNCD_SUBMIT_KEY": spec.submit_key,
        }
        try:
            wrapper.write(folder.work, spec.command)
            for name, value in env.items():  # one file per variable: the runner reads them, never evaluates them
                path = folder.work / ENV_FOLDER / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(value)
            digests = {item.relpath: [item.size, results.sha256(folder.work / item.relpath)] for item in inputs}
        except OSError as exc:
            raise os_error(exc, f"staging into {folder.work}") from exc
        folder.write_json("staged.json", digests)

    def _data_folder(self, key: str) -> dict[str, str]:
        """The job's data folder as the gateway reaches it."""
        if self.options.server_data_path is not None:
            return {"type": "local", "localPath": posixpath.join(self.options.server_data_path, key, "work")}
        assert self.options.globus_endpoint is not None and self.options.globus_path is not None
        return {
            "type": "globus",
            "endpoint": self.options.globus_endpoint,
            "path": posixpath.join(self.options.globus_path, key, "work"),
        }

    def submit(self, spec: JobSpec) -> RemoteRef:
        key = safe_key(spec.submit_key)
        folder = self._folder(key)
        if folder.log("staged.json") is None:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        job = self._recorded(folder) or next((j for j in self._jobs() if j.key == key), None)
        if job is not None and not job.submitted:
            job = self._job(job.id)  # the list shows no events: only the job itself says whether it was submitted
        if job is None:
            body: dict[str, Any] = {"maintainer": self.options.maintainer}
            if self.options.hpc:
                body["hpc"] = self.options.hpc
            created = api.parse_job(self._request("POST", "/job", f"creating a job for {key}", body))
            if created is None:
                raise TransientError(f"{self.service} created a job for {key} but answered no id")
            folder.write_text("job_id", created.id)  # before anything else: a crash from here on finishes this one
            job = created
        if job.submitted:
            return RemoteRef(job.id, {"key": key})
        _, limits = self._limits()
        fields = {
            "localExecutableFolder": {"type": "git", "gitId": self.options.runner},
            "localDataFolder": self._data_folder(key),
            "param": {api.MARKER: key},
            "slurm": api.slurm_request(spec, limits["time"]),
        }
        self._request("PUT", f"/job/{job.id}", f"filling in job {job.id} ({key})", fields)
        try:
            self._request("POST", f"/job/{job.id}/submit", f"submitting job {job.id} ({key})")
        except api.Refused as exc:
            if api.ALREADY_SUBMITTED not in exc.said:
                raise
        return RemoteRef(job.id, {"key": key})

    def _recorded(self, folder: WorkFolder) -> api.GatewayJob | None:
        """The job whose id was written down after it was created, if the gateway still knows it as ours."""
        path = folder.log("job_id")
        if path is None or not (job_id := path.read_text().strip()):
            return None
        try:
            return self._job(job_id)
        except api.RefusedUnknown:
            return None  # e.g. a draft made while the token was refused: it belongs to nobody

    def find(self, spec: JobSpec) -> RemoteRef | None:
        key = safe_key(spec.submit_key)
        folder = self._folder(key)
        recorded = folder.log("job_id")
        recorded_id = recorded.read_text().strip() if recorded is not None else None
        mine = [j for j in self._jobs() if j.key == key or j.id == recorded_id]
        if not mine:
            return None
        job = min(mine, key=lambda j: (j.finished is None and j.initialized is None, j.id != recorded_id))
        if not job.submitted:
            job = self._job(job.id)
        if recorded_id != job.id:
            folder.write_text("job_id", job.id)
        return RemoteRef(job.id, {"key": key}, complete=job.submitted)

    # -- following -----------------------------------------------------------------------------------------------
    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        jobs = {job.id: job for job in self._jobs()}  # one request, however many jobs
        return {ref.remote_id: self._status(ref, jobs.get(ref.remote_id)) for ref in refs}

    def _mounted_result(self, job: api.GatewayJob) -> Path | None:
        if self.options.results_path is None or job.result_folder is None:
            return None
        return self.options.results_path / str(job.result_folder["id"])

    def _status(self, ref: RemoteRef, job: api.GatewayJob | None) -> RemoteStatus:
        if job is None:
            return RemoteStatus(
                RemoteState.UNKNOWN, "MISSING", message=f"the gateway does not list job {ref.remote_id}"
            )
        state, native, message = self._state(ref, job)
        return RemoteStatus(state, native, message=message, started=job.initialized, ended=job.finished)

    def _state(self, ref: RemoteRef, job: api.GatewayJob) -> tuple[RemoteState, str, str]:
        """The gateway knows queued, running, ended and failed; syncd adds what its own files tell."""
        result = self._mounted_result(job)
        if result is not None and (exit_file := result / wrapper.EXIT_FILE).is_file():
            # The wrapper finished (what the gateway says may lag, or never come after a restart of it).
            code = wrapper.parse_exit_code(exit_file.read_text(errors="replace"))
            native = "JOB_FAILED" if job.failed else "JOB_ENDED" if job.finished else "EXITED"
            note = "" if job.finished else "the command ended, but the gateway has not recorded it (restarted?)"
            return (RemoteState.SUCCEEDED if code == 0 else RemoteState.FAILED), native, note
        if job.finished is None:
            if job.initialized is None:
                return RemoteState.QUEUED, "JOB_QUEUED", ""
            return RemoteState.RUNNING, "JOB_INIT", ""
        if job.failed:
            return RemoteState.FAILED, "JOB_FAILED", "the gateway reports the job failed"
        if job.initialized is None or job.result_folder is None:
            return RemoteState.FAILED, "JOB_INIT_ERROR", "the gateway ended the job before it started on the HPC"
        if self._folder(ref.handle.get("key", "")).log("cancel") is not None:
            # The gateway has no cancelled state: a job it stopped ends as JOB_ENDED, like one that succeeded.
            return RemoteState.CANCELLED, "JOB_ENDED", "cancelled through the gateway"
        if result is not None and result.is_dir():
            return RemoteState.FAILED, "JOB_ENDED", NO_EXIT_CODE
        return RemoteState.SUCCEEDED, "JOB_ENDED", ""

    def cancel(self, ref: RemoteRef) -> None:
        folder = self._folder(ref.handle.get("key", ""))
        earlier = folder.log("cancel")
        sent_before = earlier is not None and earlier.read_text() == "sent"
        if folder.ctrl.is_dir():
            folder.write_text("cancel", "requested")  # first: a crash after the gateway took it still counts
        try:
            self._request(
                "PUT", f"/job/{ref.remote_id}/cancel", f"cancelling job {ref.remote_id}", {"jobId": ref.remote_id}
            )
        except api.Refused as exc:
            if api.NOT_HELD not in exc.said:
                raise
            if sent_before:
                folder.write_text("cancel", "sent")
            else:
                (folder.ctrl / "cancel").unlink(missing_ok=True)
            if self._job(ref.remote_id).finished is not None:
                return  # it has ended: cancelling is harmless
            raise PermanentError(f"{self.service} cannot stop job {ref.remote_id}: {CANNOT_STOP}") from None
        if folder.ctrl.is_dir():
            folder.write_text("cancel", "sent")

    # -- results -------------------------------------------------------------------------------------------------
    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        key = ref.handle.get("key", spec.submit_key)
        folder = self._folder(key)
        job = self._job(ref.remote_id)
        if job.result_folder is None:
            return []  # it never reached the HPC: there are no results
        local = self._results(ref, job, folder)
        folder.write_text("results", str(local))
        found = results.listing(local, spec.outputs, folder)
        if (
            self.options.globus_results
            and "JOB_ENDED" in job.events
            and folder.log("cancel") is None
            and not any(item.relpath == wrapper.EXIT_FILE for item in found)
        ):
            raise PermanentError(f"job {ref.remote_id}: {NO_EXIT_CODE}; its results are in {local}")
        return found

    def _results(self, ref: RemoteRef, job: api.GatewayJob, folder: WorkFolder) -> Path:
        """The result folder on this host: under results_path, or brought by Globus (NotReady until it is here)."""
        assert job.result_folder is not None
        mounted = self._mounted_result(job)
        if mounted is not None:
            if not mounted.is_dir():
                raise NotReady(
                    f"job {job.id}: its result folder {mounted} is not visible under results_path yet",
                    retry_after=self.options.globus_poll,
                )
            return mounted
        local = folder.path / "result"
        state = json.loads(path.read_text()) if (path := folder.log("globus.json")) else {}
        if state.get("done"):
            return local
        folder_id = str(job.result_folder["id"])
        if "JOB_ENDED" in job.events and not self._request(
            "GET", f"/job/{job.id}/result-folder-content", f"listing the results of job {job.id}"
        ):
            raise NotReady(f"job {job.id}: the gateway is still collecting its results", retry_after=1.0)
        if not state.get("task"):
            assert self.options.globus_endpoint is not None and self.options.globus_path is not None
            try:
                answer = self._request(
                    "POST",
                    f"/folder/{folder_id}/download/globus-init",
                    f"starting the Globus transfer of job {job.id}",
                    {
                        "jobId": job.id,
                        "fromPath": "/",
                        "toEndpoint": self.options.globus_endpoint,
                        "toPath": posixpath.join(self.options.globus_path, folder.path.name, "result"),
                    },
                )
                task = str(answer.get("globus_task_id"))
            except api.Refused as exc:
                if api.GLOBUS_BUSY not in exc.said:
                    raise
                task = "unknown"  # started before a crash: follow it
            folder.write_json("globus.json", {"task": task})
            raise NotReady(
                f"job {job.id}: Globus transfer {task} of its results started", retry_after=self.options.globus_poll
            )
        try:
            status = self._request(
                "GET", f"/folder/{folder_id}/download/globus-status", f"following the Globus transfer of job {job.id}"
            ).get("status")
        except api.Refused as exc:
            if api.GLOBUS_FORGOTTEN not in exc.said:
                raise
            status = "FORGOTTEN"  # the gateway forgets a task once it told its end: start it again
        if status == "SUCCEEDED":
            folder.write_json("globus.json", {**state, "done": True})
            return local
        if status in ("FAILED", "FORGOTTEN"):
            folder.write_json("globus.json", {})
            if status == "FAILED":
                raise TransientError(f"job {job.id}: the Globus transfer of its results failed; starting it again")
        raise NotReady(
            f"job {job.id}: Globus transfer {state['task']} of its results is {status}",
            retry_after=self.options.globus_poll if status != "FORGOTTEN" else 0.0,
        )

    def logs(self, ref: RemoteRef) -> JobLogs:
        """Slurm's stdout and stderr files from the result folder; without them (the job never ran, or its results
        are not here yet), what the gateway kept: its log pieces (stdout and stderr merged, each cut at 500
        characters) and its events."""
        folder = self._folder(ref.handle.get("key", ""))
        noted = folder.log("results")
        local = Path(noted.read_text()) if noted is not None else None
        data: Any = None
        if local is None or not (local / results.SLURM_LOGS[0]).is_file():
            data = self._request("GET", f"/job/{ref.remote_id}", f"reading the logs of job {ref.remote_id}")
            local = self._mounted_result(job) if (job := api.parse_job(data)) is not None else None
        if local is not None and (local / results.SLURM_LOGS[0]).is_file():
            stderr = local / results.SLURM_LOGS[1]
            return JobLogs(local / results.SLURM_LOGS[0], stderr if stderr.is_file() else None)
        if not folder.ctrl.is_dir():
            return JobLogs(None, None)
        pieces = "".join(str(log.get("message", "")) for log in data.get("logs") or [])
        events = "".join(
            f"{e.get('createdAt')} {e.get('type')}: {e.get('message')}\n" for e in data.get("events") or []
        )
        return JobLogs(folder.write_text("gateway-logs.txt", pieces), folder.write_text("gateway-events.txt", events))

    def cleanup(self, ref: RemoteRef) -> None:
        """The job's folder in data_path goes; the gateway keeps its jobs and HPC folders (it deletes none)."""
        if not self.options.keep_data and ref.handle.get("key"):
            self._folder(ref.handle["key"]).remove()

    def close(self) -> None:
        self._session.close()


NO_EXIT_CODE = (
    "the gateway reports the job ended, but syncd's wrapper recorded no exit code: Slurm stopped the "
    "command (time or memory limit) or its node failed"
)


def safe_key(submit_key: str) -> str:
    """The submit key, checked to be safe where the gateway splices it: ``param_syncd_key="<key>"`` in a shell."""
    if not submit_key or any(not (c.isalnum() or c in "-_.") for c in submit_key):
        raise PermanentError(f"submit key {submit_key!r} has characters the gateway would splice into a shell line")
    return submit_key
