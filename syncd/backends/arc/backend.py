"""``type: arc``: jobs on an ARC-CE through A-REX's REST interface (HTTPS, an X.509 credential or a token).

Each attempt is one ADL job named by the submit key. Its inputs, and syncd's constant runner with the command as
data (:mod:`~syncd.backends.arc.runner`), are declared as client uploads: the CE creates the job, then syncd PUTs
each file into its session folder, and the job starts once the last one is there. With ``inputs: storage`` the
inputs go into the inbox's S3 storage instead and the runner fetches them on the worker node by presigned URL:
A-REX's own data staging cannot take such a URL (it asks the source with PROPFIND and HEAD first, which a
signature made for GET refuses), so only the runner's small files travel through the CE. That is a multi-step submission:
the job's id is written down as soon as the CE gives it, each finished upload too, so after a crash ``find`` hands
back an unfinished ref and ``submit`` uploads what is missing, never creating a second job. If the crash came before
the id was written, the job is looked for by name among the user's jobs (one ``info`` request for all of them).

One ``action=info`` request polls every job. Logs and outputs are read from the session folder (kept whole: the
description's output is ``/``); ``action=kill`` cancels, ``action=clean`` removes the job once delivered.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from syncd.backends import http, storage_inputs, workdir
from syncd.backends.arc import api, runner
from syncd.backends.arc.options import ArcOptions
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
from syncd.backends.tokens import TokenSource
from syncd.backends.workdir import WorkFolder
from syncd.errors import AuthError, NotFoundError, PermanentError, TransientError
from syncd.intake.manifest import InputFile, glob_to_regex, match_any

#: A-REX's answer when it cannot map the credential's subject to a local account (HTTP 500, not 403)
UNMAPPED = "User can't be assigned configuration"


class ArcBackend(Backend):
    options_model = ArcOptions
    options: ArcOptions
    capabilities = Capabilities(
        batched_poll=True,
        native_timeout=False,
        exit_codes=True,
        logs=LogDelivery.STREAMED,
        resources=frozenset({"cpus", "memory", "walltime"}),
        multi_step_submit=True,
    )

    def __init__(self, name: str, options: ArcOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.service = f"the ARC-CE at {options.url}"
        self.tokens = None if options.token is None else TokenSource(options.token, owner=f"backend '{name}' token")
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._version: str | None = None
        self.requests_sent = 0  # for tests and metrics
        if options.inputs != "upload":
            self.capabilities = replace(self.capabilities, stages_to_storage=True)

    # -- HTTP --------------------------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, Any]:
        """Per request, not on the session: ``requests`` lets REQUESTS_CA_BUNDLE override a session's ``verify``."""
        opts = self.options
        kw: dict[str, Any] = {"verify": opts.verify, "headers": {"Accept": "application/json"}}
        if opts.certificate is not None and opts.key is not None:
            kw["cert"] = (str(opts.certificate), str(opts.key))
        elif opts.proxy is not None:
            kw["cert"] = str(opts.proxy)
        if self.tokens is not None:
            kw["headers"]["Authorization"] = f"Bearer {self.tokens.get()}"
        for path in (opts.certificate, opts.key, opts.proxy):
            if path is not None and not os.access(path, os.R_OK):
                raise AuthError(f"backend '{self.name}': cannot read {path}; check the credential in the config")
        return kw

    def _send(self, method: str, url: str, what: str, **kw: Any) -> requests.Response:
        call = self._credentials()
        call["headers"].update(kw.pop("headers", {}))
        with self._lock:
            self.requests_sent += 1
        try:
            return http.request(
                self._session,
                method,
                url,
                service=self.service,
                what=what,
                timeout=(self.options.connect_timeout, self.options.request_timeout),
                **call,
                **kw,
            )
        except AuthError:
            # The TLS connection carries the credential: a renewed certificate only counts on a new connection.
            self._session.close()
            raise
        except TransientError as exc:
            if UNMAPPED in str(exc):
                raise AuthError(
                    f"{exc}; the CE accepts the credential but maps it to no local account: ask its admin"
                ) from None
            raise

    def _json(self, method: str, path: str, what: str, **kw: Any) -> Any:
        response = self._send(method, self._url(path), what, **kw)
        body = response.content
        if not body.strip():
            return {}  # ARC 6 renders an empty list as an empty body
        try:
            return response.json()
        except ValueError:
            raise TransientError(
                f"{self.service} answered with something other than JSON while {what}; asking again later"
            ) from None

    def _url(self, path: str) -> str:
        return f"{self.options.url.rstrip('/')}/rest/{self.version()}/{path}"

    def version(self) -> str:
        """The REST version: the best one both sides speak, from ``GET <endpoint>/rest``."""
        if self._version is None:
            response = self._send("GET", f"{self.options.url.rstrip('/')}/rest", "reading its REST versions")
            try:
                offered = api.versions(response.json())
            except ValueError:
                raise TransientError(
                    f"{self.service} answered its version list with something other than JSON"
                ) from None
            chosen = api.pick_version(offered, token=self.tokens is not None)
            if chosen is None:
                if self.tokens is not None and "1.0" in offered:
                    raise AuthError(
                        f"{self.service} offers REST 1.0 only, which takes no tokens; configure an X.509 "
                        f"certificate and key, or a proxy, for backend '{self.name}'"
                    )
                raise PermanentError(
                    f"{self.service} offers REST versions {', '.join(offered) or 'none'}; syncd speaks "
                    f"{', '.join(api.VERSIONS)}"
                )
            self._version = chosen
        return self._version

    def _bulk(self, action: str, ids: Sequence[str], what: str) -> dict[str, api.Entry]:
        body = {"job": [{"id": i} for i in ids]}
        data = self._json(
            "POST",
            f"jobs?action={action}",
            what,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        return {entry.id: entry for entry in api.entries(data)}

    def _session_url(self, job_id: str, relpath: str = "") -> str:
        return self._url(f"jobs/{job_id}/session/{quote(relpath, safe='/')}")

    # -- local files of a job ------------------------------------------------------------------------------
    def _folder(self, key: str) -> WorkFolder:
        return WorkFolder(self.work_root, key)

    @staticmethod
    def _read(folder: WorkFolder, name: str) -> Any:
        try:
            return json.loads((folder.ctrl / name).read_text())
        except FileNotFoundError:
            return None

    def _ref(self, job_id: str, key: str, *, complete: bool = True) -> RemoteRef:
        return RemoteRef(job_id, {"key": key}, complete=complete)

    # -- contract ------------------------------------------------------------------------------------------
    def probe(self) -> None:
        self._json("GET", "jobs", "listing the user's jobs")

    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        if self.options.inputs == "storage" and not storage_inputs.presigns(spec):
            problems.append(storage_inputs.NO_URLS.format(name=self.name))
        return problems

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = self._folder(spec.submit_key)
        own = runner.files(spec.command)
        if spec.staging is not None and storage_inputs.wanted(self.options.inputs, spec, self.name):
            folder.stage([])
            folder.write_json(workdir.INPUTS_SNAPSHOT, {item.relpath: [item.size, 0] for item in inputs})
            fetched = []
            for item in sorted(inputs, key=lambda i: i.relpath):
                info = storage_inputs.as_input_error(inputs, spec.staging.put_input, item)
                url = spec.staging.url(info.key, expires=self.options.input_url_expiry)
                fetched.append((item.relpath, url, info.size))
            own |= runner.fetch_files(fetched)
        else:
            folder.stage(inputs)
        for relpath, content in own.items():
            path = folder.work / relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        uploads = sorted(p.relative_to(folder.work).as_posix() for p in folder.work.rglob("*") if p.is_file())
        folder.write_json("uploads.json", uploads)

    def _description(self, spec: JobSpec, uploads: list[str]) -> bytes:
        limits = [t for t in (spec.timeout, spec.resources.get("walltime")) if t]
        env = {
            **{k: str(v) for k, v in spec.env.items()},
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
        }
        try:
            return api.adl(
                name=spec.submit_key,
                executable=runner.EXECUTABLE,
                arguments=runner.ARGUMENTS,
                stdout=runner.STDOUT,
                stderr=runner.STDERR,
                env=env,
                inputs=uploads,
                queue=self.options.queue,
                slots=spec.resources.get("cpus"),
                memory_bytes=spec.resources.get("memory"),
                # the CE counts the limit its own way; the engine enforces the exact timeout itself
                walltime_seconds=int(min(limits)) + 60 if limits else None,
            )
        except ValueError as exc:
            raise PermanentError(f"job {spec.name}: an environment variable or input name {exc}; remove it") from None

    def submit(self, spec: JobSpec) -> RemoteRef:
        folder = self._folder(spec.submit_key)
        uploads = self._read(folder, "uploads.json")
        if uploads is None:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        marker = self._read(folder, "submitted.json") or {}
        job_id = marker.get("job_id")
        if not job_id and marker.get("asked"):
            found = self._find_by_name(spec.submit_key)  # asked before, answer lost: never ask twice
            job_id = found
        if not job_id:
            description = self._description(spec, uploads)
            folder.write_json("submitted.json", {"asked": True})  # from here on, the job is looked for by name
            data = self._json(
                "POST",
                "jobs?action=new",
                f"submitting job {spec.submit_key}",
                data=description,
                headers={"Content-Type": "application/xml"},
            )
            created = api.entries(data)
            if not created or not created[0].ok or not created[0].id:
                reason = created[0].reason if created else "no job in the answer"
                folder.write_json("submitted.json", {})  # refused: nothing was created, asking again is safe
                raise PermanentError(f"{self.service} refused job {spec.submit_key}: {reason}")
            job_id = created[0].id
        folder.write_json("submitted.json", {"asked": True, "job_id": job_id})
        self._upload(folder, job_id, uploads)
        return self._ref(job_id, spec.submit_key)

    def _upload(self, folder: WorkFolder, job_id: str, uploads: list[str]) -> None:
        done = set(self._read(folder, "uploaded.json") or [])
        for relpath in uploads:
            if relpath in done:
                continue
            with open(folder.work / relpath, "rb") as body:
                self._send(
                    "PUT",
                    self._session_url(job_id, relpath),
                    f"uploading {relpath} of job {job_id}",
                    data=body,
                    headers={"Content-Type": "application/octet-stream"},
                )
            done.add(relpath)
            folder.write_json("uploaded.json", sorted(done))

    def _complete(self, folder: WorkFolder) -> bool:
        uploads = self._read(folder, "uploads.json") or []
        return set(uploads) <= set(self._read(folder, "uploaded.json") or [])

    def find(self, spec: JobSpec) -> RemoteRef | None:
        folder = self._folder(spec.submit_key)
        marker = self._read(folder, "submitted.json") or {}
        if not marker.get("asked"):
            return None  # never asked: nothing to look for
        job_id = marker.get("job_id") or self._find_by_name(spec.submit_key)
        if job_id is None:
            return None
        if not marker.get("job_id"):
            folder.write_json("submitted.json", {"asked": True, "job_id": job_id})
        return self._ref(job_id, spec.submit_key, complete=self._complete(folder))

    def _find_by_name(self, key: str) -> str | None:
        """The id of the user's job named ``key``: the job list, then one ``info`` request for all of it."""
        ids = api.job_ids(self._json("GET", "jobs", "listing the user's jobs"))
        if not ids:
            return None
        undescribed = 0
        for entry in self._bulk("info", ids, f"looking for job {key} by name").values():
            info = api.activity(entry)
            if not info and entry.ok:
                undescribed += 1
            elif api.text(info.get("Name")) == key:
                return entry.id
        if undescribed:
            raise TransientError(
                f"{self.service} has not described {undescribed} new job(s) yet, one of which may be {key}; "
                f"looking again before anything is submitted"
            )
        return None

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        if not refs:
            return {}
        found = self._bulk("info", [r.remote_id for r in refs], f"reading the state of {len(refs)} job(s)")
        missing = RemoteStatus(RemoteState.UNKNOWN, "None", message="the CE did not answer for this job")
        statuses = {r.remote_id: api.status_of(found[r.remote_id]) if r.remote_id in found else missing for r in refs}
        for job_id, status in statuses.items():
            if api.unexplained(status):
                statuses[job_id] = api.explained(status, self._failure(job_id))
        return statuses

    def _failure(self, job_id: str) -> str:
        """Why the CE failed a job, from its control folder (``diagnose/failed``); empty if it keeps none."""
        try:
            response = self._send(
                "GET", self._url(f"jobs/{job_id}/diagnose/failed"), f"reading why job {job_id} failed"
            )
        except NotFoundError:
            return ""
        return response.text

    def cancel(self, ref: RemoteRef) -> None:
        entry = self._bulk("kill", [ref.remote_id], f"cancelling job {ref.remote_id}").get(ref.remote_id)
        if entry is None or entry.ok or entry.code == 404:
            return
        status = self.poll([ref])[ref.remote_id]
        if status.state.terminal or status.state is RemoteState.UNKNOWN:
            return  # ended already: cancelling is harmless
        raise TransientError(f"{self.service} could not cancel job {ref.remote_id} yet ({entry.reason}); trying again")

    def logs(self, ref: RemoteRef) -> JobLogs:
        folder = self._folder(ref.handle.get("key", ref.remote_id))
        found = []
        for name, local in ((runner.STDOUT, "stdout.txt"), (runner.STDERR, "stderr.txt")):
            dest = folder.ctrl / local
            try:
                self._download(ref.remote_id, name, dest)
            except NotFoundError:
                pass  # not written yet, or never
            found.append(dest if dest.exists() else None)
        return JobLogs(found[0], found[1])

    def _download(self, job_id: str, relpath: str, dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        what = f"fetching {relpath} of job {job_id}"
        response = self._send("GET", self._session_url(job_id, relpath), what, stream=True)
        try:
            with open(tmp, "wb") as out:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
        except requests.RequestException as exc:
            raise http.classify_exception(exc, service=self.service, what=what) from None
        finally:
            response.close()
        size = tmp.stat().st_size
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != size:
            raise TransientError(f"{what}: {size} of {expected} bytes arrived; fetching again")
        os.replace(tmp, dest)
        return size

    def _walk(self, job_id: str, prefix: str = "") -> list[str]:
        """Every file in the session folder (or under ``prefix``), syncd's own left out."""
        data = self._json("GET", f"jobs/{job_id}/session/{quote(prefix, safe='/')}", f"listing job {job_id}")
        files, dirs = api.listing(data)
        found = [prefix + f for f in files if not runner.is_own(prefix + f)]
        for d in dirs:
            if not runner.is_own(prefix + d):
                found += self._walk(job_id, f"{prefix}{d}/")
        return found

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        folder = self._folder(ref.handle.get("key", spec.submit_key))
        results, record = folder.path / "results", folder.ctrl / "results.json"
        fetched = self._read(folder, "results.json")
        if fetched is None:
            inputs = set((self._read(folder, "inputs.json") or {}).keys())
            changed_file = folder.ctrl / "changed"
            try:
                self._download(ref.remote_id, runner.CHANGED_FILE, changed_file)
                changed = runner.changed(changed_file.read_bytes())
            except NotFoundError:
                changed = set()  # stopped before the command ended: every input counts as unchanged
            regexes = [glob_to_regex(p) for p in spec.outputs] if spec.outputs is not None else None
            fetched = []
            shutil.rmtree(results, ignore_errors=True)
            for relpath in sorted(self._walk(ref.remote_id)):
                if regexes is not None:
                    if not match_any(relpath, regexes):
                        continue
                elif relpath in inputs and relpath not in changed:
                    continue
                size = self._download(ref.remote_id, relpath, results / relpath)
                fetched.append([relpath, size])
            tmp = record.with_name(".results.json.tmp")
            tmp.write_text(json.dumps(fetched))
            os.replace(tmp, record)
        return [OutputFile(relpath, results / relpath, size) for relpath, size in fetched]

    def cleanup(self, ref: RemoteRef) -> None:
        if not self.options.keep_on_ce:
            entry = self._bulk("clean", [ref.remote_id], f"cleaning job {ref.remote_id}").get(ref.remote_id)
            if entry is not None and not entry.ok and entry.code != 404:
                raise TransientError(f"{self.service} did not clean job {ref.remote_id} ({entry.reason})")
        if ref.handle.get("key"):
            self._folder(ref.handle["key"]).remove()

    def close(self) -> None:
        self._session.close()
