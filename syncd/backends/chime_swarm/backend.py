"""``type: chime-swarm``: jobs on the CHIME/FRB analysis cluster, through frb-master's swarm API (JSON, JWT).

Each attempt is a swarm service named by the submit key (regex-safe and a valid Docker name). The service has no
file transfer: a job's folder is on the site storage, which this host mounts (``work_folder``) and the job's
container mounts too (``job_work_folder``, through ``mount_archiver``). Inputs are staged there, the job runs the
wrapper there (its exit code in ``.syncd/exit-code``, stdout and stderr in files of their own, since the service
reports neither an exit code nor separate streams), and outputs are read back from there. Status comes from one
``job-status`` request for every job, with an anchored regex and exact name comparison (the first attempt's key is
a prefix of the later ones'). Cancel is ``kill-job``; cleanup is ``kill-job`` then ``prune-job``. The name is the
idempotency key: before spawning again after a lost answer, the job is looked for by name.
"""

from __future__ import annotations

import json
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
from syncd.backends.chime_swarm import api
from syncd.backends.chime_swarm.auth import SwarmTokens
from syncd.backends.chime_swarm.options import ChimeSwarmOptions
from syncd.backends.tokens import TokenSource
from syncd.backends.workdir import WorkFolder
from syncd.errors import AuthError, NotFoundError, NotReady, PermanentError, SyncdError, TransientError
from syncd.intake.manifest import InputFile

MARKER = "spawned.json"  # ctrl/: the spawn was asked for (and, once answered, the service's ID)
CANCELLED = "cancelled"  # ctrl/: syncd killed the job
SERVICE_LOG = "service-log.txt"  # ctrl/: the service's own log, when the job never reached the wrapper


