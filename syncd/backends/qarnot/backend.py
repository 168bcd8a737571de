"""``type: qarnot``: jobs as tasks on Qarnot's cloud, inputs and results through its S3 buckets.

A job's inputs go into the backend's resource bucket under ``<job id>/`` (unchanged ones are not uploaded
again), with syncd's exit-code wrapper beside them. The task runs the wrapper as ``DOCKER_CMD`` of the
profile (``docker-batch``); the job's command reaches it only as a data file, its environment as task
constants. The task's shortname is the job's submit key, so after a crash ``GET /tasks/{shortname}`` says
whether it was submitted. One paginated request, filtered by the backend's tag, polls every job. Results
come back in a bucket per task; when syncd's storage is that same S3 they are copied server-side, else
downloaded. Qarnot reports no exit code: the wrapper's exit file gives it. Cleanup deletes the task, its
result bucket and its inputs once syncd has delivered the results.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import Field

from syncd.backends import http, wrapper
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
from syncd.backends.qarnot import api
from syncd.backends.qarnot.buckets import Buckets, Stored
from syncd.backends.tokens import TokenOptions, TokenSource
from syncd.config import BackendOptions, Duration
from syncd.errors import AccountError, AuthError, NotFoundError, PermanentError, SyncdError, TransientError
from syncd.intake.manifest import InputFile, glob_to_regex, match_any
from syncd.storage.base import check_key

DEFAULT_STORAGE = "https://storage.qarnot.com"
BUCKET = r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$"
#: how long a job waits before it tries again when the account's task quota is used up
QUOTA_WAIT = 60.0


class QarnotOptions(BackendOptions, TokenOptions):
    """A Qarnot account; its API token from :class:`~syncd.backends.tokens.TokenOptions`."""

    cluster_url: str = Field(
        "https://api.qarnot.com", pattern=r"^https?://", description="Qarnot's compute API (no version in the path)"
    )
    storage_url: str | None = Field(
        None, pattern=r"^https?://", description="Qarnot's S3 storage (default: the one the API names in /settings)"
    )
    profile: str = Field(
        "docker-batch", min_length=1, description="the task profile; it runs DOCKER_CMD in a container"
    )
    docker_image: str | None = Field(
        None,
        description="container image, repo[:tag] (the profile's DOCKER_REPO and "
        "DOCKER_TAG; default: the profile's own)",
    )
    constraints: dict[str, str] = Field(default_factory=dict, description="task constraints (key: value) of every job")
    hardware_constraints: list[dict[str, Any]] = Field(
        default_factory=list,
        description="hardware constraints of every job, as the API spells them, e.g. "
        "{discriminator: SpecificHardwareConstraint, specificationKey: …}",
    )
    tags: list[str] = Field(
        default_factory=list, description="tags of every task (syncd adds 'syncd' and 'syncd-<backend name>')"
    )
    resource_bucket: str = Field(
        "syncd-inputs",
        pattern=BUCKET,
        description="bucket that takes every job's inputs (a folder per job); created if missing",
    )
    poll_page_size: int = Field(100, gt=0, le=1000, description="tasks asked for per page when polling")
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
    keep_remote: bool = Field(False, description="keep each task and its buckets after its results are delivered")


class QarnotBackend(Backend):
    options_model = QarnotOptions
    options: QarnotOptions
    capabilities = Capabilities(
        batched_poll=True,
        native_timeout=False,
        cancel=CancelSupport.ALWAYS,
        exit_codes=False,
        logs=LogDelivery.STREAMED,
        separate_stderr=True,
        resources=frozenset({"cpus", "memory", "gpus"}),
        stages_to_storage=False,
        multi_step_submit=False,
    )

    def __init__(self, name: str, options: QarnotOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.tokens = TokenSource(options, owner=f"backend '{name}'")
        self.service = f"Qarnot at {options.cluster_url}"
        self.tag = f"syncd-{name}"
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._email: str | None = None
        self._buckets: Buckets | None = None
        self.requests_sent = 0  # for tests and metrics: HTTP requests to the compute API

    # -- the compute API ------------------------------------------------------------------
    def _call(
        self, method: str, path: str, what: str, body: Any = None, *, raw: bool = False, retry_auth: bool = True
    ) -> Any:
        """The JSON (or, with ``raw``, the bytes) Qarnot answers; refusals classified by :mod:`syncd.backends.http`
        and by what Qarnot's message says (quota, credits, hardware)."""
        timeout = (self.options.connect_timeout, self.options.request_timeout)
        url = self.options.cluster_url.rstrip("/") + path
        with self._lock:
            self.requests_sent += 1
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                url,
                json=body,
                timeout=timeout,
                headers={"Authorization": self.tokens.get(), "Accept": "application/json"},
            )
        except requests.RequestException as exc:
            raise http.classify_exception(
                exc, service=self.service, what=what, timeout=timeout, elapsed=time.monotonic() - started
            ) from None
        error = http.classify_response(response, service=self.service, what=what)
        if error is not None:
            said = http.body_excerpt(response).lower()
            how = f"while {what} ({http.status_text(response)})"
            if response.status_code == 403 and api.MAX_TASKS in said:
                raise TransientError(
                    f"{self.service} has as many tasks as the account may have {how}; the job "
                    f"waits until tasks end (syncd deletes each one it has delivered)",
                    retry_after=QUOTA_WAIT,
                )
            if response.status_code == 402 and api.HARDWARE in said:
                raise PermanentError(
                    f"no machine of {self.service} matches the job's hardware constraints {how}: "
                    f"{http.body_excerpt(response)}; ask for fewer cpus, less memory or no GPU"
                )
            if response.status_code == 402:
                raise AccountError(
                    f"{self.service} refused to start tasks: the account has not enough credits {how}; "
                    f"add credits to the account. Jobs wait, and syncd tries again"
                )
            if isinstance(error, AuthError) and retry_auth and self.tokens.can_refresh:
                self.tokens.invalidate()  # a new token may work: one more try
                return self._call(method, path, what, body, raw=raw, retry_auth=False)
            raise error
        try:
            if raw:
                return response.content
            return response.json()
        except (ValueError, requests.RequestException):
            raise TransientError(
                f"{self.service} answered with something other than JSON while {what} ({http.status_text(response)})"
            ) from None

    def _task(self, key: str, what: str) -> dict | None:
        """The task whose uuid or shortname is ``key``; None if Qarnot does not know it."""
        try:
            task = self._call("GET", f"/tasks/{key}", what)
        except NotFoundError:
            return None
        if not isinstance(task, dict) or not task.get("uuid"):
            raise TransientError(f"{self.service} answered with something other than a task while {what}")
        return task

    # -- the S3 side ----------------------------------------------------------------------
    def _s3(self) -> tuple[Any, Buckets]:
        """A client of Qarnot's storage: the account's e-mail (from /info) and the API token as S3 keys."""
        if self._buckets is None:
            url = self.options.storage_url
            if url is None:
                settings = self._call("GET", "/settings", "reading its settings")
                url = settings.get("storage", DEFAULT_STORAGE) if isinstance(settings, dict) else DEFAULT_STORAGE
                if not isinstance(url, str) or not url:
                    raise PermanentError(
                        f"{self.service} names no storage in its settings; set storage_url for backend '{self.name}'"
                    )
            self._buckets = Buckets(url, (self.options.connect_timeout, self.options.request_timeout))
        if self._email is None:
            self.probe()
        assert self._email is not None
        return self._buckets.client(self._email, self.tokens.get()), self._buckets

    def probe(self) -> None:
        info = self._call("GET", "/info", "reading the account")
        email = info.get("email") if isinstance(info, dict) else None
        if not isinstance(email, str) or not email:
            raise TransientError(f"{self.service} answered /info without the account's e-mail")
        self._email = email

    # -- contract -------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = []
        for key, value in sorted(spec.resources.items()):
            if value is None or key in self.capabilities.resources:
                continue
            if key == "walltime":
                problems.append(
                    "resources.walltime: Qarnot tasks have no time limit of their own; remove it and set "
                    "'timeout:' in job.yaml instead (syncd aborts the task when it passes)"
                )
            else:
                problems.append(f"resources.{key}: the '{self.name}' backend cannot honour this; remove it")
        if (spec.resources.get("gpus") or 0) > 1:
            problems.append(
                "resources.gpus: Qarnot's hardware constraint asks for a machine with a GPU, not for a "
                "number of them; ask for 1"
            )
        return problems

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        s3, buckets = self._s3()
        bucket, prefix = self.options.resource_bucket, f"{spec.job_id}/"
        buckets.ensure(s3, bucket)
        there = {item.key: item for item in buckets.listing(s3, bucket, prefix)}
        for item in inputs:
            key = prefix + item.relpath
            buckets.put_if_changed(s3, bucket, key, item.source, there.get(key), item.relpath)
        for relpath, content in wrapper.files(spec.command).items():
            key = prefix + relpath
            buckets.put_if_changed(s3, bucket, key, content, there.get(key), relpath)

    def submit(self, spec: JobSpec) -> RemoteRef:
        short = api.shortname(spec.submit_key)
        found = self._task(short, f"looking up task {short}")
        if found is not None:
            return self._ref(found["uuid"], short, spec)
        s3, buckets = self._s3()
        results = api.bucket_name(short)
        buckets.ensure(s3, results)
        constants = {
            **dict(api.docker_image(self.options.docker_image)),
            **spec.env,
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
        }
        body = api.task_body(
            name=spec.name,
            short=short,
            profile=self.options.profile,
            argv=wrapper.argv(),
            constants=constants,
            tags=["syncd", self.tag, *self.options.tags],
            labels={"syncd-job-id": spec.job_id, "syncd-submit-key": spec.submit_key},
            resources=api.resource_bucket(self.options.resource_bucket, f"{spec.job_id}/"),
            result_bucket=results,
            constraints=self.options.constraints,
            hardware=[
                *self.options.hardware_constraints,
                *api.hardware_constraints(
                    spec.resources.get("cpus"), spec.resources.get("memory"), spec.resources.get("gpus")
                ),
            ],
        )
        try:
            data = self._call("POST", "/tasks", f"submitting task {short}", body)
        except PermanentError as exc:
            if isinstance(exc, AuthError):
                raise
            found = self._task(short, f"looking up task {short}")  # refused as a duplicate: it was submitted
            if found is None:
                raise
            return self._ref(found["uuid"], short, spec)
        task_id = data.get("uuid") if isinstance(data, dict) else None
        if not task_id:
            raise TransientError(f"{self.service} took task {short} but named no uuid; syncd looks it up by name")
        return self._ref(str(task_id), short, spec)

    def _ref(self, task_id: str, short: str, spec: JobSpec) -> RemoteRef:
        return RemoteRef(task_id, {"shortname": short, "results": api.bucket_name(short), "inputs": f"{spec.job_id}/"})

    def find(self, spec: JobSpec) -> RemoteRef | None:
        short = api.shortname(spec.submit_key)
        found = self._task(short, f"looking up task {short}")
        return None if found is None else self._ref(found["uuid"], short, spec)

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        wanted = {ref.remote_id for ref in refs}
        tasks: dict[str, dict] = {}
        token: str | None = None
        while True:  # one page for most daemons; the pages stop as soon as every job is seen
            page = self._call(
                "POST",
                "/tasks/paginate",
                f"listing the tasks tagged {self.tag}",
                api.page_request(api.tag_filter(self.tag), token, self.options.poll_page_size),
            )
            if not isinstance(page, dict) or not isinstance(page.get("data"), list):
                raise TransientError(f"{self.service} answered a task listing without its 'data'")
            tasks.update((t["uuid"], t) for t in page["data"] if isinstance(t, dict) and t.get("uuid"))
            token = page.get("nextToken")
            if wanted <= tasks.keys() or not page.get("isTruncated") or not token:
                break
        return {ref.remote_id: self._status(ref, tasks.get(ref.remote_id)) for ref in refs}

    def _status(self, ref: RemoteRef, task: dict | None) -> RemoteStatus:
        if task is None:
            return RemoteStatus(
                RemoteState.UNKNOWN,
                "MISSING",
                message=f"{self.service} lists no task {ref.remote_id} tagged {self.tag}",
            )
        native = str(task.get("state"))
        state = api.state_of(native)
        return RemoteStatus(
            state,
            native,
            exit_code=None,
            message=api.errors_of(task),
            ended=api.parse_date(task.get("endDate")) if state.terminal else None,
        )

    def cancel(self, ref: RemoteRef) -> None:
        try:
            self._call("POST", f"/tasks/{ref.remote_id}/abort", f"aborting task {ref.remote_id}")
        except NotFoundError:
            return  # deleted already: nothing runs
        except AuthError:
            # Qarnot refuses (403) to abort a task that is no longer running: that is no error for syncd.
            task = self._task(ref.remote_id, f"reading task {ref.remote_id}")
            if task is None or task.get("state") in (*api.ENDED, "PendingCancel"):
                return
            raise

    def _folder(self, ref: RemoteRef) -> Path:
        return self.work_root / re.sub(r"[^A-Za-z0-9_.-]", "_", ref.remote_id)

    def logs(self, ref: RemoteRef) -> JobLogs:
        folder = self._folder(ref)
        folder.mkdir(parents=True, exist_ok=True)
        found: dict[str, Path] = {}
        for stream in ("stdout", "stderr"):
            data = self._call(
                "GET", f"/tasks/{ref.remote_id}/{stream}", f"reading the {stream} of task {ref.remote_id}", raw=True
            )
            path = folder / f"{stream}.txt"
            part = folder / f"{stream}.txt.part"
            part.write_bytes(data)
            part.replace(path)
            found[stream] = path
        return JobLogs(found["stdout"], found["stderr"])

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        s3, buckets = self._s3()
        results = ref.handle.get("results") or api.bucket_name(api.shortname(spec.submit_key))
        prefix = ref.handle.get("inputs") or f"{spec.job_id}/"
        staged = {i.key[len(prefix) :]: i for i in buckets.listing(s3, self.options.resource_bucket, prefix)}
        regexes = [glob_to_regex(p) for p in spec.outputs] if spec.outputs is not None else None
        chosen: list[Stored] = []
        for item in buckets.listing(s3, results):
            rel = item.key
            if rel.endswith("/") or not _safe(rel):
                continue
            if rel != wrapper.EXIT_FILE:
                if wrapper.is_wrapper_path(rel):
                    continue
                if regexes is not None and not match_any(rel, regexes):
                    continue
                was = staged.get(rel)
                if regexes is None and was is not None and (was.size, was.etag) == (item.size, item.etag):
                    continue  # an input the job left unchanged
            chosen.append(item)
        if self._same_storage(spec, results, chosen):
            return [OutputFile(i.key, None, i.size, remote=RemoteObject(results, i.key, i.md5)) for i in chosen]
        folder = self._folder(ref) / "results"
        found = []
        for item in chosen:
            dest = folder / item.key
            buckets.download(s3, results, item, dest)
            found.append(OutputFile(item.key, dest, item.size))
        return found

    def _same_storage(self, spec: JobSpec, bucket: str, items: list[Stored]) -> bool:
        """Whether syncd's storage is Qarnot's S3 and can read the result bucket: then outputs are copied there
        server-side instead of downloaded and uploaded again."""
        if spec.staging is None or not items or self._buckets is None:
            return False
        options = spec.staging.storage.options
        endpoint = getattr(options, "endpoint_url", None)
        if options.type != "s3" or not endpoint or _origin(endpoint) != _origin(self._buckets.endpoint):
            return False
        try:
            info = spec.staging.storage.head(bucket, items[0].key)
        except SyncdError:
            return False
        return info is not None and info.size == items[0].size

    def cleanup(self, ref: RemoteRef) -> None:
        shutil.rmtree(self._folder(ref), ignore_errors=True)
        if self.options.keep_remote:
            return
        try:
            self._call("DELETE", f"/tasks/{ref.remote_id}", f"deleting task {ref.remote_id}")
        except NotFoundError:
            pass
        s3, buckets = self._s3()
        if ref.handle.get("results"):
            buckets.remove(s3, ref.handle["results"], bucket_too=True)
        if ref.handle.get("inputs"):
            buckets.remove(s3, self.options.resource_bucket, ref.handle["inputs"])

    def close(self) -> None:
        self._session.close()


def _safe(key: str) -> bool:
    try:
        check_key(key)
    except PermanentError:
        return False
    return True


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)
