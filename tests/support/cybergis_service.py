"""A test double of the CyberGIS-Compute gateway: cybergis-compute-core ("v2") behind its ``/v2/`` proxy.

Written from ``shared/protocols/cybergis.md`` and the official client (cybergis-compute-client 0.2.6); where the
notes leave a detail open, it was read in the core server's source (branch ``v2``: ``server.ts``, ``src/...``,
named below) — never in syncd's backend. What it keeps of the service:

- every route the client uses, at ``/v2/<route>`` and at ``/<route>`` (the core server without its proxy);
  Express's own answers for an unknown route (404 HTML) and a body that is not JSON (400 HTML);
- the credential in the JSON body of every method, GET included: ``jupyterhubApiToken`` = base64 of
  ``<jupyterhub host>@<token>``; the host must be on the allowlist and the hub (a table here) must know the
  token; the user is ``<name>@<host>``. ``POST /job`` only checks the body's shape: an invalid token makes a
  draft with ``userId: null`` that every later call refuses;
- the server's status codes, quirks included: 402 for invalid input and invalid tokens, 401 for "submit without
  login is not allowed" and "invalid access", 403 for internal and Globus errors, and answers sent as **200 with
  an ``error`` key** (``PUT /job/{id}`` and ``GET /job/{id}`` of an unknown job);
- ``Helper.job2object``: always the same keys, null when unset; what TypeORM loads decides the rest — a fresh
  draft has ``isFailed``/``events``/``logs`` null, a loaded job without its relations has ``events: []`` and
  ``logs: []`` (``Job.sortEvents``/``sortLogs``), so ``GET /user/job`` carries **no events**; ``queuedAt`` is
  never shown; ids are Unix seconds + 5 letters or digits;
- the supervisor (``src/Supervisor.ts``): a queue per HPC drained up to ``job_pool_capacity`` jobs, one
  maintainer per registered job, held **in memory**: ``PUT /job/{id}/cancel`` finds only registered jobs (the
  queue lookup never matches: ``+this.queues[hpc].length`` is NaN), and a restart forgets every maintainer —
  queued jobs go on (the queue is Redis), jobs already registered are never updated again;
- the community maintainer and the Slurm connector: uploads (a ``local`` data folder is zipped **beside
  itself**, ``<path>.zip``, and an existing zip is reused; ``globus`` through the fake Globus below), an empty
  result folder with ``slurm_log/``, a batch script in which ``param``/``env`` are spliced as
  ``param_<k>="<v>"`` before ``bash -c "cd <executable folder> && <execution_stage>"`` and ``export k=v;``
  (``SingularityConnector._getJobENV``, ``BaseConnector``), stdout and stderr to ``slurm_log/job.stdout|stderr``;
  ``squeue``: a job that exited 0 is ``CD``, another ``F`` (→ ``JOB_FAILED``, no logs, no result listing), one
  cancelled ``CA`` or past its time limit ``TO`` (→ ``JOB_ENDED`` once Slurm forgets it, after ``min_job_age``:
  a cancelled job looks ended); logs are one message per non-empty file, cut at 500 characters with
  ``...[download for full log]``; ``result-folder-content`` lists the result folder's **directories** (hidden
  ones skipped, ``/`` first), ``[]`` until ``JOB_ENDED``; init is tried 3 times (``JOB_RETRY``), then
  ``JOB_FAILED``;
- ``validateSlurmConfig``: the HPC's ``slurm_input_rules`` (not the git manifest's), its ``slurm_global_cap``
  and the default ceiling, compared the server's way;
- Globus: endpoints are folders on this host; a transfer takes ``globus_seconds``; ``globus-status`` forgets a
  folder's task once it has answered ``SUCCEEDED`` or ``FAILED``.

Jobs run as real processes (``bash``) in folders under the state directory, in sessions of their own: they
outlive the emulator like Slurm jobs outlive the gateway. The state is a JSON file rewritten on every change, so
the process can be killed (``-9``) and restarted on the same port. Run ``python -m tests.support.cybergis_service
STATE_DIR [--port N]``; the ``cybergis_service`` fixture does it once per test session.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import zipfile
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CAPACITY_DEFAULT = 8
DEFAULT_CEILING = {
    "num_of_node": 50,
    "num_of_task": 50,
    "cpu_per_task": 50,
    "memory_per_cpu": "10G",
    "memory_per_gpu": "10G",
    "memory": "50G",
    "gpus": 20,
    "gpus_per_node": 20,
    "gpus_per_socket": 20,
    "gpus_per_task": 20,
    "time": "10:00:00",
}
STORAGE_KEYS = ("memory_per_cpu", "memory_per_gpu", "memory")
INTEGER_KEYS = (
    "num_of_node",
    "num_of_task",
    "time",
    "cpu_per_task",
    *STORAGE_KEYS,
    "gpus",
    "gpus_per_node",
    "gpus_per_socket",
    "gpus_per_task",
)
SCHEMAS: dict[str, dict[str, str]] = {
    "user": {"jupyterhubApiToken": "string"},
    "createJob": {
        "jupyterhubApiToken": "string",
        "maintainer": "string",
        "hpc": "string",
        "user": "string",
        "password": "string",
    },
    "updateJob": {
        "jupyterhubApiToken": "string",
        "param": "object",
        "env": "object",
        "slurm": "object",
        "localExecutableFolder": "object",
        "localDataFolder": "object",
        "remoteDataFolder": "string",
        "remoteExecutableFolder": "string",
    },
    "initGlobusDownload": {
        "jobId": "string",
        "jupyterhubApiToken": "string",
        "toEndpoint": "string",
        "toPath": "string",
        "fromPath": "string",
    },
}
REQUIRED = {"initGlobusDownload": ("jupyterhubApiToken", "toEndpoint", "toPath")}
JOB_KEYS = (
    "id",
    "userId",
    "secretToken",
    "slurmId",
    "maintainer",
    "hpc",
    "remoteExecutableFolder",
    "remoteDataFolder",
    "remoteResultFolder",
    "localExecutableFolder",
    "localDataFolder",
    "param",
    "env",
    "slurm",
    "createdAt",
    "updatedAt",
    "deletedAt",
    "initializedAt",
    "finishedAt",
    "isFailed",
    "events",
    "logs",
)
LOG_LIMIT = 500


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def node_join(*parts: str) -> str:
    """Node's ``path.join``: every part appended, then normalised (an absolute part does not reset the path)."""
    return os.path.normpath("/".join(parts)).replace("//", "/")