class ChimeSwarmBackend(Backend):
    options_model = ChimeSwarmOptions
    options: ChimeSwarmOptions
    capabilities = Capabilities(
        batched_poll=True,
        native_timeout=False,
        cancel=CancelSupport.ALWAYS,
        exit_codes=False,
        logs=LogDelivery.STREAMED,
        separate_stderr=True,
        resources=frozenset({"cpus", "memory"}),
    )

    def __init__(self, name: str, options: ChimeSwarmOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.service = f"frb-master at {options.url}"
        self.tokens = SwarmTokens(
            TokenSource(options.access_token, owner=f"backend '{name}' access_token"),
            None
            if options.refresh_token is None
            else TokenSource(options.refresh_token, owner=f"backend '{name}' refresh_token"),
            refresh_before=options.refresh_before,
            exchange=self._exchange,
            owner=f"backend '{name}'",
        )
        self._session = requests.Session()
        self._lock = threading.Lock()
        self.requests_sent = 0  # requests to frb-master, auth included (for tests and metrics)

    # -- HTTP --------------------------------------------------------------------------------------------------
    @property
    def _timeout(self) -> tuple[float, float]:
        return self.options.connect_timeout, self.options.request_timeout

    def _send(self, method: str, path: str, what: str, token: str, body: Any = None) -> Any:
        with self._lock:
            self.requests_sent += 1
        response = http.request(
            self._session,
            method,
            self.options.url.rstrip("/") + path,
            service=self.service,
            what=what,
            timeout=self._timeout,
            headers={"authorization": token},
            json=body,
        )
        try:
            return response.json()
        except ValueError:
            raise TransientError(
                f"{self.service} answered with something other than JSON while {what} "
                f"({http.status_text(response)}); asking again later"
            ) from None

    def _call(self, method: str, path: str, what: str, body: Any = None) -> Any:
        """One API request with the current token; a refusal gets one more try when a new token may be had."""
        token = self.tokens.current()
        try:
            return self._send(method, path, what, token, body)
        except AuthError:
            if not self.tokens.refused(token):
                raise
        return self._send(method, path, what, self.tokens.current(), body)

    def _exchange(self, refresh_token: str, access_token: str) -> str:
        data = self._send(
            "POST", api.REFRESH, "refreshing the access token", access_token, {"refresh_token": refresh_token}
        )
        token = data.get("access_token") if isinstance(data, dict) else None
        return token if isinstance(token, str) else ""

    def _states(self, names: Sequence[str]) -> dict[str, str]:
        data = self._call("GET", api.named("job-status", api.status_pattern(names)), "reading job states")
        wanted = set(names)
        return {name: word for name, word in api.states(data).items() if name in wanted}

    # -- the job's folder on the site storage --------------------------------------------------------------
    def _folder(self, key: str) -> WorkFolder:
        return WorkFolder(self.options.work_folder, key)

    def _job_path(self, key: str, *parts: str) -> str:
        """A path of the job's folder as the job sees it."""
        root = self.options.job_work_folder or str(self.options.work_folder)
        return "/".join([root.rstrip("/"), key, *parts])

    @staticmethod
    def _marker(folder: WorkFolder) -> dict:
        try:
            data = json.loads((folder.ctrl / MARKER).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _ref(self, spec: JobSpec, service_id: str | None) -> RemoteRef:
        handle = {"key": spec.submit_key}
        if service_id:
            handle["id"] = service_id
        return RemoteRef(spec.submit_key, handle)

    # -- contract ------------------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        if not api.SERVICE_NAME.match(spec.submit_key):
            problems.append(
                f"job {spec.name}: its submit key {spec.submit_key!r} is not a name the swarm accepts "
                f"(letters, digits, '-', '_', '.', at most 63); report this to syncd's maintainers"
            )
        return problems

    def probe(self) -> None:
        for last in (False, True):
            token = self.tokens.current()
            try:
                data = self._send("GET", api.VERIFY, "verifying the access token", token)
            except NotFoundError:  # a deployment without /auth/verify: an authenticated call tells as much
                self._call("GET", api.JOBS, "listing jobs")
                return
            if isinstance(data, dict) and data.get("valid") is True:
                return
            if last or not self.tokens.refused(token):
                break
        raise AuthError(
            f"{self.service} says the access token of backend '{self.name}' is not valid; log in again and put "
            f"the new tokens where access_token and refresh_token read them"
        )

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        self._folder(spec.submit_key).stage(inputs)

    def submit(self, spec: JobSpec) -> RemoteRef:
        folder = self._folder(spec.submit_key)
        if not folder.staged:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        marker = self._marker(folder)
        if marker.get("spawned"):
            return self._ref(spec, marker.get("id"))  # spawned already
        if marker and spec.submit_key in self._states([spec.submit_key]):
            return self._remember(folder, spec, None)  # spawned, but the answer was lost
        wrapper.write(folder.work, spec.command)
        folder.write_json(MARKER, {"asked": time.time()})  # from here on, find() asks the service by name
        body = api.spawn_body(
            image=self.options.image,
            job_name=spec.submit_key,
            work=self._job_path(spec.submit_key, "work"),
            stdout=self._job_path(spec.submit_key, "ctrl", "stdout.txt"),
            stderr=self._job_path(spec.submit_key, "ctrl", "stderr.txt"),
            mount_archiver=self.options.mount_archiver,
            swarm_network=self.options.swarm_network,
            cpus=float(spec.resources.get("cpus") or self.options.cpus),
            memory=int(spec.resources.get("memory") or self.options.memory),
            memory_reservation=self.options.memory_reservation,
            environment={
                **self.options.environment,
                **spec.env,
                "SYNCD_JOB_ID": spec.job_id,
                "SYNCD_JOB_NAME": spec.name,
                "SYNCD_ATTEMPT": str(spec.attempt),
            },
        )
        try:
            answer = self._call("POST", api.SPAWN, f"spawning job {spec.submit_key}", body)
        except (TransientError, PermanentError) as exc:
            # A name in use is refused like any Docker error: the job may be there from a spawn whose answer
            # was lost. Whatever the refusal, the job is looked for before the error counts.
            try:
                there = spec.submit_key in self._states([spec.submit_key])
            except SyncdError:
                there = False
            if there:
                return self._remember(folder, spec, None)
            raise exc from None
        return self._remember(folder, spec, api.service_id(answer))

    def _remember(self, folder: WorkFolder, spec: JobSpec, service_id: str | None) -> RemoteRef:
        folder.write_json(MARKER, {**self._marker(folder), "spawned": True, "id": service_id})
        return self._ref(spec, service_id)

    def find(self, spec: JobSpec) -> RemoteRef | None:
        folder = self._folder(spec.submit_key)
        marker = self._marker(folder)
        if not marker:
            return None  # never asked: nothing to look for
        if marker.get("spawned"):
            return self._ref(spec, marker.get("id"))
        if spec.submit_key in self._states([spec.submit_key]):
            return self._remember(folder, spec, None)  # asked, and the answer was lost: the name tells
        if (folder.work / wrapper.EXIT_FILE).exists():
            return self._remember(folder, spec, None)  # it ran, and has been removed from the swarm since
        return None

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        if not refs:
            return {}
        words = self._states([ref.remote_id for ref in refs])  # one request for all of them
        return {ref.remote_id: self._status(ref, words.get(ref.remote_id)) for ref in refs}

    def _status(self, ref: RemoteRef, word: str | None) -> RemoteStatus:
        if word is not None:
            return api.state_of(word)
        # Not on the swarm (any more): what the job's folder says.
        folder = self._folder(ref.handle.get("key", ref.remote_id))
        exit_file = folder.work / wrapper.EXIT_FILE
        if exit_file.exists():
            code = wrapper.parse_exit_code(exit_file.read_text(errors="replace"))
            return RemoteStatus(
                RemoteState.SUCCEEDED if code == 0 else RemoteState.FAILED,
                "removed",
                message="the job ended and has been removed from the swarm since",
            )
        if (folder.ctrl / CANCELLED).exists():
            return RemoteStatus(RemoteState.CANCELLED, "removed", message="killed on request (kill-job)")
        return RemoteStatus(RemoteState.UNKNOWN, "not found", message=f"frb-master shows no job {ref.remote_id}")

    def cancel(self, ref: RemoteRef) -> None:
        folder = self._folder(ref.handle.get("key", ref.remote_id))
        if folder.ctrl.is_dir():
            (folder.ctrl / CANCELLED).touch()  # the service forgets a killed job: the folder remembers
        try:
            self._call("GET", api.named("kill-job", ref.remote_id), f"killing job {ref.remote_id}")
        except NotFoundError:
            pass  # gone already

    def logs(self, ref: RemoteRef) -> JobLogs:
        folder = self._folder(ref.handle.get("key", ref.remote_id))
        logs = folder.logs()
        if logs.stdout is not None or logs.stderr is not None:
            return logs
        # The wrapper never started (an image without /bin/sh, a mount that failed): the service's log says why.
        try:
            data = self._call("GET", api.named("logs", ref.remote_id), f"reading the log of job {ref.remote_id}")
        except NotFoundError:
            return JobLogs(None, None)
        text = data.get(ref.remote_id) if isinstance(data, dict) else None
        if not isinstance(text, str) or not text or not folder.ctrl.is_dir():
            return JobLogs(None, None)
        path = folder.write_text(SERVICE_LOG, text)
        return JobLogs(path, None)

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        folder = self._folder(ref.handle.get("key", spec.submit_key))
        exit_file = folder.work / wrapper.EXIT_FILE
        if not exit_file.is_file() and (folder.ctrl / "stdout.txt").exists():
            # The wrapper started. If its container ended well, it wrote the exit file, which this host does not
            # see yet: a network filesystem shows another host's writes late.
            word = self._states([ref.remote_id]).get(ref.remote_id, "")
            if api.state_of(word).state is RemoteState.SUCCEEDED:
                raise NotReady(
                    f"job {ref.remote_id} completed on the swarm, but its exit file is not visible here yet "
                    f"({folder.work}); waiting for the site storage",
                    retry_after=5.0,
                )
        found = [o for o in folder.outputs(spec.outputs) if not wrapper.is_wrapper_path(o.relpath)]
        if exit_file.is_file():
            found.append(OutputFile(wrapper.EXIT_FILE, exit_file, exit_file.stat().st_size))
        return found

    def cleanup(self, ref: RemoteRef) -> None:
        """The service goes (``kill-job`` removes it whatever its state; ``prune-job`` then sweeps a completed one
        that a kill did not remove), then the job's folder, unless ``keep_workdir``."""
        for path, what in (
            (api.named("kill-job", ref.remote_id), f"removing job {ref.remote_id}"),
            (api.named("prune-job", api.exact(ref.remote_id)), f"pruning job {ref.remote_id}"),
        ):
            try:
                self._call("GET", path, what)
            except NotFoundError:
                pass
        if not self.options.keep_workdir:
            self._folder(ref.handle.get("key", ref.remote_id)).remove()

    def close(self) -> None:
        self._session.close()
