"""A CHIME/FRB Workflow Buckets service on loopback, with a site runner, as a test double.

Written from ``shared/protocols/chime_frb.md`` (part 2) and the official client ``workflow-core``
(``workflow/http/buckets.py``, ``workflow/lifecycle/attempt.py``, ``execute.py``, ``archive/posix.py``), never
from syncd's backend. What it reproduces:

- the routes: ``POST /work?return_ids=...`` (a JSON array of Work payloads; the query flag may come twice), ``POST
  /work/withdraw`` (a Mongo-style query; ``{}`` when nothing is queued), ``PUT /work`` (full payloads with their
  ``id``), ``DELETE /work?ids=...``, ``POST /view`` (query, projection, skip, limit), ``GET /status``,
  ``/status/details/{pipeline}``, ``/status/pipelines``, ``GET /audit/failed|expired|stale/{days}``, ``HEAD|GET
  /version`` (unauthenticated, the client's probe);
- the ``x-access-token`` header on every other route (401 without it, 403 with a wrong one); FastAPI-style
  ``{"detail": ...}`` errors: 422 for a malformed body or a Work that breaks the payload's rules, 404 for an
  unknown id on update;
- ids as BSON ObjectId hex strings; the lifecycle ``queued`` → withdraw (``running``, ``start``, ``attempt`` + 1)
  → update (``success``/``failure``); the audit re-queues failures while ``attempt < retries`` and fails works
  running past their ``timeout``;
- a site runner (``runners`` threads) that withdraws from its pipelines as ``workflow run`` does, over HTTP with
  the token, and executes a Work the way ``execute.command`` does: a one-element command through a shell, else
  the argument list, stdout and stderr captured, ``work.timeout`` enforced, a non-zero exit a ``failure`` with no
  results, success ``{"args", "stdout", "stderr", "returncode"}`` as results when the Work brought none; a static
  ``function`` overload (a callable given to the emulator, called with the parameters) returns ``results`` or
  ``(results, products, plots)``; products and plots are archived with ``copy`` into ``archive/workflow/<date>/
  <pipeline>/<id>/`` and their paths rewritten; then the Work is ``PUT`` back.

State is on disk (``works/`` is the collection): a new instance on the same folder carries on. Test knobs, none on
the wire: ``hold()`` (the runner takes nothing), ``stop_frontend()``/``start_frontend()``, ``audit()``, the
tokens. The one deliberate difference: a timed-out command's whole process group is killed, not only its first
process, so tests leave no orphans.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.support.emulator_server import CuttableServer, kill_group

STATUSES = ("created", "queued", "running", "success", "failure")
PIPELINE = re.compile(r"^[A-Za-z0-9-]{1,128}$")
DEFAULTS: dict[str, Any] = {
    "function": None,
    "parameters": None,
    "command": None,
    "results": None,
    "products": None,
    "plots": None,
    "tags": None,
    "event": None,
    "id": None,
    "creation": None,
    "start": None,
    "stop": None,
    "attempt": 0,
    "status": "created",
    "timeout": 3600,
    "retries": 2,
    "priority": 3,
    "config": {},
    "notify": {},
}


class _Refused(Exception):
    def __init__(self, status: int, detail: Any):
        super().__init__(detail)
        self.status, self.detail = status, detail


def check_work(work: Any, *, need_id: bool = False) -> dict:
    """A Work payload as the server's model takes it; 422 with what is wrong otherwise."""
    if not isinstance(work, dict):
        raise _Refused(422, [{"msg": "a Work must be an object", "input": work}])
    problems = []
    for key in ("pipeline", "site", "user"):
        if not isinstance(work.get(key), str) or not work[key]:
            problems.append({"loc": ["body", key], "msg": "field required"})
    if isinstance(work.get("pipeline"), str) and not PIPELINE.match(work["pipeline"]):
        problems.append({"loc": ["body", "pipeline"], "msg": "letters, digits and hyphens, 1-128"})
    if work.get("function") and work.get("command"):
        problems.append({"loc": ["body"], "msg": "Only either function or command can be provided."})
    command = work.get("command")
    if command is not None and not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
        problems.append({"loc": ["body", "command"], "msg": "a list of strings"})
    tags = work.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        problems.append({"loc": ["body", "tags"], "msg": "a list of strings"})
    for key, low, high in (("timeout", 1, 259200), ("retries", 0, 5), ("priority", 1, 5), ("attempt", 0, 10**6)):
        value = work.get(key, DEFAULTS[key])
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            problems.append({"loc": ["body", key], "msg": f"an integer in {low}..{high}"})
    if work.get("status", "created") not in STATUSES:
        problems.append({"loc": ["body", "status"], "msg": f"one of {', '.join(STATUSES)}"})
    if need_id and not isinstance(work.get("id"), str):
        problems.append({"loc": ["body", "id"], "msg": "field required"})
    if problems:
        raise _Refused(422, problems)
    return {**DEFAULTS, **work}