def generate_id() -> str:
    """``Helper.generateId``: Unix seconds and five random letters or digits."""
    return str(round(time.time())) + "".join(random.choices(string.ascii_letters + string.digits, k=5))


# -- the server's unit arithmetic (src/lib/JobUtil.ts), quirks included ------------------------------------------
def storage_to_kb(value: Any) -> float | None:
    text = str(value).lower().replace("b", "")
    for unit, factor in (("p", 1024**3), ("g", 1024**2), ("m", 1024)):
        if unit in text:
            try:
                return int(text.replace(unit, "").strip()) * factor
            except ValueError:
                return None
    return None  # JavaScript's undefined: never "exceeds"


def time_to_seconds(raw: str) -> float:
    parts = str(raw).split(":")
    try:
        if len(parts) == 1:
            days = parts[0].split("-")
            return int(parts[0]) * 60 if len(days) == 1 else int(days[0]) * 86400 + int(days[0]) * 3600
        if len(parts) == 2:
            days = parts[0].split("-")
            if len(days) == 2:
                return int(days[0]) * 86400 + int(days[1]) * 3600 + int(parts[1]) * 60
            return int(parts[0]) * 60 + int(parts[0])
        if len(parts) == 3:
            days = parts[0].split("-")
            if len(days) == 2:
                return int(days[0]) * 86400 + int(days[1]) * 3600 + int(parts[1]) * 60 + int(parts[2])
            return int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])
    except ValueError:
        return float("nan")
    return float("inf")


