"""``type: chime-workflow``: jobs as Works in a CHIME/FRB Workflow Buckets pipeline, run by that site's runner.

Each job is a folder ``<work_dir>/<submit key>/`` on storage this host and the site runner share: ``work/`` holds the
inputs and syncd's exit-code wrapper (the command as data, :mod:`syncd.backends.wrapper`), ``ctrl/`` the launcher
the runner starts (:mod:`~syncd.backends.chime_workflow.launcher`), the environment, and the job's stdout and
stderr. One Work is deposited per attempt, tagged with the submit key, ``retries: 0``; since the service's own client
retries deposits (and a lost answer leaves syncd not knowing), the bucket is always searched by that tag before
anything is deposited. One ``POST /view`` over the tags of every job follows them all. The runner reports no exit
code: the wrapper's exit file does. A Work can be taken back only while queued (it is deleted from the bucket);
once a runner has withdrawn it, it runs to its end or its timeout. The Work's results, and any products and plots
it names that this host can read, are delivered under ``_workflow/``; cleanup deletes the Work.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterable, Sequence
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
from syncd.backends.chime_workflow import api, launcher
from syncd.backends.chime_workflow.options import MAX_TIMEOUT, ChimeWorkflowOptions
from syncd.backends.tokens import TokenSource
from syncd.backends.workdir import WorkFolder
from syncd.errors import AuthError, PermanentError, TransientError
from syncd.fsutil import os_error
from syncd.intake.manifest import InputFile
from syncd.log import logger

#: where the Work's own outcome is delivered, beside the job's outputs
DELIVERED = "_workflow"


class ChimeWorkflowBackend(Backend):
    options_model = ChimeWorkflowOptions
    options: ChimeWorkflowOptions
    capabilities = Capabilities(
        batched_poll=True,
        native_timeout=True,
        cancel=CancelSupport.WHILE_QUEUED,
        exit_codes=False,
        logs=LogDelivery.STREAMED,
        separate_stderr=True,
        resources=frozenset({"walltime"}),
    )

    def __init__(self, name: str, options: ChimeWorkflowOptions, work_root: Path):
        super().__init__(name, options, work_root)
        self.tokens = TokenSource(options, owner=f"backend '{name}'")
        self.base = options.url.rstrip("/")
        self.service = f"the workflow buckets at {self.base}"
        self._session = requests.Session()
        self._lock = threading.Lock()
        self.requests_sent = 0  # for tests and metrics

    # -- HTTP ----------------------------------------------------------------------------------------------------
    def _call(self, method: str, route: str, what: str, *, retry_auth: bool = True, **kw: Any) -> Any:
        """The JSON the service answers, or the classified error; a refused token read from a file or a command is
        read again once."""
        with self._lock:
            self.requests_sent += 1
        try:
            response = http.request(
                self._session,
                method,
                self.base + route,
                service=self.service,
                what=what,
                timeout=(self.options.connect_timeout, self.options.request_timeout),
                headers={"x-access-token": self.tokens.get()},
                **kw,
            )
        except AuthError:
            if not (retry_auth and self.tokens.can_refresh):
                raise
            self.tokens.invalidate()
            return self._call(method, route, what, retry_auth=False, **kw)
        try:
            return response.json()
        except ValueError:
            raise TransientError(
                f"{self.service} answered {what} with something other than JSON ({http.status_text(response)}): "
                f"{http.body_excerpt(response)!r}; asking again later"
            ) from None

    def _view(self, query: dict[str, Any], fields: tuple[str, ...], what: str) -> list[dict[str, Any]]:
        """Every Work matching ``query``: one request, more only past :data:`api.VIEW_LIMIT` Works."""
        found: list[dict[str, Any]] = []
        while True:
            data = self._call("POST", "/view", what, json=api.view(query, fields, skip=len(found)))
            try:
                page = api.documents(data)
            except ValueError:
                raise TransientError(f"{self.service} answered {what} with something other than a list") from None
            found.extend(page)
            if len(data) < api.VIEW_LIMIT:
                return found

    def _tagged(self, key: str, fields: tuple[str, ...] = api.STATUS_FIELDS) -> list[dict[str, Any]]:
        docs = self._view({"pipeline": self.options.pipeline, "tags": key}, fields, f"looking for job {key}")
        return sorted(docs, key=lambda d: (d.get("creation") or 0, d["id"]))

    # -- the job's folder ----------------------------------------------------------------------------------------
    def _folder(self, key: str) -> WorkFolder:
        return WorkFolder(self.options.work_dir, key)

    def _runner_path(self, key: str) -> str:
        root = self.options.runner_work_dir or str(self.options.work_dir)
        return f"{root.rstrip('/')}/{key}/ctrl/{launcher.SCRIPT_NAME}"

    def _command(self, key: str) -> list[str]:
        return ["/bin/sh", self._runner_path(key)]

    def _timeout(self, spec: JobSpec) -> float:
        limits = [t for t in (spec.timeout, spec.resources.get("walltime")) if t]
        return min(limits) if limits else self.options.default_timeout

    # -- contract ------------------------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> list[str]:
        problems = super().check(spec)
        if self._timeout(spec) > MAX_TIMEOUT:
            problems.append(
                f"timeout: a Work may run at most {MAX_TIMEOUT / 3600:.0f} h on the '{self.name}' backend; "
                f"ask for less or use another inbox"
            )
        return problems

    def probe(self) -> None:
        self._call("POST", "/view", "checking the token", json={**api.view({"id": "0" * 24}, ("id",)), "limit": 1})

    def stage(self, spec: JobSpec, inputs: Sequence[InputFile]) -> None:
        folder = self._folder(spec.submit_key)
        folder.stage(inputs)
        env = {
            **{k: str(v) for k, v in spec.env.items()},
            "SYNCD_JOB_ID": spec.job_id,
            "SYNCD_JOB_NAME": spec.name,
            "SYNCD_ATTEMPT": str(spec.attempt),
            "SYNCD_SUBMIT_KEY": spec.submit_key,
        }
        try:
            wrapper.write(folder.work, spec.command)
            launcher.write(folder.ctrl, env)
        except OSError as exc:
            raise os_error(exc, f"staging into {folder.path}") from exc
        folder.write_json("staged.json", {"key": spec.submit_key})

    def submit(self, spec: JobSpec) -> RemoteRef:
        key = spec.submit_key
        folder = self._folder(key)
        if folder.log("staged.json") is None:
            raise PermanentError(f"job {spec.name} ({spec.job_id}): submit before staging finished")
        found = self._found(key)
        if found is not None:
            return found
        payload = api.work(
            pipeline=self.options.pipeline,
            site=self.options.site,
            user=self.options.user,
            command=self._command(key),
            parameters={"syncd_job_id": spec.job_id, "syncd_job_name": spec.name, "syncd_submit_key": key},
            tag=key,
            timeout=math.ceil(self._timeout(spec)),
            priority=self.options.priority,
        )
        answer = self._call("POST", "/work", f"depositing job {key}", params={"return_ids": "True"}, json=[payload])
        if not (isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], str)):
            raise TransientError(f"{self.service} took job {key} but answered no id; it is looked up by its tag next")
        return RemoteRef(answer[0], {"key": key})

    def _found(self, key: str) -> RemoteRef | None:
        """The Work tagged ``key``; of several (a deposit that was retried), the first, the others deleted while
        they are still queued."""
        docs = self._tagged(key)
        if not docs:
            return None
        extra = [d["id"] for d in docs[1:] if d.get("status") in ("created", "queued")]
        if extra:
            logger.warning(
                "backend {}: job {} was deposited {} times; deleting the extra ones", self.name, key, len(docs)
            )
            self._call("DELETE", "/work", f"deleting the duplicates of job {key}", params={"ids": extra})
        return RemoteRef(docs[0]["id"], {"key": key})

    def find(self, spec: JobSpec) -> RemoteRef | None:
        return self._found(spec.submit_key)

    def poll(self, refs: Sequence[RemoteRef]) -> dict[str, RemoteStatus]:
        keys = sorted({ref.handle.get("key", "") for ref in refs} - {""})
        query = {"pipeline": self.options.pipeline, "tags": {"$in": keys}}
        docs = {d["id"]: d for d in self._view(query, api.STATUS_FIELDS, f"following {len(keys)} job(s)")}
        return {ref.remote_id: self._status(ref, docs.get(ref.remote_id)) for ref in refs}

    def _status(self, ref: RemoteRef, doc: dict[str, Any] | None) -> RemoteStatus:
        ctrl = self._folder(ref.handle.get("key", ref.remote_id)).ctrl
        cancelled = bool(ref.handle.get("key")) and launcher.cancelled(ctrl)
        if doc is None:
            if cancelled:
                return RemoteStatus(RemoteState.CANCELLED, "deleted", message="deleted from the bucket while queued")
            return RemoteStatus(
                RemoteState.UNKNOWN,
                "missing",
                message=f"the bucket '{self.options.pipeline}' has no Work {ref.remote_id}",
            )
        return api.state_of(doc, cancelled=cancelled)

    def cancel(self, ref: RemoteRef) -> None:
        key = ref.handle.get("key", "")
        ctrl = self._folder(key).ctrl
        docs = {d["id"]: d for d in self._tagged(key)} if key else {}
        doc = docs.get(ref.remote_id)
        if doc is None or doc.get("status") in ("success", "failure"):
            return  # ended, deleted or never there: nothing to stop
        try:
            mine = launcher.claim_for_cancel(ctrl)
        except OSError as exc:
            raise os_error(exc, f"cancelling job {key} in {ctrl}") from exc
        if not mine:
            raise PermanentError(
                f"the workflow buckets cannot stop Work {ref.remote_id} ({key}): the site runner has started it; "
                f"it runs until it ends or reaches its timeout ({doc.get('timeout')} s)"
            )
        # The claim keeps the launcher from running the command even if a runner withdrew the Work meanwhile.
        self._call("DELETE", "/work", f"deleting job {key} from the bucket", params={"ids": [ref.remote_id]})

    def logs(self, ref: RemoteRef) -> JobLogs:
        ctrl = self._folder(ref.handle.get("key", ref.remote_id)).ctrl
        found = [ctrl / name if (ctrl / name).is_file() else None for name in (launcher.STDOUT, launcher.STDERR)]
        return JobLogs(found[0], found[1])

    def outputs(self, ref: RemoteRef, spec: JobSpec) -> list[OutputFile]:
        key = ref.handle.get("key", spec.submit_key)
        folder = self._folder(key)
        try:
            found = [o for o in folder.outputs(spec.outputs) if not wrapper.is_wrapper_path(o.relpath)]
            found = [o for o in found if not o.relpath.startswith(f"{DELIVERED}/")]
            exit_file = folder.work / wrapper.EXIT_FILE
            if exit_file.is_file():
                found.append(OutputFile(wrapper.EXIT_FILE, exit_file, exit_file.stat().st_size))
        except OSError as exc:
            raise os_error(exc, f"collecting the outputs of job {key} from {folder.work}") from exc
        return found + self._outcome(ref, key, folder)

    def _outcome(self, ref: RemoteRef, key: str, folder: WorkFolder) -> list[OutputFile]:
        """The Work's results (unless they are only the runner's record of our launcher), products and plots."""
        docs = [d for d in self._tagged(key, api.OUTCOME_FIELDS) if d["id"] == ref.remote_id]
        if not docs:
            return []
        doc, found = docs[0], []
        results = doc.get("results")
        if results is not None and not api.is_runner_default(results, self._command(key)):
            path = folder.write_text("results.json", json.dumps(results, indent=2, sort_keys=True) + "\n")
            found.append(OutputFile(f"{DELIVERED}/results.json", path, path.stat().st_size))
        for kind in ("products", "plots"):
            found.extend(self._files(kind, doc.get(kind), key))
        return found

    def _files(self, kind: str, paths: Any, key: str) -> Iterable[OutputFile]:
        """Products or plots named by the Work that this host can read (as the runner's paths, or mapped from
        runner_work_dir to work_dir)."""
        if not isinstance(paths, list):
            return []
        found, names = [], set()
        runner_root = (self.options.runner_work_dir or "").rstrip("/")
        for item in paths:
            if not isinstance(item, str):
                continue
            local = item
            if runner_root and (item == runner_root or item.startswith(runner_root + "/")):
                local = str(self.options.work_dir) + item[len(runner_root) :]
            path = Path(local)
            name = path.name
            if not self._deliverable(path) or name in names:
                logger.warning(
                    "backend {}: job {}: {} {} is not a file under work_dir or products_dirs on this host; "
                    "not delivered",
                    self.name,
                    key,
                    kind[:-1],
                    item,
                )
                continue
            names.add(name)
            found.append(OutputFile(f"{DELIVERED}/{kind}/{name}", path, path.stat().st_size))
        return found

    def _deliverable(self, path: Path) -> bool:
        """A regular file, no link, inside work_dir or a products_dirs folder: the service names the paths, and
        must not make syncd deliver any file this host can read."""
        if not path.is_absolute() or path.is_symlink() or not path.is_file():
            return False
        real = path.resolve()
        roots = [self.options.work_dir, *self.options.products_dirs]
        return any(real.is_relative_to(root.resolve()) for root in roots)

    def cleanup(self, ref: RemoteRef) -> None:
        key = ref.handle.get("key", "")
        if api.WORK_ID.match(ref.remote_id):
            self._call("DELETE", "/work", f"deleting job {key or ref.remote_id}", params={"ids": [ref.remote_id]})
        if key:
            shutil.rmtree(self._folder(key).path, ignore_errors=True)

    def close(self) -> None:
        self._session.close()
