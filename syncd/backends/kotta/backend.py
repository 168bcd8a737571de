"""``type: kotta``: jobs on a Cloud Kotta deployment, through its REST API (form-encoded, Login with Amazon tokens).

Each attempt runs as a ``script`` job named by the submit key. Inputs reach the worker as URLs: files uploaded
through ``upload_url`` (large ones on their own, small ones inside the job's control archive, see
:mod:`~syncd.backends.kotta.bundle`), or, when the inbox's storage is S3, presigned URLs into syncd's staging
area that the job script fetches. Kotta uploads only declared outputs, so the script packs the job's results
into one declared archive, which syncd fetches and unpacks. The submit key is the job's ``jobname``: after a
crash between asking and hearing the answer, the job is looked for by name (``list_tasks``, then ``status_task``
of each candidate) before anything is submitted again. Kotta has no cancel: the walltime (sent with every job)
is the only thing that stops one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from http import cookiejar
from pathlib import Path
from typing import Any

import requests

from syncd.backends import http, storage_inputs, wrapper
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
from syncd.backends.kotta import api, bundle, stagein
from syncd.backends.kotta.options import KottaOptions
from syncd.backends.tokens import TokenSource
from syncd.errors import AuthError, PermanentError, TransientError
from syncd.intake.manifest import InputFile, glob_to_regex, match_any
from syncd.log import logger

RECORD_TTL = 60.0  # seconds a status_task answer serves outputs() and logs() of the same job


class TokensRefused(AuthError):
    """Kotta answered that it refuses the tokens (not an HTTP 401: Kotta's own Fail answer)."""


class _NoCookies(cookiejar.DefaultCookiePolicy):
    """Kotta's cookie session would let a later request through with refused tokens: keep none."""

    def set_ok(self, cookie, request) -> bool:
        return False

    def return_ok(self, cookie, request) -> bool:
        return False


class KottaBackend(Backend):
    options_model = KottaOptions
    options: KottaOptions
    capabilities = Capabilities(
        native_timeout=True,
        cancel=CancelSupport.NEVER,
        exit_codes=False,
        logs=LogDelivery.AT_END,
        resources=frozenset({"walltime"}),
    )

    def __init__(self, name: str, options: KottaOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.service = f"Kotta at {options.url}"
        self.store = f"the object store of {self.service}"
        self.access = TokenSource(
            options.access_token,
            owner=f"backend '{name}' access_token",
            extract=lambda text: api.token_in(text, "access_token"),
        )
        self.refresh = (
            None
            if options.refresh_token is None
            else TokenSource(
                options.refresh_token,
                owner=f"backend '{name}' refresh_token",
                extract=lambda text: api.token_in(text, "refresh_token"),
            )
        )
        if options.inputs != "upload":
            self.capabilities = replace(self.capabilities, stages_to_storage=True)
        self._session = requests.Session()
        self._session.cookies.set_policy(_NoCookies())
        self._lock = threading.Lock()
        self._ended: dict[str, RemoteStatus] = {}  # job id → how it ended (poll asks status_task once)
        self._records: dict[str, tuple[float, api.JobRecord]] = {}
        self._one_by_one_said = False
        self.requests_sent = 0  # requests to Kotta's API (not its object store), for tests and metrics

    # -- HTTP --------------------------------------------------------------------------------------------------
    @property
    def _timeout(self) -> tuple[float, float]:
        return self.options.connect_timeout, self.options.request_timeout

    def _call(
        self,
        method: str,
        route: str,
        what: str,
        form: dict[str, str] | None = None,
        *,
        auth: bool = True,
        retry_auth: bool = True,
    ) -> dict:
        """One request to Kotta's API: its answer, or the classified error (a Fail answer comes with HTTP 200)."""
        fields = dict(form or {})
        if auth:
            fields["access_token"] = self.access.get()
            if self.refresh is not None and route != "list_tasks":  # list_tasks reads the access token only
                fields["refresh_token"] = self.refresh.get()
        with self._lock:
            self.requests_sent += 1
        try:
            response = http.request(
                self._session,
                method,
                f"{self.options.url.rstrip('/')}/rest/v1/{route}",
                service=self.service,
                what=what,
                timeout=self._timeout,
                data=fields or None,
            )
            try:
                data = response.json()
            except ValueError:
                data = None
            if not isinstance(data, dict):
                raise TransientError(
                    f"{self.service} answered with something other than a JSON object while {what} "
                    f"({http.status_text(response)}); asking again later"
                )
            reason = api.fail_reason(data)
            if reason is None:
                return data
            if api.is_auth_reason(reason):
                raise TokensRefused(
                    f"{self.service} refused the tokens while {what} ({reason}); check "
                    f"access_token and refresh_token in the config"
                )
            raise PermanentError(f"{self.service} refused {what}: {reason}")
        except AuthError:
            if not (retry_auth and (self.access.can_refresh or (self.refresh and self.refresh.can_refresh))):
                raise
            self.access.invalidate()  # a token read from a file or minted by a command may be fresh now
            if self.refresh is not None:
                self.refresh.invalidate()
            return self._call(method, route, what, form, auth=auth, retry_auth=False)

    def _transfer(self, method: str, url: str, what: str, **kw: Any) -> requests.Response:
        """A request to a presigned URL of an object store. A refused signature is not a refused login: a new URL
        is asked for next time."""
        try:
            return http.request(self._session, method, url, service=self.store, what=what, timeout=self._timeout, **kw)
        except AuthError as exc:
            raise TransientError(f"{exc} (a presigned URL; a new one is made on the next try)") from None

    def _jobs(self) -> dict:
        return self._call("GET", "list_tasks", "listing the user's jobs")

    def _record(self, job_id: str, *, fresh: bool = False) -> api.JobRecord:
        """``status_task`` (unauthenticated). Only for ids ``list_tasks`` showed: an unknown one is an HTML 500."""
        cached = self._records.get(job_id)
        if cached is not None and not fresh and time.monotonic() - cached[0] < RECORD_TTL:
            return cached[1]
        record = api.job_record(self._call("GET", f"status_task/{job_id}", f"reading job {job_id}", auth=False))
        with self._lock:
            self._records = {k: v for k, v in self._records.items() if time.monotonic() - v[0] < RECORD_TTL}
            self._records[job_id] = (time.monotonic(), record)
        return record

    # -- local files of a job ------------------------------------------------------------------------------
    def _folder(self, key: str) -> Path:
        return self.work_root / key

    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _ref(self, job_id: str, spec: JobSpec) -> RemoteRef:
        return RemoteRef(job_id, {"key": spec.submit_key, "walltime": self._walltime_minutes(spec)})

    def _walltime_minutes(self, spec: JobSpec) -> int:
        limits = [t for t in (spec.timeout, spec.resources.get("walltime")) if t]
        return max(1, math.ceil((min(limits) if limits else self.options.default_walltime) / 60))

    # -- contract ------------------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        if self.options.inputs == "storage" and not storage_inputs.presigns(spec):
            problems.append(storage_inputs.NO_URLS.format(name=self.name))
        return problems

    def probe(self) -> None:
        try:
            self._jobs()
        except TokensRefused:
            if self.refresh is None:
                raise
            # The access token has expired (it lives an hour); the refresh token still lets jobs be submitted.
            self._call("POST", "upload_url", "checking the refresh token", {"filepath": "syncd/probe"})

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = self._folder(spec.submit_key)
        folder.mkdir(parents=True, exist_ok=True)
        staging = spec.staging if storage_inputs.wanted(self.options.inputs, spec, self.name) else None
        plan = stagein.plan(inputs, staging, self.options.input_url_expiry)
        env = {
            **{k: str(v) for k, v in spec.env.items()},
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
        }
        control = folder / bundle.CONTROL
        storage_inputs.as_input_error(
            inputs,
            bundle.control_archive,
            control,
            command=spec.command,
            env=env,
            links=plan.links,
            carried=plan.carried,
            fetch=plan.fetch,
        )
        uploaded = self._read(folder / "uploads.json") or {}
        urls = [self._upload(spec, uploaded, bundle.CONTROL, control)]
        for item, blob in plan.alone:
            urls.append(storage_inputs.as_input_error(inputs, self._upload, spec, uploaded, blob, item.source))
        control.unlink(missing_ok=True)
        self._write(folder / "staged.json", {"input_urls": urls})

    def _upload(self, spec: JobSpec, uploaded: dict, name: str, source: Path) -> str:
        """Upload through ``upload_url`` unless this very content went up already; the ``s3://`` URL to fetch it.

        A file whose size and modification time are those recorded is taken as unchanged; one that was written
        again is compared by SHA-256."""
        filepath = f"syncd/{spec.submit_key}/{name}"
        done = uploaded.get(filepath)
        st = os.stat(source)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        if done and done["stamp"] == stamp:
            return done["url"]
        digest = stagein.sha256(source)
        if done and done["sha256"] == digest:
            done["stamp"] = stamp
            self._write(self._folder(spec.submit_key) / "uploads.json", uploaded)
            return done["url"]
        answer = self._call(
            "POST", "upload_url", f"asking where to upload {name} of job {spec.submit_key}", {"filepath": filepath}
        )
        target = answer.get("upload_url")
        if not isinstance(target, str):
            raise TransientError(f"{self.service} gave no upload_url for {name} of job {spec.submit_key}")
        with open(source, "rb") as body:
            self._transfer(
                "PUT",
                target,
                f"uploading {name} of job {spec.submit_key}",
                data=body,
                headers={"Content-Length": str(os.fstat(body.fileno()).st_size)},
            )
        uploaded[filepath] = {"stamp": stamp, "sha256": digest, "url": api.s3_uri(target)}
        self._write(self._folder(spec.submit_key) / "uploads.json", uploaded)
        return uploaded[filepath]["url"]

    def submit(self, spec: JobSpec) -> RemoteRef:
        folder = self._folder(spec.submit_key)
        marker = self._read(folder / "submitted.json") or {}
        if marker.get("job_id"):
            return self._ref(marker["job_id"], spec)  # submitted already
        staged = self._read(folder / "staged.json")
        if staged is None:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        form = api.submit_form(
            jobname=spec.submit_key,
            queue=self.options.queue,
            walltime_minutes=self._walltime_minutes(spec),
            executable=bundle.EXECUTABLE,
            script=bundle.SCRIPT,
            script_name=bundle.SCRIPT_NAME,
            outputs=[bundle.OUTPUTS],
            stdout=bundle.STDOUT,
            stderr=bundle.STDERR,
            input_urls=staged["input_urls"],
        )
        self._write(folder / "submitted.json", {"asked": time.time()})  # from here on, find() looks by name
        answer = self._call("POST", "submit_task", f"submitting job {spec.submit_key}", form)
        job_id = answer.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise TransientError(f"{self.service} accepted job {spec.submit_key} but gave no job id")
        self._write(folder / "submitted.json", {"asked": time.time(), "job_id": job_id})
        return self._ref(job_id, spec)

    def find(self, spec: JobSpec) -> RemoteRef | None:
        folder = self._folder(spec.submit_key)
        marker = self._read(folder / "submitted.json")
        if marker is None:
            return None  # never asked: nothing to look for
        if marker.get("job_id"):
            return self._ref(marker["job_id"], spec)
        # Asked, but the answer was lost: Kotta knows jobs by id only, so each of the user's jobs is read, the
        # newest first, until one carries this job's name.
        answer = self._jobs()
        submitted = api.stamps(answer)
        for job_id in sorted(submitted, key=lambda i: submitted[i], reverse=True):
            try:
                jobname = self._record(job_id).jobname
            except (TransientError, PermanentError):
                continue  # e.g. a job someone submitted without inputs: Kotta cannot show it (HTML 500)
            if jobname == spec.submit_key:
                self._write(folder / "submitted.json", {**marker, "job_id": job_id})
                return self._ref(job_id, spec)
        return None

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        try:
            words = api.listed(self._jobs())  # one request for every job of the user
        except TokensRefused:
            if self.refresh is None:
                raise
            return self._poll_one_by_one(refs)
        self._one_by_one_said = False
        statuses = {}
        for ref in refs:
            word = words.get(ref.remote_id)
            if word is None:
                statuses[ref.remote_id] = RemoteStatus(
                    RemoteState.UNKNOWN, "not listed", message=f"Kotta does not list job {ref.remote_id}"
                )
            elif word in api.ENDED:
                statuses[ref.remote_id] = self._ended_status(ref.remote_id, word)
            else:
                statuses[ref.remote_id] = api.state_of_word(word)
        return statuses

    def _poll_one_by_one(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        """list_tasks takes the access token only; once it has expired, each job's status_task (which needs no
        token) is read instead, until the access token is fresh again."""
        if not self._one_by_one_said:
            self._one_by_one_said = True
            logger.warning(
                "backend {}: Kotta refuses the access token; polling job by job until it is fresh "
                "(submissions go on with the refresh token)",
                self.name,
            )
        statuses = {}
        for ref in refs:
            status = api.state_of(self._record(ref.remote_id, fresh=True))
            statuses[ref.remote_id] = status
        return statuses

    def _ended_status(self, job_id: str, word: str) -> RemoteStatus:
        """How a job the list shows as ended ended: ``status_task`` once, then remembered while the word holds."""
        known = self._ended.get(job_id)
        if known is not None and known.native == word:
            return known
        status = api.state_of(self._record(job_id, fresh=True))
        if status.state.terminal:
            with self._lock:
                if len(self._ended) > 10_000:
                    self._ended.clear()
                self._ended[job_id] = status
        return status

    def cancel(self, ref: RemoteRef) -> None:
        minutes = ref.handle.get("walltime")
        raise PermanentError(
            f"Cloud Kotta cannot cancel jobs through its API (only its web UI can): job "
            f"{ref.remote_id} runs until it ends or reaches its walltime" + (f" ({minutes} min)" if minutes else "")
        )

    def logs(self, ref: RemoteRef) -> JobLogs:
        folder = self._folder(ref.handle.get("key", ref.remote_id)) / "logs"
        if not (folder / ".done").exists():
            record = self._record(ref.remote_id)
            if record.status.lower() not in api.ENDED:
                return JobLogs(None, None)  # Kotta shows the logs once the job has ended
            for name in (bundle.STDOUT, bundle.STDERR):
                if (url := record.outputs.get(name)) is not None:
                    self._fetch(url, folder / name, f"fetching {name} of job {ref.remote_id}")
            (folder / ".done").touch()
        found = [folder / name if (folder / name).exists() else None for name in (bundle.STDOUT, bundle.STDERR)]
        return JobLogs(found[0], found[1])

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        folder = self._folder(ref.handle.get("key", spec.submit_key))
        results, listing = folder / "results", folder / "results.json"
        unpacked = self._read(listing)
        if unpacked is None:
            record = self._record(ref.remote_id)
            url = record.outputs.get(bundle.OUTPUTS)
            if url is None:
                if api.state_of(record).state is RemoteState.SUCCEEDED:
                    raise PermanentError(
                        f"Kotta reports job {ref.remote_id} completed, but the archive of its "
                        f"outputs is not in Kotta's bucket (its upload on the worker failed)"
                    )
                unpacked = []  # stopped before the script packed anything: the logs are all there is
            else:
                archive = folder / bundle.OUTPUTS
                self._fetch(url, archive, f"fetching the outputs of job {ref.remote_id}")
                shutil.rmtree(results, ignore_errors=True)
                unpacked = bundle.unpack(archive, results)
                archive.unlink()
            self._write(listing, unpacked)
        regexes = [glob_to_regex(p) for p in spec.outputs] if spec.outputs is not None else None
        found = []
        for relpath, size, extracted in unpacked:
            if relpath != wrapper.EXIT_FILE and regexes is not None and not match_any(relpath, regexes):
                continue
            found.append(OutputFile(relpath, results / relpath if extracted else None, size))
        return found

    def _fetch(self, url: str, dest: Path, what: str) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        response = self._transfer("GET", url, what, stream=True)
        try:
            with open(tmp, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
        except requests.RequestException as exc:
            raise http.classify_exception(exc, service=self.store, what=what) from None
        finally:
            response.close()
        expected = response.headers.get("Content-Length")
        if expected is not None and int(expected) != tmp.stat().st_size:
            raise TransientError(f"{what}: {tmp.stat().st_size} of {expected} bytes arrived; fetching again")
        os.replace(tmp, dest)

    def cleanup(self, ref: RemoteRef) -> None:
        """Kotta deletes nothing on request; syncd's own files of the job go."""
        if ref.handle.get("key"):
            shutil.rmtree(self._folder(ref.handle["key"]), ignore_errors=True)
        with self._lock:
            self._ended.pop(ref.remote_id, None)
            self._records.pop(ref.remote_id, None)

    def close(self) -> None:
        self._session.close()