def seconds_to_time(seconds: float) -> str:
    days, hours, minutes = int(seconds // 86400), int(seconds // 3600) % 24, int(seconds // 60) % 60
    if days == 0:
        return f"{minutes:02d}:00" if hours == 0 else f"{hours:02d}:{minutes:02d}:00"
    return f"{days:02d}-{hours:02d}:{minutes:02d}:00"


def unit_time_to_seconds(value: float, unit: str | None) -> float:
    return value * {"Minutes": 60, "Hours": 3600, "Days": 86400}.get(unit or "", 0)


def exceeds(key: str, ceiling: Any, value: Any) -> bool:
    if key in STORAGE_KEYS:
        a, b = storage_to_kb(ceiling), storage_to_kb(value)
        return a is not None and b is not None and a < b
    if key == "time":
        return time_to_seconds(ceiling) < time_to_seconds(value)
    try:
        return float(ceiling) < float(value)
    except (TypeError, ValueError):
        return False


def slurm_seconds(raw: str) -> float:
    """What Slurm itself makes of a --time value (the emulated cluster's time limit)."""
    days, _, rest = str(raw).rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:
        hms = parts + [0] * (3 - len(parts))
        return int(days) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


class Refusal(Exception):
    """An answer the server sends instead of the normal one."""

    def __init__(self, status: int, body: Any):
        super().__init__(body)
        self.status, self.body = status, body


def _schema_errors(body: Any, schema: str) -> list[str]:
    """The messages of node's jsonschema for the server's few schemas."""
    if not isinstance(body, dict):
        return ["is not of a type(s) object"]
    errors = []
    for key, kind in SCHEMAS[schema].items():
        if key in body:
            value = body[key]
            ok = isinstance(value, str) if kind == "string" else isinstance(value, dict)
            if not ok:
                errors.append(f"instance.{key} is not of a type(s) {kind}")
    for key in REQUIRED.get(schema, ("jupyterhubApiToken",)):
        if key not in body:
            errors.append(f'requires property "{key}"')
    return errors


class Emulator:
    """The gateway: its database (``state.json``), its supervisor thread and its routes."""

    def __init__(self, root: Path):
        self.root = root
        self.config = json.loads((root / "config.json").read_text())
        self.lock = threading.RLock()
        self.state_path = root / "state.json"
        self.state: dict[str, Any] = (
            json.loads(self.state_path.read_text())
            if self.state_path.exists()
            else {
                "jobs": {},
                "events": {},
                "logs": {},
                "folders": {},
                "queues": {},
                "results": {},
                "globus_tasks": {},
                "transfers": {},
                "pids": {},
                "next_id": 1,
            }
        )
        # In memory only, like the supervisor's: lost in a restart.
        self.running: dict[str, dict[str, Any]] = {}
        self.cancel_requests: set[str] = set()
        self.stop = threading.Event()
        self.requests = 0

    # -- database ----------------------------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.state_path)

    def _new_id(self) -> int:
        self.state["next_id"] += 1
        return self.state["next_id"]

    def event(self, job_id: str, kind: str, message: str) -> None:
        """``Emitter.registerEvents``: JOB_INIT sets initializedAt; JOB_ENDED/JOB_FAILED finishedAt and isFailed."""
        job, stamp = self.state["jobs"][job_id], now_ms()
        if kind == "JOB_INIT":
            job["initializedAt"] = stamp
        elif kind in ("JOB_ENDED", "JOB_FAILED"):
            job["finishedAt"], job["isFailed"] = stamp, kind == "JOB_FAILED"
        self.state["events"].setdefault(job_id, []).append(
            {"id": self._new_id(), "jobId": job_id, "type": kind, "message": message, "createdAt": stamp}
        )
        self.save()

    def log(self, job_id: str, message: str) -> None:
        if len(message) > LOG_LIMIT:
            message = message[:LOG_LIMIT] + "...[download for full log]"
        self.state["logs"].setdefault(job_id, []).append(
            {"id": self._new_id(), "jobId": job_id, "message": message, "createdAt": now_ms()}
        )
        self.save()

    def folder_object(self, folder_id: str | None) -> dict | None:
        folder = self.state["folders"].get(folder_id) if folder_id else None
        if folder is None:
            return None
        return {
            **folder,
            "createdAt": iso(folder["createdAt"]),
            "updatedAt": iso(folder.get("updatedAt")),
            "deletedAt": iso(folder.get("deletedAt")),
        }

    def job_object(
        self, job: dict, *, fresh: bool = False, folders: bool = False, events: bool = False, logs: bool = False
    ) -> dict:
        """``Helper.job2object`` of the entity the server has in hand (``fresh``: built by POST /job, not loaded)."""
        out: dict[str, Any] = dict.fromkeys(JOB_KEYS)
        for key in ("id", "userId", "maintainer", "hpc", "param", "env", "slurm"):
            out[key] = job[key]
        out["createdAt"] = iso(job["createdAt"])
        if fresh:
            return out
        for key in ("slurmId", "localExecutableFolder", "localDataFolder", "isFailed"):
            out[key] = job[key]
        for key in ("updatedAt", "deletedAt", "initializedAt", "finishedAt"):
            out[key] = iso(job.get(key))
        if folders:
            for key in ("remoteExecutableFolder", "remoteDataFolder", "remoteResultFolder"):
                out[key] = self.folder_object(job.get(key))

        def stamped(items):
            return [
                {
                    **i,
                    "createdAt": iso(i["createdAt"]),
                    "updatedAt": iso(i["createdAt"]),  # noqa: E731
                    "deletedAt": None,
                }
                for i in items
            ]

        out["events"] = stamped(self.state["events"].get(job["id"], [])) if events else []
        out["logs"] = stamped(self.state["logs"].get(job["id"], [])) if logs else []
        return out

    # -- authentication (src/JupyterHub.ts and the middleware in server.ts) -----------------------------------------
    def who(self, body: Any) -> tuple[str | None, str | None]:
        """(username, host) of the body's token; the middleware swallows every failure, leaving both unset."""
        token = body.get("jupyterhubApiToken") if isinstance(body, dict) else None
        if not token:
            return None, None
        try:
            decoded = base64.b64decode(str(token), validate=False).decode("latin-1")
        except (ValueError, TypeError):
            return None, None
        parts = decoded.split("@")
        if len(parts) != 2:
            return None, None
        host, raw = parts
        hub = self.config["hubs"].get(host)
        if hub is None:
            return None, None  # getUsername throws before the host is recorded
        name = hub["tokens"].get(raw)
        return (f"{name}@{host}" if name else None), host

    # -- the supervisor ----------------------------------------------------------------------------------------
    def supervise(self) -> None:
        while not self.stop.wait(self.config.get("tick", 0.05)):
            try:
                with self.lock:
                    self._consume_queues()
                    for job_id in list(self.running):
                        self._work(job_id)
                    self._globus_progress()
            except Exception as exc:  # the supervisor never dies of one job
                print(f"supervisor: {exc!r}", file=sys.stderr, flush=True)

    def _consume_queues(self) -> None:
        for hpc, queue in self.state["queues"].items():
            capacity = self.config["hpc"][hpc].get("job_pool_capacity", CAPACITY_DEFAULT)
            while queue and sum(1 for r in self.running.values() if r["hpc"] == hpc) < capacity:
                job_id = queue.pop(0)
                self.running[job_id] = {"job_id": job_id, "hpc": hpc, "init": False, "tries": 0, "proc": None}
                self.event(
                    job_id,
                    "JOB_REGISTERED",
                    f"job [{job_id}] is registered with the supervisor, waiting for initialization",
                )

    def _work(self, job_id: str) -> None:
        entry = self.running[job_id]
        ended = False
        if not entry["init"]:
            if entry["tries"] >= 3:
                self.event(job_id, "JOB_FAILED", "initialization counter exceeds 3 counts")
                ended = True
            else:
                entry["tries"] += 1
                try:
                    self._init(job_id, entry)
                    entry["init"] = True
                    self.event(job_id, "JOB_INIT", f"job [{job_id}] is initialized, waiting for job completion")
                except Exception as exc:
                    self.event(job_id, "JOB_RETRY", f"job [{job_id}] encountered system error Error: {exc}")
        else:
            ended = self._maintain(job_id, entry)
        if job_id in self.cancel_requests and entry["init"] and not ended:
            self.cancel_requests.discard(job_id)
            self._scancel(entry)
        if ended:
            self.running.pop(job_id, None)
            self.cancel_requests.discard(job_id)

    def _hpc_folder(self, job: dict) -> tuple[str, Path]:
        hpc = self.config["hpc"][job["hpc"]]
        folder_id = generate_id()
        root = Path(hpc["root_path"])
        globus_root = hpc.get("globus", {}).get("root_path", "/")
        self.state["folders"][folder_id] = {
            "id": folder_id,
            "name": None,
            "hpc": job["hpc"],
            "hpcPath": str(root / folder_id),
            "globusPath": node_join(globus_root, folder_id),
            "userId": job["userId"],
            "isWritable": False,
            "createdAt": now_ms(),
        }
        path = root / folder_id
        path.mkdir(parents=True)
        return folder_id, path

    def _init(self, job_id: str, entry: dict) -> None:
        """``CommunityContributionMaintainer.onInit``; an exception is a JOB_RETRY."""
        job = self.state["jobs"][job_id]
        local = job["localExecutableFolder"] or {}
        if local.get("type") != "git":
            raise ValueError("community contribution currently don't accept non-git code")
        repo = self.config["git"].get(local.get("gitId"))
        if repo is None:
            raise ValueError("could not find git repo executable in this job")
        manifest = json.loads((Path(repo) / "manifest.json").read_text())
        container = self.config.get("container", {}).get(manifest.get("container"))
        if container is None:
            raise ValueError(f"unknown container {manifest.get('container')}")
        if job["hpc"] not in container.get("hpc_path", {}):
            raise ValueError(f"container {manifest.get('container')} is not supported on HPC {job['hpc']}")
        self.event(job_id, "SLURM_UPLOAD_EXECUTABLE", "uploading executable folder")
        exe_id, exe = self._hpc_folder(job)
        shutil.copytree(repo, exe, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        data_id = None
        if job["localDataFolder"]:
            self.event(job_id, "SLURM_UPLOAD_DATA", "uploading data folder")
            data_id, data = self._hpc_folder(job)
            self._upload(job["localDataFolder"], data)
        self.event(job_id, "SLURM_CREATE_RESULT", "create result folder")
        result_id, result = self._hpc_folder(job)
        job.update(
            remoteExecutableFolder=exe_id, remoteDataFolder=data_id, remoteResultFolder=result_id, updatedAt=now_ms()
        )
        (result / "slurm_log").mkdir()
        self.event(job_id, "SLURM_SUBMIT", "submitting slurm job")
        entry.update(
            proc=self._sbatch(job, manifest, exe, self.state["folders"].get(data_id), result),
            result=result,
            downloadable=manifest.get("default_result_folder_downloadable_path"),
            started=time.time(),
            cancelled=False,
            ended_at=None,
        )
        job["slurmId"] = str(entry["proc"].pid)
        self.state["pids"][job_id] = entry["proc"].pid
        self.event(job_id, "SLURM_SUBMIT_SUCCESS", f"slurm job submitted with slurm job id {job['slurmId']}")

    def _upload(self, source: dict, dest: Path) -> None:
        kind = source.get("type")
        if kind == "local":
            path = Path(str(source.get("localPath")))
            if not path.exists():
                raise ValueError(f"could not find folder under path {path}")
            archive = Path(f"{path}.zip")
            if not archive.exists():  # FolderUtil.getZip reuses a zip that is already there
                with zipfile.ZipFile(archive, "w") as packed:
                    for item in sorted(path.rglob("*")):
                        if item.is_file():
                            packed.write(item, item.relative_to(path).as_posix())
            with zipfile.ZipFile(archive) as packed:
                packed.extractall(dest)
        elif kind == "globus":
            self._globus_copy(str(source.get("endpoint")), str(source.get("path")), dest)
        else:
            raise ValueError(f"undefined file type {kind}")

    def _sbatch(self, job: dict, manifest: dict, exe: Path, data: dict | None, result: Path) -> subprocess.Popen:
        """The batch script of SlurmConnector.prepare + SingularityConnector (a bash instead of the container)."""
        values = {"job_id": job["id"], "user_id": job["userId"], "maintainer": job["maintainer"], "hpc": job["hpc"]}
        job_env = [f'{k}="{v}"' for k, v in values.items()]
        job_env += [f'param_{k}="{v}"' for k, v in (job["param"] or {}).items()]
        job_env += [f'env_{k}="{v}"' for k, v in (job["env"] or {}).items()]
        job_env += [
            f'executable_folder="{exe}"',
            f'data_folder="{data["hpcPath"] if data else None}"',
            f'result_folder="{result}"',
        ]
        stages = [
            manifest.get("pre_processing_stage"),
            manifest["execution_stage"],
            manifest.get("post_processing_stage"),
        ]
        lines = [f'{" ".join(job_env)} bash -c "cd {exe} && {stage}"' for stage in stages if stage]
        hpc = self.config["hpc"][job["hpc"]]
        script = "\n".join(["#!/bin/bash", *hpc.get("init_sbatch_script", []), *lines]) + "\n"
        (exe / "job.sbatch").write_text(script)
        (exe / "job.json").write_text(
            json.dumps(
                {
                    "job_id": job["id"],
                    "user_id": job["userId"],
                    "maintainer": job["maintainer"],
                    "hpc": job["hpc"],
                    "param": job["param"],
                    "env": job["env"],
                    "executable_folder": str(exe),
                    "data_folder": data["hpcPath"] if data else None,
                    "result_folder": str(result),
                }
            )
        )
        env_cmd = "".join(f"export {k}={v};\n" for k, v in (job["env"] or {}).items())
        logs = result / "slurm_log"
        with open(logs / "job.stdout", "wb") as out, open(logs / "job.stderr", "wb") as err:
            return subprocess.Popen(
                ["/bin/bash", "-c", env_cmd + "exec /bin/bash job.sbatch"],
                cwd=exe,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(exe)},
            )

    def _squeue(self, entry: dict) -> str:
        proc: subprocess.Popen = entry["proc"]
        code = proc.poll()
        limit = slurm_seconds((self.state["jobs"][entry["job_id"]]["slurm"] or {}).get("time") or "01:00:00")
        if code is None:
            if time.time() - entry["started"] >= limit:
                entry["timed_out"] = True
                self._scancel(entry)
            return "R"
        if entry["ended_at"] is None:
            entry["ended_at"] = time.time()
        if time.time() - entry["ended_at"] >= self.config.get("min_job_age", 0.3):
            return "UNKNOWN"
        if entry.get("timed_out"):
            return "TO"
        if entry["cancelled"]:
            return "CA"
        return "CD" if code == 0 else "F"

    def _maintain(self, job_id: str, entry: dict) -> bool:
        """``CommunityContributionMaintainer.onMaintain``: True once the job has ended."""
        status = self._squeue(entry)
        if status in ("ERROR", "F", "NF"):
            self.event(job_id, "JOB_FAILED", f"job [{job_id}] failed with status {status}")
            return True
        if status in ("C", "CD", "UNKNOWN"):
            for name in ("job.stdout", "job.stderr"):
                text = (entry["result"] / "slurm_log" / name).read_text(errors="replace")
                if text:
                    self.log(job_id, text)
            self.event(job_id, "JOB_ENDED", f"job [{job_id}] finished")
            contents = self._result_content(entry["result"])
            if first := entry["downloadable"]:  # brought to the front, for the web page
                first = first if first.startswith("/") else "/" + first
                contents.sort(key=lambda path: path != first)
            self.state["results"][job_id] = contents
            self.save()
            return True
        return False

    @staticmethod
    def _result_content(folder: Path) -> list[str]:
        """``getRemoteResultFolderContent``: ``find . -type d``, hidden names skipped, "/" first."""
        found = ["/"]
        for dirpath, dirnames, _ in os.walk(folder):
            dirnames.sort()
            rel = Path(dirpath).relative_to(folder)
            if any(part.startswith(".") for part in rel.parts) or not rel.parts:
                continue
            if (path := "/" + rel.as_posix()) not in found:
                found.append(path)
        return found

    @staticmethod
    def _scancel(entry: dict) -> None:
        proc = entry.get("proc")
        if proc is None or proc.poll() is not None:
            return
        entry["cancelled"] = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- Globus ------------------------------------------------------------------------------------------------
    def _endpoint_path(self, endpoint: str, path: str) -> Path:
        root = self.config.get("globus_endpoints", {}).get(endpoint)
        if root is None:
            raise ValueError(f"Globus endpoint {endpoint} not found")
        return Path(root) / str(path).lstrip("/")

    def _globus_copy(self, endpoint: str, path: str, dest: Path) -> None:
        source = self._endpoint_path(endpoint, path)
        if not source.is_dir():
            raise ValueError(f"Globus: {path} is not a directory on endpoint {endpoint}")
        shutil.copytree(source, dest, dirs_exist_ok=True)

    def _globus_progress(self) -> None:
        for task in self.state["transfers"].values():
            if task["status"] != "ACTIVE" or time.time() < task["due"]:
                continue
            try:
                source = self._endpoint_path(task["from"]["endpoint"], task["from"]["path"])
                dest = self._endpoint_path(task["to"]["endpoint"], task["to"]["path"])
                shutil.copytree(source, dest, dirs_exist_ok=True)
                task["status"] = "SUCCEEDED"
            except (OSError, ValueError):
                task["status"] = "FAILED"
            self.save()

    # -- routes ------------------------------------------------------------------------------------------------
    def _user(
        self,
        body: Any,
        schema: str = "user",
        *,
        missing: tuple[int, str] = (402, "invalid token"),
        allowlist: bool = False,
    ) -> str:
        if errors := _schema_errors(body, schema):
            raise Refusal(402, {"error": "invalid input", "messages": errors})
        username, host = self.who(body)
        if allowlist and host not in self.config["hubs"]:
            raise Refusal(404, {"error": "Cannot find jupyterhubHost in allowlist"})
        if username is None:
            raise Refusal(missing[0], {"error": missing[1], **({"messages": []} if missing[0] == 401 else {})})
        return username

    def _owned(self, job_id: str, username: str) -> dict:
        job = self.state["jobs"].get(job_id)
        if job is None or job["userId"] != username:
            raise LookupError(
                f'EntityNotFound: Could not find any entity of type "Job" matching: '
                f'{{\n    "id": "{job_id}",\n    "userId": "{username}"\n}}'
            )
        return job

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any] | None:
        """(status, JSON body) of a request; None for a route that never answers."""
        self.requests += 1
        with self.lock:
            try:
                return self._route(method, path, body)
            except Refusal as refusal:
                return refusal.status, refusal.body

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any] | None:
        path, _, query = path.partition("?")
        job_route = re.fullmatch(r"/job/([^/]+)(/[a-z-]+)?", path)
        folder_route = re.fullmatch(r"/folder/([^/]+)/download/(globus-init|globus-status)", path)
        if (method, path) == ("GET", "/"):
            return 200, {"message": "hello world"}
        if method == "GET" and path in ("/hpc", "/maintainer", "/container", "/git", "/whitelist", "/allowlist"):
            return 200, self._catalogue(path[1:])
        if (method, path) == ("GET", "/user"):
            return 200, {"username": self._user(body, allowlist=True)}
        if (method, path) == ("GET", "/user/job"):
            username = self._user(body, allowlist=True)
            jobs = [j for j in self.state["jobs"].values() if j["userId"] == username]
            return 200, {"job": [self.job_object(j, folders=True) for j in jobs]}
        if (method, path) == ("GET", "/user/jupyter-globus"):
            username = self._user(body, allowlist=True)
            hub = self.config["hubs"][username.rsplit("@", 1)[1]]["globus"]
            return 200, {
                "endpoint": hub["endpoint"],
                "root_path": node_join(hub["root_path"], username.rsplit("@", 1)[0]),
                "container_home_path": hub["container_home_path"],
            }
        if (method, path) == ("GET", "/user/slurm-usage"):
            self._user(body)  # the jobs' usage columns (seff's numbers) stay null here: all zero
            if "format=True" in query:
                return 200, {
                    "nodes": 0,
                    "cpus": 0,
                    "cpuTime": "00 days, 00 hours, 00 minutes, 00 seconds",
                    "memory": "0kb",
                    "memoryUsage": "0kb",
                    "walltime": "00 days, 00 hours, 00 minutes, 00 seconds",
                }
            return 200, {"nodes": 0, "cpus": 0, "cpuTime": 0, "memory": 0, "memoryUsage": 0, "walltime": 0}
        if (method, path) == ("POST", "/job"):
            return self._create(body)
        if (
            method == "PUT"
            and path in ("/clean",)
            or (job_route and method == "PUT" and job_route.group(2) in ("/pause", "/resume"))
        ):
            return None  # not implemented on the server: the request never gets an answer
        if job_route:
            job_id, action = job_route.groups()
            handler = {
                ("PUT", None): self._update,
                ("POST", "/submit"): self._submit,
                ("PUT", "/cancel"): self._cancel,
                ("GET", None): self._status,
                ("GET", "/events"): self._events,
                ("GET", "/logs"): self._logs,
                ("GET", "/result-folder-content"): self._result_folder,
            }.get((method, action))
            if handler is not None:
                return handler(job_id, body)
        if folder_route:
            folder_id, action = folder_route.groups()
            if (method, action) == ("POST", "globus-init"):
                return self._globus_init(folder_id, body)
            if (method, action) == ("GET", "globus-status"):
                return self._globus_status(folder_id, body)
        return 404, f"Cannot {method} {path}"

    def _catalogue(self, name: str) -> dict:
        if name == "hpc":  # parseHPC drops what is private
            hide = ("init_sbatch_script", "init_sbatch_options", "community_login", "root_path")
            return {"hpc": {k: {f: v for f, v in h.items() if f not in hide} for k, h in self.config["hpc"].items()}}
        if name == "git":
            return {"git": {gid: self._git_manifest(gid, Path(repo)) for gid, repo in self.config["git"].items()}}
        if name in ("whitelist", "allowlist"):
            return {name: {host: hub.get("globus", {}).get("comment", "") for host, hub in self.config["hubs"].items()}}
        return {name: self.config.get(name, {})}

    @staticmethod
    def _git_manifest(gid: str, repo: Path) -> dict:
        """``GitUtil.getExecutableManifest``: defaults, invalid rules dropped, missing bounds filled in."""
        manifest = {
            "name": None,
            "container": None,
            "description": "none",
            "estimated_runtime": "unknown",
            "supported_hpc": ["keeling_community"],
            "default_hpc": None,
            "repository": f"file://{repo}",
            "require_upload_data": False,
            "slurm_input_rules": {},
            "param_rules": {},
            **json.loads((repo / "manifest.json").read_text()),
        }
        manifest["default_hpc"] = manifest["default_hpc"] or manifest["supported_hpc"][0]
        rules = manifest["slurm_input_rules"]
        for key in list(rules):
            rule = rules[key]
            if (
                key not in (*INTEGER_KEYS, "partition")
                or not rule.get("default_value")
                or (key == "time" and rule.get("unit") not in ("Minutes", "Hours", "Days"))
                or (key in STORAGE_KEYS and rule.get("unit") not in ("GB", "MB"))
            ):
                del rules[key]
                continue
            if key in INTEGER_KEYS and key not in ("time", *STORAGE_KEYS):
                rule["unit"] = "None"
                continue
            if key in INTEGER_KEYS:
                rule.setdefault("max", rule["default_value"] * 2)
                rule.setdefault("min", 0)
                rule.setdefault("step", 1)
        for key in list(manifest["param_rules"]):
            rule = manifest["param_rules"][key]
            if not rule.get("default_value") or rule.get("type") not in ("integer", "string_option", "string_input"):
                del manifest["param_rules"][key]
        return manifest

    def _create(self, body: Any) -> tuple[int, Any]:
        if errors := _schema_errors(body, "createJob"):
            return 402, {"error": "invalid input", "messages": errors}
        username, _ = self.who(body)
        name = body.get("maintainer") or "community_contribution"
        maintainer = self.config["maintainer"].get(name)
        if maintainer is None:
            return 401, {"error": "unrecognized maintainer", "message": None}
        hpc_name = body.get("hpc") or maintainer["default_hpc"]
        hpc = self.config["hpc"].get(hpc_name)
        if hpc is None:
            return 401, {"error": "unrecognized hpc", "message": None}
        if username in hpc.get("denylist", []) or (hpc.get("allowlist") and username not in hpc["allowlist"]):
            return 401, {"error": "Not authorized for HPC", "message": None}
        if not hpc.get("is_community_account", True):
            return 401, {"error": "invalid SSH credentials", "messages": ["Error: not emulated"]}
        job = {
            "id": generate_id(),
            "userId": username,
            "maintainer": name,
            "hpc": hpc_name,
            "param": {},
            "env": {},
            "slurm": {},
            "slurmId": None,
            "localExecutableFolder": None,
            "localDataFolder": None,
            "remoteExecutableFolder": None,
            "remoteDataFolder": None,
            "remoteResultFolder": None,
            "createdAt": now_ms(),
            "updatedAt": None,
            "deletedAt": None,
            "initializedAt": None,
            "finishedAt": None,
            "queuedAt": None,
            "isFailed": False,
        }
        self.state["jobs"][job["id"]] = job
        self.save()
        return 200, self.job_object(job, fresh=True)

    def _update(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, "updateJob")
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 200, {"error": str(exc)}  # res.json() before res.status(): it goes out as 200
        changes = {
            k: body[k] for k in ("param", "env", "slurm", "localExecutableFolder", "localDataFolder") if body.get(k)
        }
        if body.get("remoteDataFolder"):
            if body["remoteDataFolder"] not in self.state["folders"]:
                return 403, {"error": "internal error", "messages": "Error: could not find remoteDataFolder"}
            changes["remoteDataFolder"] = body["remoteDataFolder"]
        job.update(changes, updatedAt=now_ms())
        self.save()
        return 200, self.job_object(job)

    def _submit(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, missing=(401, "submit without login is not allowed"))
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 401, {"error": "invalid access", "messages": [str(exc)]}
        if job["queuedAt"]:
            return 401, {"error": "job already submitted or in queue", "messages": []}
        if not job["localExecutableFolder"]:
            return 402, {"error": "Error: job missing executable file"}
        if problem := self._slurm_problem(job):
            return 402, {"error": f"Error: {problem}"}
        self.state["queues"].setdefault(job["hpc"], []).append(job_id)
        job["queuedAt"] = now_ms()
        self.event(job_id, "JOB_QUEUED", f"job [{job_id}] is queued, waiting for registration")
        return 200, self.job_object(job, folders=True)

    def _slurm_problem(self, job: dict) -> str | None:
        """``JobUtil.validateSlurmConfig`` with the HPC's rules."""
        hpc = self.config["hpc"][job["hpc"]]
        ceiling: dict[str, Any] = {}
        for key, rule in (hpc.get("slurm_input_rules") or {}).items():
            if not rule.get("max"):
                continue
            if key in STORAGE_KEYS:
                ceiling[key] = f"{rule['max']}{rule.get('unit', '')}"
            elif key == "time":
                ceiling[key] = seconds_to_time(unit_time_to_seconds(rule["max"], rule.get("unit")))
            elif key in INTEGER_KEYS:
                ceiling[key] = rule["max"]
        for key, cap in (hpc.get("slurm_global_cap") or {}).items():
            if key not in ceiling or exceeds(key, cap, ceiling[key]):
                ceiling[key] = cap
        for key, value in DEFAULT_CEILING.items():
            ceiling.setdefault(key, value)
        for key, limit in ceiling.items():
            value = (job["slurm"] or {}).get(key)
            if value and exceeds(key, limit, value):
                return f"slurm config {key} exceeds the threshold of {limit} (current value {value})"
        return None

    def _cancel(self, job_id: str, body: Any) -> tuple[int, Any]:
        self._user(body, missing=(401, "submit without login is not allowed"))
        if job_id not in self.running:  # only the supervisor's running jobs; its queue lookup never matches
            return 402, {"error": "job is not in queue or running jobs"}
        self.cancel_requests.add(job_id)
        return 200, {"messages": ["job successfully added to cancel queue"]}

    def _status(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, missing=(401, "submit without login is not allowed"))
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 200, {"error": "invalid access", "messages": [str(exc)]}  # sent before its 401
        return 200, self.job_object(job, folders=True, events=True, logs=True)

    def _events(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, missing=(401, "submit without login is not allowed"))
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 401, {"error": "invalid access token", "messages": [str(exc)]}
        return 200, self.job_object(job, events=True)["events"]

    def _logs(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, missing=(401, "submit without login is not allowed"))
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 401, {"error": "invalid access", "messages": [str(exc)]}
        return 200, self.job_object(job, logs=True)["logs"]

    def _result_folder(self, job_id: str, body: Any) -> tuple[int, Any]:
        username = self._user(body, missing=(401, "submit without login is not allowed"))
        try:
            job = self._owned(job_id, username)
        except LookupError as exc:
            return 401, {"error": "invalid access", "messages": [str(exc)]}
        return 200, self.state["results"].get(job["id"]) or []

    def _globus_init(self, folder_id: str, body: Any) -> tuple[int, Any]:
        self._user(body, "initGlobusDownload")
        folder = self.state["folders"].get(folder_id)
        if folder is None:
            return 403, {"error": f"cannot find folder with id {folder_id}"}
        if folder_id in self.state["globus_tasks"]:
            return 403, {"error": f"a globus job is currently running on folder with id {folder_id}"}
        hpc = self.config["hpc"].get(folder["hpc"])
        if hpc is None:
            return 403, {"error": f"cannot find hpc {folder['hpc']}"}
        source = node_join(folder["globusPath"], body["fromPath"]) if body.get("fromPath") else folder["globusPath"]
        if body["toEndpoint"] not in self.config.get("globus_endpoints", {}):
            return 403, {
                "error": "failed to init globus with error: Error: GlobusAPIError(404, "
                f"'EndpointNotFound', 'No such endpoint {body['toEndpoint']}')"
            }
        task_id = f"{random.getrandbits(128):032x}"
        self.state["transfers"][task_id] = {
            "from": {"endpoint": hpc["globus"]["endpoint"], "path": source},
            "to": {"endpoint": body["toEndpoint"], "path": body["toPath"]},
            "status": "ACTIVE",
            "due": time.time() + self.config.get("globus_seconds", 0.3),
            "label": f"job-id-{body.get('jobId')}",
        }
        self.state["globus_tasks"][folder_id] = task_id
        self.save()
        return 200, {"globus_task_id": task_id}

    def _globus_status(self, folder_id: str, body: Any) -> tuple[int, Any]:
        self._user(body)
        if folder_id not in self.state["folders"]:
            return 403, {"error": f"cannot find folder with id {folder_id}"}
        task = self.state["transfers"].get(self.state["globus_tasks"].get(folder_id, ""))
        if task is None:
            return 403, {
                "error": "failed to query globus with error: Error: Globus query status failed with "
                "error: missing task id"
            }
        if task["status"] in ("SUCCEEDED", "FAILED"):
            del self.state["globus_tasks"][folder_id]
            self.save()
        return 200, {"status": task["status"]}

    # -- serving -------------------------------------------------------------------------------------------------
    def serve(self, port: int = 0) -> ThreadingHTTPServer:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = {}
                if raw and "application/json" in (self.headers.get("Content-Type") or "").lower():
                    try:
                        body = json.loads(raw)
                    except ValueError as exc:  # body-parser's SyntaxError, rendered by Express
                        return self._send(400, f"<pre>SyntaxError: {exc}</pre>", html=True)
                path = self.path[3:] if self.path.startswith("/v2/") or self.path == "/v2" else self.path
                answer = emulator.route(self.command, path or "/", body)
                if answer is None:
                    time.sleep(30)  # the server never answers this route
                    self.close_connection = True
                    return
                status, payload = answer
                self._send(status, payload, html=isinstance(payload, str))

            def _send(self, status: int, payload: Any, html: bool = False):
                data = (f"<!DOCTYPE html><html><body>{payload}</body></html>" if html else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type", "text/html; charset=utf-8" if html else "application/json; charset=utf-8"
                )
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=self.supervise, daemon=True).start()
        return server