def _get(doc: dict, dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(doc: dict, query: dict) -> bool:
    """The part of Mongo's query language the clients use: equality (also against an array's items), $in, $nin,
    $ne, $exists, $gt/$gte/$lt/$lte."""
    for key, cond in query.items():
        value = _get(doc, key)
        values = value if isinstance(value, list) else [value]
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for op, arg in cond.items():
                if op == "$in" and not any(v in arg for v in values):
                    return False
                if op == "$nin" and any(v in arg for v in values):
                    return False
                if op == "$ne" and arg in values:
                    return False
                if op == "$exists" and (value is not None) != bool(arg):
                    return False
                if op in ("$gt", "$gte", "$lt", "$lte"):
                    if not isinstance(value, (int, float)):
                        return False
                    ok = {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]
                    if not ok:
                        return False
                if op not in ("$in", "$nin", "$ne", "$exists", "$gt", "$gte", "$lt", "$lte"):
                    raise _Refused(422, f"unknown operator {op}")
        elif cond not in values and cond != value:
            return False
    return True


def project(doc: dict, projection: dict) -> dict:
    wanted = {k for k, v in projection.items() if v and k != "_id"}
    dropped = {k for k, v in projection.items() if not v and k != "_id"}
    if wanted:
        return {k: v for k, v in doc.items() if k in wanted}
    return {k: v for k, v in doc.items() if k not in dropped}


class ChimeWorkflowService:
    def __init__(
        self,
        state_dir: Path,
        *,
        pipelines: tuple[str, ...] = ("syncd-jobs",),
        site: str = "local",
        runners: int = 3,
        function: Callable[..., Any] | None = None,
        audit_every: float = 1.0,
        port: int = 0,
    ):
        self.state_dir = state_dir
        self.works_dir = state_dir / "works"
        self.works_dir.mkdir(parents=True, exist_ok=True)
        self.archive = state_dir / "archive"
        self.archive.mkdir(exist_ok=True)
        tokens = state_dir / "tokens.json"
        if not tokens.exists():
            tokens.write_text(json.dumps([secrets.token_hex(16)]))
        self.tokens: list[str] = json.loads(tokens.read_text())
        self.pipelines, self.site, self.function = pipelines, site, function
        self.runner_count, self.audit_every, self.port = runners, audit_every, port
        self.lock = threading.RLock()
        self.calls: list[dict] = []
        self.runner_errors: list[str] = []
        self.held = threading.Event()
        self._taking = threading.Lock()  # held by a runner from its look at ``held`` to the withdraw's answer
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, subprocess.Popen] = {}
        self.server: CuttableServer | None = None
        self._process, self._counter = secrets.token_hex(5), secrets.randbelow(1 << 23)

    # -- process ---------------------------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return self.tokens[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChimeWorkflowService:
        self.start_frontend()
        for n in range(self.runner_count):
            self._spawn(self._runner, f"runner-{n}")
        self._spawn(self._auditor, "audit")
        return self

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=f"chime-workflow-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def start_frontend(self) -> None:
        service = self

        class Handler(_Handler):
            buckets = service

        self.server = CuttableServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop_frontend(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.cut_connections()
            self.server.server_close()
            self.server = None

    def stop(self) -> None:
        self._stopping.set()
        self.stop_frontend()
        with self.lock:
            running = list(self._running.values())
        for process in running:
            kill_group(process)
        for thread in self._threads:
            thread.join(timeout=10)

    def hold(self, held: bool = True) -> None:
        """The runner takes no work while held (works stay queued). Returns once no runner is between its look at
        the flag and the answer to its withdraw, so a Work deposited after this call stays queued."""
        if held:
            self.held.set()
            with self._taking:
                pass
        else:
            self.held.clear()

    # -- the collection --------------------------------------------------------------------------------------
    def _path(self, work_id: str) -> Path:
        return self.works_dir / f"{work_id}.json"

    def get(self, work_id: str) -> dict | None:
        try:
            return json.loads(self._path(work_id).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _put(self, doc: dict) -> None:
        tmp = self.works_dir / f".{doc['id']}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self._path(doc["id"]))

    def works(self) -> list[dict]:
        found = []
        for path in sorted(self.works_dir.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (FileNotFoundError, ValueError):
                continue
        return sorted(found, key=lambda d: (d.get("creation") or 0, d["id"]))

    def tagged(self, tag: str) -> list[dict]:
        return [d for d in self.works() if tag in (d.get("tags") or [])]

    def _new_id(self) -> str:
        """An ObjectId: 4 bytes of time, 5 random bytes of this process, a 3-byte counter (so ids sort by age)."""
        self._counter = (self._counter + 1) % (1 << 24)
        return f"{int(time.time()):08x}{self._process}{self._counter:06x}"

    def deposit(self, works: Any, return_ids: bool) -> Any:
        if not isinstance(works, list):
            raise _Refused(422, [{"loc": ["body"], "msg": "a list of Works"}])
        checked = [check_work(w) for w in works]
        ids = []
        with self.lock:
            for doc in checked:
                doc["id"] = self._new_id()
                doc["status"] = "queued"
                doc["creation"] = doc.get("creation") or time.time()
                self._put(doc)
                ids.append(doc["id"])
        return ids if return_ids else True

    def withdraw(self, query: Any) -> dict:
        if not isinstance(query, dict) or "pipeline" not in query:
            raise _Refused(422, [{"loc": ["body", "pipeline"], "msg": "field required"}])
        with self.lock:
            queued = [d for d in self.works() if d["status"] == "queued" and matches(d, query)]
            if not queued:
                return {}
            doc = sorted(queued, key=lambda d: (-d["priority"], d["creation"]))[0]
            doc.update(status="running", start=time.time(), attempt=doc["attempt"] + 1)
            self._put(doc)
            return doc

    def update(self, works: Any) -> bool:
        if not isinstance(works, list):
            raise _Refused(422, [{"loc": ["body"], "msg": "a list of Works"}])
        checked = [check_work(w, need_id=True) for w in works]
        with self.lock:
            for doc in checked:
                if self.get(doc["id"]) is None:
                    raise _Refused(404, f"work {doc['id']} not found")
            for doc in checked:
                self._put(doc)
        return True

    def delete(self, ids: list[str]) -> bool:
        deleted = False
        with self.lock:
            for work_id in ids:
                if re.fullmatch(r"[0-9a-f]{24}", work_id) and self._path(work_id).exists():
                    self._path(work_id).unlink()
                    deleted = True
        return deleted

    def view(self, body: Any) -> list[dict]:
        if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
            raise _Refused(422, [{"loc": ["body", "query"], "msg": "field required"}])
        projection, skip, limit = body.get("projection") or {}, body.get("skip", 0), body.get("limit", 100)
        if not isinstance(skip, int) or skip < 0 or not (limit is None or (isinstance(limit, int) and limit >= 0)):
            raise _Refused(422, [{"loc": ["body", "limit"], "msg": "non-negative integers"}])
        found = [project(d, projection) for d in self.works() if matches(d, body["query"])]
        found = found[skip:]
        return found[:limit] if limit else found

    def status(self, pipeline: str | None = None) -> Any:
        works = self.works()
        if pipeline is not None:
            return {s: sum(1 for d in works if d["pipeline"] == pipeline and d["status"] == s) for s in STATUSES}
        return {"total": len(works), **{s: sum(1 for d in works if d["status"] == s) for s in STATUSES}}

    def audit(self, which: str = "all") -> dict:
        """Re-queue failures with retries left; fail works running past their timeout; count stale ones."""
        now, found = time.time(), {"failed": 0, "expired": 0, "stale": 0}
        with self.lock:
            for doc in self.works():
                if which in ("all", "failed") and doc["status"] == "failure" and doc["attempt"] < doc["retries"]:
                    doc["status"] = "queued"
                    self._put(doc)
                    found["failed"] += 1
                elif (
                    which in ("all", "expired")
                    and doc["status"] == "running"
                    and doc.get("start")
                    and now - doc["start"] > doc["timeout"] + 5
                ):
                    doc.update(status="failure", stop=now)
                    self._put(doc)
                    found["expired"] += 1
                elif which == "stale" and now - (doc.get("creation") or now) > 7 * 86400:
                    found["stale"] += 1
        return found

    def _auditor(self) -> None:
        while not self._stopping.wait(self.audit_every):
            self.audit("failed")
            self.audit("expired")

    # -- the site runner -------------------------------------------------------------------------------------
    def _runner(self) -> None:
        """``workflow run``: withdraw, execute, archive, update, over HTTP like a runner on another host. Like the
        real runner's loop, an error in one attempt is recorded and the loop goes on."""
        session = requests.Session()
        session.headers.update({"x-access-token": self.token})
        while not self._stopping.is_set():
            try:
                self._attempt(session)
            except Exception as exc:  # noqa: BLE001 - recorded for the tests to see
                with self.lock:
                    self.runner_errors.append(repr(exc))
                self._stopping.wait(0.2)

    def _attempt(self, session: requests.Session) -> None:
        query = {"pipeline": {"$in": list(self.pipelines)}, "site": self.site}
        if self._stopping.is_set():
            return
        with self._taking:
            if self.held.is_set():
                work = None
            else:
                try:
                    answer = session.post(f"{self.url}/work/withdraw", json=query, timeout=30)
                    answer.raise_for_status()
                    work = answer.json()
                except (requests.RequestException, ValueError):
                    work = False  # the front end is down: try again, as the runner's loop does
        if work is False:
            self._stopping.wait(0.2)
            return
        if not work:
            self._stopping.wait(0.05)
            return
        work = self._execute(work)
        self._archive(work)
        while not self._stopping.is_set():
            try:
                answer = session.put(f"{self.url}/work", json=[work], timeout=5)
                if 400 <= answer.status_code < 500:
                    break  # e.g. deleted while it ran (404): the update has nowhere to go
                answer.raise_for_status()
                break
            except requests.RequestException:
                self._stopping.wait(0.2)

    def _execute(self, work: dict) -> dict:
        start = time.time()
        try:
            if self.function is not None:
                outcome = self.function(**(work.get("parameters") or {}))
                results, products, plots = outcome if isinstance(outcome, tuple) else (outcome, None, None)
                work["results"] = {**(work.get("results") or {}), **(results or {})} if results else work["results"]
                if products:
                    work["products"] = (work.get("products") or []) + list(products)
                if plots:
                    work["plots"] = (work.get("plots") or []) + list(plots)
                work["status"] = "success"
            else:
                work["status"] = self._command(work)
        except Exception as exc:  # noqa: BLE001 - the runner records any error in the Work
            work.update(status="failure", results={"error": str(exc)}, products=None, plots=None)
        finally:
            work["stop"] = max(time.time(), start)
        return work

    def _command(self, work: dict) -> str:
        command = work.get("command")
        if not isinstance(command, list) or not command or shutil.which(command[0]) is None:
            raise RuntimeError(f"command not found: {command}")
        shell = len(command) == 1
        process = subprocess.Popen(
            command[0] if shell else command,
            shell=shell,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        with self.lock:
            self._running[work["id"]] = process
        try:
            out, err = process.communicate(timeout=work["timeout"])
        except subprocess.TimeoutExpired:
            kill_group(process)
            return "failure"
        finally:
            with self.lock:
                self._running.pop(work["id"], None)
        if process.returncode != 0:
            return "failure"
        if not (work.get("results") or work.get("products") or work.get("plots")):
            work["results"] = {
                "args": command[0] if shell else command,
                "stdout": out.decode("utf-8").splitlines(),
                "stderr": err.decode("utf-8").splitlines(),
                "returncode": process.returncode,
            }
        return "success"

    def _archive(self, work: dict) -> None:
        """``config.archive.products``/``plots`` ``copy``: into the archive, the paths rewritten."""
        date = datetime.fromtimestamp(work.get("creation") or time.time()).strftime("%Y%m%d")
        target = self.archive / "workflow" / date / work["pipeline"] / work["id"]
        archive = (work.get("config") or {}).get("archive") or {}
        for kind in ("products", "plots"):
            if archive.get(kind, "copy") != "copy" or not work.get(kind):
                continue
            target.mkdir(parents=True, exist_ok=True)
            for n, item in enumerate(work[kind]):
                if os.path.isfile(item):
                    shutil.copy(item, target)
                    work[kind][n] = str(target / item.split("/")[-1])


def _flag(values: list[str]) -> bool:
    return bool(values) and values[-1].lower() in ("true", "1")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    buckets: ChimeWorkflowService

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, data: Any) -> None:
        body = b"" if data is None else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path.rstrip("/") or "/", parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": path, "query": query, "token": "x-access-token" in self.headers}
        try:
            if path == "/version" and self.command in ("GET", "HEAD"):
                record["status"] = 200
                self._answer(200, {"version": "emulated"})
                return
            token = self.headers.get("x-access-token")
            if token is None:
                raise _Refused(401, "x-access-token missing")
            if not any(secrets.compare_digest(token, t) for t in self.buckets.tokens):
                raise _Refused(403, "invalid token")
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise _Refused(422, [{"loc": ["body"], "msg": "JSON decode error"}]) from None
            record["body"] = body
            data = self._route(self.command, path, query, body)
            record["status"] = 200
            self._answer(200, data)
        except _Refused as exc:
            record["status"] = exc.status
            self._answer(exc.status, {"detail": exc.detail})
        except Exception as exc:  # noqa: BLE001 - an unhandled exception: a plain 500
            record["status"] = 500
            self._answer(500, {"detail": f"Internal Server Error: {exc}"})
        finally:
            with self.buckets.lock:
                self.buckets.calls.append(record)

    def _route(self, method: str, path: str, query: dict, body: Any) -> Any:
        b = self.buckets
        if path == "/work" and method == "POST":
            return b.deposit(body, _flag(query.get("return_ids", [])))
        if path == "/work" and method == "PUT":
            return b.update(body)
        if path == "/work" and method == "DELETE":
            return b.delete(query.get("ids", []))
        if path == "/work/withdraw" and method == "POST":
            return b.withdraw(body)
        if path == "/view" and method == "POST":
            return b.view(body)
        if path == "/status" and method == "GET":
            return b.status()
        if path == "/status/pipelines" and method == "GET":
            return sorted({d["pipeline"] for d in b.works()})
        if (m := re.fullmatch(r"/status/details/([^/]+)", path)) and method == "GET":
            return b.status(m.group(1))
        if (m := re.fullmatch(r"/audit/(failed|expired|stale)(?:/[0-9.]+)?", path)) and method == "GET":
            return b.audit(m.group(1))
        known = {"/work", "/work/withdraw", "/view", "/status", "/status/pipelines"}
        raise _Refused(405 if path in known else 404, "Method Not Allowed" if path in known else "Not Found")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


@pytest.fixture(scope="session")
def chime_workflow_service(tmp_path_factory) -> Iterator[ChimeWorkflowService]:
    """One Workflow Buckets service per test session, its runner taking the ``syncd-jobs`` bucket at site
    ``local``."""
    service = ChimeWorkflowService(tmp_path_factory.mktemp("chime-workflow")).start()
    yield service
    service.stop()
