"""A test double of Qarnot's compute service: its REST API, with its S3 side on the session's SeaweedFS.

Written from shared/protocols/qarnot.md (and checked by driving it with the official ``qarnot`` SDK), never
from syncd's backend. What it keeps of the real service:

- paths off the base URL with no version prefix; the bare token in ``Authorization`` (no scheme: anything
  else is a 401); JSON bodies; errors as ``{"message": ...}``; 404 for an unknown task uuid or shortname;
- ``GET /settings`` (``storage`` always present) and ``GET /info`` (``email``: the S3 access key; the S3
  secret is the API token, so SeaweedFS's identity *is* the account, and S3 refuses a wrong token too);
- ``POST /tasks`` (one task, or a JSON array: bulk, per-item status), shortnames DNS-safe and unique
  (409 on a second one), buckets that must exist (404), 402 when credits run out or no hardware matches a
  constraint ("hardware constraint" in the message), 403 "Maximum number of tasks reached";
- every task as a real process (``DOCKER_CMD`` split like an exec-form command, no shell, run in the task's
  folder with the task's constants in its environment); resources copied in from the resource buckets
  (``prefixFiltering``, ``stripPrefix``); the whole working folder uploaded to the result bucket once the
  process ends; no exit code anywhere in the task (Qarnot reports none), only Success / Failure;
- states Submitted → FullyDispatched → FullyExecuting → UploadingResults → Success | Failure, and
  PendingCancel → Cancelled on abort (403 on a task that has ended); ``creationDate`` in whole seconds, the
  other dates with microseconds (both forms the SDK parses); ``status`` with its two ``...ByCpuModel`` lists;
- paging by ``POST /tasks/paginate`` and ``/tasks/summaries/paginate`` with a filter tree, opaque tokens,
  ``nextToken`` null on the last page; stdout/stderr as text, ``POST`` on the same path giving what this
  token has not read yet; ``DELETE`` removes a task (its buckets stay).

State lives in files under ``--state`` (one JSON file per task, its output and its folder), and the task
processes run in sessions of their own: the emulator can be killed and started again mid-test and carries on.
Test controls (faults, credits, quotas, counters) are under ``/_emulator/``, which Qarnot does not have.
Run as ``python -m tests.support.qarnot_service serve --state DIR --port P --s3 URL --email E --token T``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

RUNNING = (
    "Submitted",
    "PartiallyDispatched",
    "FullyDispatched",
    "PartiallyExecuting",
    "FullyExecuting",
    "DownloadingResults",
    "UploadingResults",
)
ENDED = ("Success", "Failure", "Cancelled")
SHORTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
FIELDS = {
    "Tags": "tags",
    "Name": "name",
    "Shortname": "shortname",
    "State": "state",
    "Uuid": "uuid",
    "Profile": "profile",
}
STDOUT_BUFFER = 1 << 20  # the service keeps a circular buffer of each output; this is its size here
HARDWARE = {"cores": os.cpu_count() or 1, "memory_mb": 16384, "gpu": False}
# Runs the split DOCKER_CMD with the task folder as $1 and records how it ended (never any user text in it).
TRAMPOLINE = 'dir=$1; shift; "$@"; code=$?; printf "%s" "$code" > "$dir/exit.part"; mv "$dir/exit.part" "$dir/exit"'


def iso(ts: float | None, fraction: bool = True) -> str | None:
    if ts is None:
        return None
    when = datetime.fromtimestamp(ts, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction else "%Y-%m-%dT%H:%M:%SZ")


def ttl_seconds(text: str | None) -> float:
    """``d.hh:mm:ss`` or ``hh:mm:ss`` → seconds."""
    match = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", text or "")
    if match is None:
        return 0.0
    days, hours, minutes, seconds = (float(x or 0) for x in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Emulator:
    """The service's state (on disk) and behaviour; every method is called with ``self.lock`` held."""

    def __init__(self, state: Path, s3_url: str, email: str, token: str):
        self.root, self.s3_url, self.email, self.token = state, s3_url, email, token
        (state / "tasks").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.requests = 0
        self.s3 = boto3.client(
            "s3",
            endpoint_url=s3_url,
            aws_access_key_id=email,
            aws_secret_access_key=token,
            region_name="us-east-1",
            config=BotoConfig(s3={"addressing_style": "path"}),
        )
        self.account = self._read(state / "account.json") or {
            "credits": None,
            "max_task": 1000,
            "queue_seconds": 0.0,
            "page_size": 50,
            "faults": [],
            "runs": 0,
        }
        self.tasks: dict[str, dict] = {}
        for path in sorted((state / "tasks").glob("*/task.json")):
            task = self._read(path)
            if task:
                self.tasks[task["uuid"]] = task

    # -- storage of state ---------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _write(path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def save(self, task: dict) -> None:
        task["lastModified"] = iso(time.time())
        self._write(self.folder(task) / "task.json", task)

    def save_account(self) -> None:
        self._write(self.root / "account.json", self.account)

    def folder(self, task: dict) -> Path:
        return self.root / "tasks" / task["uuid"]

    # -- lookups --------------------------------------------------------------------------
    def find(self, key: str) -> dict:
        task = self.tasks.get(key) or next((t for t in self.tasks.values() if t["shortname"] == key), None)
        if task is None:
            raise ApiError(404, f"Task {key} not found")
        return task

    def set_state(self, task: dict, state: str) -> None:
        if task["state"] != state:
            now = time.time()
            task.update(
                previousState=task["state"],
                previousStateTransitionTime=task["stateTransitionTime"],
                state=state,
                stateTransitionTime=iso(now),
            )
            if state in ENDED:
                task["endDate"] = iso(now)
            self.save(task)

    def view(self, task: dict, summary: bool = False) -> dict:
        body = {k: v for k, v in task.items() if not k.startswith("_")}
        running = task["state"] in ("FullyExecuting", "PartiallyExecuting")
        body.update(
            runningInstanceCount=int(running),
            runningCoreCount=int(running),
            resourceBuckets=[b["bucketName"] for b in task["advancedResourceBuckets"]],
        )
        body["status"] = {
            "executionProgress": 100.0 if task["state"] in ENDED else 0.0,
            "downloadProgress": 0.0,
            "uploadProgress": 0.0,
            "instanceCount": 1,
            "executionTimeByCpuModel": [],
            "executionTimeGhzByCpuModel": [],
            "succeededRange": "",
            "executedRange": "",
            "failedRange": "",
            "runningInstancesInfo": None,
        }
        if summary:
            for heavy in ("constants", "constraints", "completedInstances", "status", "hardwareConstraints"):
                body.pop(heavy, None)
        return body

    # -- submission -----------------------------------------------------------------------
    def submit(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "The task must be a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "The task name is required")
        if not body.get("profile") and not body.get("poolUuid"):
            raise ApiError(400, "A task needs a profile or a pool")
        count = body.get("instanceCount")
        if body.get("advancedRanges") or count != 1:
            raise ApiError(400, "This emulator runs tasks of exactly one instance (instanceCount: 1)")
        for key in ("constants", "constraints", "tags", "advancedResourceBuckets", "hardwareConstraints"):
            if not isinstance(body.get(key, []) or [], list):
                raise ApiError(400, f"'{key}' must be a list")
        constants = body.get("constants") or []
        if any(not isinstance(c, dict) or not isinstance(c.get("key"), str) for c in constants):
            raise ApiError(400, "Each constant must be {key, value}")
        tags = body.get("tags") or []
        if any(not isinstance(t, str) for t in tags):
            raise ApiError(400, "Tags must be strings")
        shortname = body.get("shortname")
        if shortname is not None:
            if not isinstance(shortname, str) or not SHORTNAME.match(shortname):
                raise ApiError(400, "The shortname must be DNS compliant (a-z, 0-9, '-', at most 63 characters)")
            if any(t["shortname"] == shortname for t in self.tasks.values()):
                raise ApiError(409, f"A task with the shortname '{shortname}' already exists")
        if len(self.tasks) >= self.account["max_task"]:
            raise ApiError(403, "Maximum number of tasks reached")
        for constraint in body.get("hardwareConstraints") or []:
            if not self._hardware_matches(constraint):
                raise ApiError(
                    402, f"No hardware matches the requested hardware constraint {constraint.get('discriminator')}"
                )
        if self.account["credits"] is not None and self.account["credits"] <= 0:
            raise ApiError(402, "Not enough credits")
        buckets = [b.get("bucketName") for b in body.get("advancedResourceBuckets") or []]
        if body.get("resultBucket"):
            buckets.append(body["resultBucket"])
        for bucket in buckets:
            try:
                self.s3.head_bucket(Bucket=bucket)
            except ClientError:
                raise ApiError(404, f"Bucket '{bucket}' does not exist") from None
        now = time.time()
        task_id = str(uuid.uuid4())
        task = {
            "uuid": task_id,
            "name": name,
            "shortname": shortname or task_id,
            "profile": body.get("profile"),
            "poolUuid": body.get("poolUuid"),
            "jobUuid": body.get("jobUuid"),
            "instanceCount": 1,
            "state": "Submitted",
            "previousState": None,
            "stateTransitionTime": iso(now),
            "previousStateTransitionTime": None,
            "creationDate": iso(now, fraction=False),
            "endDate": None,
            "tags": tags,
            "labels": body.get("labels") or {},
            "constants": constants,
            "constraints": body.get("constraints") or [],
            "hardwareConstraints": body.get("hardwareConstraints") or [],
            "advancedResourceBuckets": body.get("advancedResourceBuckets") or [],
            "resultBucket": body.get("resultBucket"),
            "resultsCount": 0,
            "errors": [],
            "completedInstances": [],
            "autoDeleteOnCompletion": bool(body.get("autoDeleteOnCompletion")),
            "completionTimeToLive": body.get("completionTimeToLive") or "00:00:00",
            "uploadResultsOnCancellation": body.get("uploadResultsOnCancellation"),
            "dependencies": body.get("dependencies") or {"dependsOn": []},
            "progress": 0.0,
            "executionTime": "00:00:00",
            "wallTime": "00:00:00",
            "snapshotInterval": 0,
            "_submitted": now,
            "_started": None,
            "_ended": None,
            "_pid": None,
            "_cursors": {},
        }
        for key in ("privileges", "retrySettings", "forcedNetworkRules"):
            if body.get(key) is not None:
                task[key] = body[key]
        self.tasks[task_id] = task
        self.save(task)
        return {"uuid": task_id}

    @staticmethod
    def _hardware_matches(constraint: Any) -> bool:
        if not isinstance(constraint, dict):
            raise ApiError(400, "A hardware constraint must be an object")
        kind = constraint.get("discriminator")
        if kind == "MinimumCoreHardwareConstraint":
            return int(constraint.get("coreCount") or 0) <= HARDWARE["cores"]
        if kind == "MinimumRamHardwareConstraint":
            return float(constraint.get("minimumMemoryMB") or 0) <= HARDWARE["memory_mb"]
        if kind == "GpuHardwareConstraint":
            return bool(HARDWARE["gpu"])
        if kind in (
            "MaximumCoreHardwareConstraint",
            "MaximumRamHardwareConstraint",
            "NoGpuHardwareConstraint",
            "NoSSDHardwareConstraint",
        ):
            return True
        raise ApiError(400, f"Unknown hardware constraint '{kind}'")

    # -- the life of a task (called by the ticker) -----------------------------------------
    def tick(self) -> None:
        now = time.time()
        for task in list(self.tasks.values()):
            state = task["state"]
            if state == "Submitted" and now - task["_submitted"] >= self.account["queue_seconds"]:
                self.set_state(task, "FullyDispatched")
                self._start(task)
            elif state == "FullyDispatched" and not task["_pid"]:  # a restart came between dispatch and start
                self._start(task)
            elif state == "FullyExecuting" and self._exit_code(task) is not None:
                self.set_state(task, "UploadingResults")
                self._finish(task, "Success" if self._exit_code(task) == 0 else "Failure")
            elif state == "PendingCancel":
                self._kill(task)
                if task.get("uploadResultsOnCancellation") and task["_started"]:
                    self._upload(task)
                self._instance_ended(task, "Cancelled")
                self.set_state(task, "Cancelled")
            elif (
                state in ENDED
                and task["autoDeleteOnCompletion"]
                and task["_ended"]
                and now - task["_ended"] >= ttl_seconds(task["completionTimeToLive"])
            ):
                self.delete(task)

    def _start(self, task: dict) -> None:
        work = self.folder(task) / "work"
        work.mkdir(parents=True, exist_ok=True)
        try:
            for bucket in task["advancedResourceBuckets"]:
                self._download(bucket, work)
        except ClientError as exc:
            task["errors"] = [{"code": "RESOURCES", "message": f"cannot read the resources: {exc}", "debug": ""}]
            self._instance_ended(task, "Failure")
            self.set_state(task, "Failure")
            return
        constants = {c["key"]: str(c.get("value") or "") for c in task["constants"]}
        argv = shlex.split(constants.get("DOCKER_CMD", ""))
        if not argv:
            task["errors"] = [
                {"code": "DOCKER_CMD", "message": "the profile needs the constant DOCKER_CMD", "debug": ""}
            ]
            self._instance_ended(task, "Failure")
            self.set_state(task, "Failure")
            return
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "INSTANCE_ID": "0",
            "QARNOT_TASK_UUID": task["uuid"],
            **{k: v for k, v in constants.items() if re.match(r"^\w+$", k)},
        }
        folder = self.folder(task)
        with open(folder / "stdout", "ab") as out, open(folder / "stderr", "ab") as err:
            process = subprocess.Popen(
                ["/bin/sh", "-c", TRAMPOLINE, "sh", str(folder), *argv],
                cwd=work,
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[task["uuid"]] = process
        self.account["runs"] += 1
        self.save_account()
        task.update(_pid=process.pid, _started=time.time())
        self.set_state(task, "FullyExecuting")

    def _download(self, bucket: dict, work: Path) -> None:
        name = bucket["bucketName"]
        prefix = ((bucket.get("filtering") or {}).get("prefixFiltering") or {}).get("prefix") or ""
        strip = ((bucket.get("resourcesTransformation") or {}).get("stripPrefix") or {}).get("prefix") or ""
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                rel = key[len(strip) :] if strip and key.startswith(strip) else key
                if not rel or rel.endswith("/") or ".." in rel.split("/"):
                    continue
                dest = work / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(name, key, str(dest))

    def _exit_code(self, task: dict) -> int | None:
        process = self.procs.get(task["uuid"])
        if process is not None:
            process.poll()  # reaps it
        exit_file = self.folder(task) / "exit"
        if exit_file.exists():
            return int(exit_file.read_text() or 1)
        if process is not None:
            return None if process.returncode is None else (process.returncode or 1)
        try:  # started by an earlier run of the emulator: alive as long as its pid is
            os.kill(task["_pid"], 0)
            return None
        except (ProcessLookupError, TypeError):
            return 1

    def _kill(self, task: dict) -> None:
        if task["_pid"]:
            try:
                os.killpg(task["_pid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        process = self.procs.pop(task["uuid"], None)
        if process is not None:
            process.wait()

    def _finish(self, task: dict, outcome: str) -> None:
        self.procs.pop(task["uuid"], None)
        self._upload(task)
        self._instance_ended(task, outcome)
        self.set_state(task, outcome)

    def _upload(self, task: dict) -> None:
        bucket = task["resultBucket"]
        if not bucket:
            return
        work = self.folder(task) / "work"
        count = 0
        for path in sorted(p for p in work.rglob("*") if p.is_file() and not p.is_symlink()):
            self.s3.upload_file(str(path), bucket, path.relative_to(work).as_posix())
            count += 1
        task["resultsCount"] = task["resultsCount"] + count

    def _instance_ended(self, task: dict, outcome: str) -> None:
        now = time.time()
        task["_ended"] = now
        wall = now - (task["_started"] or now)
        task["completedInstances"] = [
            {
                "instanceId": 0,
                "state": outcome,
                "wallTimeSec": wall,
                "execTimeSec": wall,
                "execTimeSecGHz": wall,
                "peakMemoryMB": 0,
                "averageGHz": 0.0,
                "results": [],
                "executionAttemptCount": 1,
            }
        ]
        task["progress"] = 100.0

    # -- actions --------------------------------------------------------------------------
    def abort(self, task: dict) -> None:
        if task["state"] not in RUNNING:
            raise ApiError(403, "Invalid operation on non running task")
        self.set_state(task, "PendingCancel")

    def delete(self, task: dict) -> None:
        self._kill(task)
        self.tasks.pop(task["uuid"], None)
        folder = self.folder(task)
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
        folder.rmdir()

    def output(self, task: dict, stream: str, fresh: bool, token: str) -> str:
        path = self.folder(task) / stream
        data = path.read_bytes() if path.exists() else b""
        if fresh:
            cursor = task["_cursors"].get(f"{stream}:{token}", 0)
            task["_cursors"][f"{stream}:{token}"] = len(data)
            self.save(task)
            data = data[cursor:]
        return data[-STDOUT_BUFFER:].decode("utf-8", errors="replace")

    def page(self, body: Any, summary: bool) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "The request must be {filter, token, maximumResults}")
        selected = [
            t
            for t in sorted(self.tasks.values(), key=lambda t: t["_submitted"])
            if body.get("filter") is None or self._matches(body["filter"], t)
        ]
        token = body.get("token")
        try:
            offset = int(base64.urlsafe_b64decode(token.encode()).decode()) if token else 0
        except ValueError:
            raise ApiError(400, "Invalid pagination token") from None
        size = body.get("maximumResults") or self.account["page_size"]
        if not isinstance(size, int) or size <= 0:
            raise ApiError(400, "maximumResults must be a positive integer")
        size = min(size, self.account["page_size"])
        chunk = selected[offset : offset + size]
        more = offset + size < len(selected)
        following = base64.urlsafe_b64encode(str(offset + size).encode()).decode() if more else None
        return {
            "data": [self.view(t, summary) for t in chunk],
            "token": token,
            "nextToken": following,
            "isTruncated": more,
        }

    def _matches(self, node: Any, task: dict) -> bool:
        if not isinstance(node, dict) or "operator" not in node:
            raise ApiError(400, "Invalid filter")
        op = node["operator"]
        if op in ("And", "Or"):
            results = [self._matches(child, task) for child in node.get("filters") or []]
            return all(results) if op == "And" else any(results)
        if node.get("field") not in FIELDS:
            raise ApiError(400, f"Unknown filter field '{node.get('field')}'")
        have = task.get(FIELDS[node["field"]])
        values = have if isinstance(have, list) else [have]
        want = node.get("value")
        tests = {
            "Equal": lambda: want in values,
            "NotEqual": lambda: want not in values,
            "In": lambda: any(v in (want or []) for v in values),
            "NotIn": lambda: not any(v in (want or []) for v in values),
            "Like": lambda: any(isinstance(v, str) and str(want).strip("%") in v for v in values),
        }
        if op not in tests:
            raise ApiError(400, f"Unknown filter operator '{op}'")
        return tests[op]()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    emulator: Emulator

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, text: bool = False, headers: dict | None = None) -> None:
        payload = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        if "application/json" not in (self.headers.get("Content-Type") or ""):
            raise ApiError(415, "Unsupported media type: send application/json")
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "The body is not valid JSON") from None

    def _handle(self) -> None:
        emu = self.emulator
        path = unquote(urlsplit(self.path).path)
        try:
            body = self._body()
            if path.startswith("/_emulator/"):
                self._send(200, self._control(path, body))
                return
            with emu.lock:
                emu.requests += 1
                fault = next(
                    (
                        f
                        for f in emu.account["faults"]
                        if f["method"] in (None, self.command) and re.fullmatch(f["path"], path)
                    ),
                    None,
                )
                if fault is not None:
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        emu.account["faults"].remove(fault)
                    emu.save_account()
            if fault is not None:
                extra = {"Retry-After": fault["retry_after"]} if fault.get("retry_after") else None
                self._send(fault["status"], {"message": fault["message"]}, headers=extra)
                return
            if self.headers.get("Authorization") != emu.token:
                raise ApiError(401, "Unauthorized: invalid or missing token")
            with emu.lock:
                emu.tick()
                status, answer, text = self._route(path, body)
            self._send(status, answer, text=text)
        except ApiError as exc:
            self._send(exc.status, {"message": str(exc)})

    def _route(self, path: str, body: Any) -> tuple[int, Any, bool]:
        emu, method = self.emulator, self.command
        parts = path.strip("/").split("/")
        if (method, path) == ("GET", "/settings"):
            return 200, {"storage": emu.s3_url}, False
        if (method, path) == ("GET", "/info"):
            return (
                200,
                {
                    "email": emu.email,
                    "maxBucket": 100,
                    "bucketCount": -1,
                    "taskCount": len(emu.tasks),
                    "maxTask": emu.account["max_task"],
                    "runningTaskCount": sum(t["state"] in RUNNING for t in emu.tasks.values()),
                    "maxRunningTask": 64,
                    "maxInstances": 64,
                    "maxPool": 10,
                    "poolCount": 0,
                    "projects": [],
                },
                False,
            )
        if (method, path) == ("GET", "/profiles"):
            return 200, ["docker-batch"], False
        if method == "GET" and parts[0] == "profiles" and len(parts) == 2:
            if parts[1] != "docker-batch":
                raise ApiError(404, f"Profile {parts[1]} not found")
            return (
                200,
                {
                    "name": "docker-batch",
                    "constants": [
                        {"name": "DOCKER_REPO", "value": "library/ubuntu"},
                        {"name": "DOCKER_TAG", "value": "latest"},
                        {"name": "DOCKER_CMD", "value": ""},
                    ],
                },
                False,
            )
        if (method, path) == ("POST", "/tasks"):
            if isinstance(body, list):
                return 200, [self._bulk_item(item) for item in body], False
            return 200, emu.submit(body), False
        if method == "POST" and path in ("/tasks/paginate", "/tasks/summaries/paginate"):
            return 200, emu.page(body, summary="summaries" in path), False
        if parts[0] != "tasks" or len(parts) < 2:
            raise ApiError(404, f"No route for {method} {path}")
        task = emu.find(parts[1])
        rest = parts[2:]
        if not rest and method == "GET":
            return 200, emu.view(task), False
        if not rest and method == "DELETE":
            emu.delete(task)
            return 200, {}, False
        if rest == ["abort"] and method == "POST":
            emu.abort(task)
            return 200, {}, False
        if rest and rest[0] in ("stdout", "stderr") and method in ("GET", "POST") and len(rest) <= 2:
            if len(rest) == 2 and rest[1] != "0":
                raise ApiError(404, f"Task {task['uuid']} has no instance {rest[1]}")
            return 200, emu.output(task, rest[0], method == "POST", self.headers.get("Authorization", "")), True
        raise ApiError(404, f"No route for {method} {path}")

    def _bulk_item(self, item: Any) -> dict:
        try:
            return {"statusCode": 200, "uuid": self.emulator.submit(item)["uuid"], "message": None}
        except ApiError as exc:
            return {"statusCode": exc.status, "uuid": None, "message": str(exc)}

    def _control(self, path: str, body: Any) -> Any:
        emu = self.emulator
        with emu.lock:
            if path == "/_emulator/faults":
                emu.account["faults"].append(
                    {
                        "method": body.get("method"),
                        "path": body.get("path", ".*"),
                        "status": body["status"],
                        "message": body.get("message", ""),
                        "times": body.get("times", 1),
                        "retry_after": body.get("retry_after"),
                    }
                )
            elif path == "/_emulator/account":
                emu.account.update(body or {})
            elif path == "/_emulator/reset":
                emu.account.update(faults=[], credits=None, max_task=1000, queue_seconds=0.0, page_size=50)
            emu.save_account()
            return {
                "runs": emu.account["runs"],
                "requests": emu.requests,
                "tasks": len(emu.tasks),
                "shortnames": sorted(t["shortname"] for t in emu.tasks.values()),
            }

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle


def serve(args: argparse.Namespace) -> None:
    emulator = Emulator(Path(args.state), args.s3, args.email, args.token)
    Handler.emulator = emulator
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def ticker() -> None:
        while not stop.wait(0.05):
            with emulator.lock:
                emulator.tick()

    threading.Thread(target=ticker, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"qarnot emulator on http://127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.shutdown()


# -- the test side ------------------------------------------------------------------------------
class QarnotEmulator:
    """The emulator as a child process on a fixed port: start, stop, kill -9 and start again keep its state."""

    def __init__(self, state: Path, s3: Any, port: int | None = None):
        from tests.support.s3server import free_port

        self.state, self.s3 = state, s3
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.email, self.token = s3.access_key, s3.secret_key
        self.process: subprocess.Popen | None = None

    def start(self) -> QarnotEmulator:
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        log = open(self.state.parent / f"{self.state.name}.log", "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.qarnot_service",
                "serve",
                "--state",
                str(self.state),
                "--port",
                str(self.port),
                "--s3",
                self.s3.endpoint,
                "--email",
                self.email,
                "--token",
                self.token,
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Qarnot emulator exited with {self.process.returncode}")
            try:
                requests.get(f"{self.url}/settings", headers={"Authorization": self.token}, timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the Qarnot emulator did not answer within 20s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a handler still serving a kept-alive connection: down is down
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def control(self, what: str, body: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/_emulator/{what}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def fail_next(
        self,
        status: int,
        message: str = "",
        *,
        method: str | None = None,
        path: str = ".*",
        times: int = 1,
        retry_after: str | None = None,
    ) -> None:
        self.control(
            "faults",
            {
                "status": status,
                "message": message,
                "method": method,
                "path": path,
                "times": times,
                "retry_after": retry_after,
            },
        )

    def account(self, **settings: Any) -> dict:
        return self.control("account", settings)

    def stats(self) -> dict:
        return self.control("stats")

    def reset(self) -> None:
        self.control("reset")

    def backend_section(self, **extra: Any) -> dict:
        return {"type": "qarnot", "cluster_url": self.url, "token": self.token, "poll_page_size": 100, **extra}


@pytest.fixture(scope="session")
def qarnot_service(seaweedfs, tmp_path_factory) -> Iterator[QarnotEmulator]:
    """One Qarnot emulator per test session, its S3 side on the session's SeaweedFS."""
    emulator = QarnotEmulator(tmp_path_factory.mktemp("qarnot") / "state", seaweedfs).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def qarnot(qarnot_service) -> Iterator[QarnotEmulator]:
    """The session's emulator with no faults and an account back at its defaults."""
    if qarnot_service.process is None or qarnot_service.process.poll() is not None:
        qarnot_service.start()
    qarnot_service.reset()
    yield qarnot_service
    qarnot_service.reset()


def main() -> None:
    parser = argparse.ArgumentParser(prog="qarnot_service")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve")
    run.add_argument("--state", required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--s3", required=True)
    run.add_argument("--email", required=True)
    run.add_argument("--token", required=True)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