# -- for tests: the emulator as a child process ------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
DEMO_SCRIPT = """echo "demo says $param_message"
echo "demo warns" >&2
mkdir -p "$result_folder/out/deep" "$result_folder/.hidden"
printf '%s' "${param_big:-}" | head -c 2000
sleep "${param_seconds:-0}"
echo done > "$result_folder/out/done.txt"
exit "${param_exit:-0}"
"""
HELLO_MAIN = """import os
print("hello from", os.environ.get("job_id"), "with", os.environ.get("param_greeting"))
os.makedirs(os.path.join(os.environ["result_folder"], "greetings"), exist_ok=True)
with open(os.path.join(os.environ["result_folder"], "greetings", "hello.txt"), "w") as out:
    out.write("hello\\n")
"""


class CybergisService:
    """A running emulator: start, kill -9, restart on the same port; its configuration and its state, read
    back for assertions. ``TOKEN`` is alice's JupyterHub token on ``HUB``."""

    HUB = "hub.test"
    TOKEN = "alice-hub-token"
    OTHER_TOKEN = "bob-hub-token"
    HPC = "emu_community"
    RUNNER = "syncd_runner"
    HPC_ENDPOINT = "6a1d2c9e-0000-4000-8000-0000000000a1"
    HOST_ENDPOINT = "6a1d2c9e-0000-4000-8000-0000000000b2"  # a collection on this host, rooted at "/"

    def __init__(self, root: Path, **overrides: Any):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        hello = root / "git" / "hello_world"
        hello.mkdir(parents=True, exist_ok=True)
        (hello / "main.py").write_text(HELLO_MAIN)
        (hello / "manifest.json").write_text(
            json.dumps(
                {
                    "name": "hello world",
                    "container": "python",
                    "execution_stage": "python3 main.py",
                    "supported_hpc": [self.HPC],
                    "param_rules": {"greeting": {"type": "string_input", "default_value": "hi"}},
                    "default_result_folder_downloadable_path": "greetings",
                }
            )
        )
        demo = root / "git" / "demo"
        demo.mkdir(parents=True, exist_ok=True)
        (demo / "demo.sh").write_text(DEMO_SCRIPT)
        (demo / "manifest.json").write_text(
            json.dumps(
                {
                    "name": "demo",
                    "container": "python",
                    "execution_stage": "bash ./demo.sh",
                    "supported_hpc": [self.HPC],
                }
            )
        )
        self.config: dict[str, Any] = {
            "hubs": {
                self.HUB: {
                    "tokens": {self.TOKEN: "alice", self.OTHER_TOKEN: "bob"},
                    "globus": {
                        "comment": "the test hub",
                        "endpoint": self.HOST_ENDPOINT,
                        "root_path": str(root / "home"),
                        "container_home_path": "/home/jovyan",
                    },
                }
            },
            "hpc": {
                self.HPC: {
                    "ip": "hpc.test",
                    "port": 22,
                    "is_community_account": True,
                    "root_path": str(root / "hpc"),
                    "community_login": {"user": "cg", "use_local_key": True},
                    "job_pool_capacity": CAPACITY_DEFAULT,
                    "globus": {"identity": "cg@hpc.test", "endpoint": self.HPC_ENDPOINT, "root_path": "/"},
                    "slurm_input_rules": {
                        "cpu_per_task": {"max": 4, "min": 1, "default_value": 1},
                        "memory": {"max": 8, "min": 1, "default_value": 1, "unit": "GB"},
                        "time": {"max": 2, "min": 1, "default_value": 1, "unit": "Hours"},
                    },
                    "allowlist": [],
                    "denylist": [],
                    "mount": {},
                    "description": "the emulated cluster",
                }
            },
            "maintainer": {
                "community_contribution": {
                    "hpc": [self.HPC],
                    "default_hpc": self.HPC,
                    "job_pool_capacity": CAPACITY_DEFAULT,
                    "executable_folder": {"from_user": False, "allowed_protocol": "git"},
                    "maintainer": "CommunityContributionMaintainer",
                }
            },
            "container": {
                "python": {
                    "dockerfile": "python.Dockerfile",
                    "dockerhub": "python:3",
                    "hpc_path": {self.HPC: "/images/python.sif"},
                }
            },
            "git": {
                self.RUNNER: str(REPO / "examples" / "cybergis" / "runner"),
                "hello_world": str(hello),
                "demo": str(demo),
            },
            "globus_endpoints": {self.HPC_ENDPOINT: str(root / "hpc"), self.HOST_ENDPOINT: "/"},
            "tick": 0.05,
            "min_job_age": 0.15,
            "globus_seconds": 0.2,
        }
        self.config.update(overrides)
        (root / "config.json").write_text(json.dumps(self.config, indent=1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2"

    def encoded_token(self, token: str | None = None) -> str:
        return base64.b64encode(f"{self.HUB}@{token or self.TOKEN}".encode()).decode()

    def start(self) -> CybergisService:
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        self.log = open(self.root / "emulator.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.cybergis_service", str(self.root), "--port", str(self.port)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the CyberGIS emulator did not start:\n{(self.root / 'emulator.log').read_text()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        return self

    def kill(self) -> None:
        """kill -9: what the gateway held in memory is lost; its jobs' processes run on."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def freeze(self) -> None:
        """SIGSTOP: the gateway stops answering (connections hang) and remembers everything; its jobs run on."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> CybergisService:
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill the emulator and every job process it started."""
        self.kill()
        for pid in self.state().get("pids", {}).values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def state(self) -> dict[str, Any]:
        path = self.root / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.state().get("jobs", {}).values())

    def events(self, job_id: str) -> list[str]:
        return [e["type"] for e in self.state().get("events", {}).get(job_id, [])]


def _session_service(tmp_path_factory):
    service = CybergisService(tmp_path_factory.mktemp("cybergis-gateway")).start()
    try:
        yield service
    finally:
        service.stop()


try:
    import pytest

    cybergis_service = pytest.fixture(scope="session")(_session_service)
except ImportError:  # run as the emulator process without pytest around
    pass


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="the CyberGIS-Compute gateway emulator")
    parser.add_argument("state", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    emulator = Emulator(args.state)
    server = emulator.serve(args.port)
    port_file = args.state / "port"
    port_file.with_suffix(".tmp").write_text(str(server.server_address[1]))
    os.replace(port_file.with_suffix(".tmp"), port_file)
    signal.signal(signal.SIGTERM, lambda *_: (emulator.stop.set(), threading.Thread(target=server.shutdown).start()))
    server.serve_forever()


if __name__ == "__main__":
    main()
