"""CHIME/FRB's frb-master swarm API on loopback, with its auth routes and a cluster that runs jobs as local processes.

Written from ``shared/protocols/chime_frb.md`` (section 1) and the official client ``chime-frb-api`` (its
``core/core.py``, ``modules/swarm.py`` and its own integration tests), never from syncd's backend. What it
reproduces:

- ``GET /version`` without authentication (the client probes it before anything else);
- the raw JWT in the ``authorization`` header (no "Bearer"); ``GET /auth/verify`` answers ``{"valid": bool}``;
  ``POST /auth/refresh`` takes ``{"refresh_token"}`` and answers ``{"access_token"}`` (a refused refresh token is a
  401); ``POST /auth`` takes a user name and password. Access tokens are HS256 JWTs carrying ``exp``, so a client
  can read when they expire; an API call with a missing, forged or expired token is a 401;
- ``POST /v1/swarm/spawn-job`` with the client's JSON body (every key checked for its type; a name Docker refuses,
  a reservation above its limit or a name in use are refused), answering the new service's ``{"ID": ...}``;
- ``GET /v1/swarm/job-status/<regex>`` and ``prune-job/<regex>``: every job whose name the (URL-decoded) argument
  matches, searched anywhere in the name (so an unanchored name also finds the jobs whose names it prefixes);
  ``kill-job`` and ``logs`` take one exact name; ``jobs`` lists every name. Side-effecting GETs, as on the real API;
- Docker Swarm's task states, lowercase: ``pending`` at spawn, ``preparing``, ``starting``, ``running``, then
  ``complete`` (or ``completed``: the spelling is a knob, the client's code uses both) or ``failed``; ``rejected``
  for an image the nodes cannot pull; a killed job disappears (``kill-job`` removes the service);
  ``prune-job`` removes only jobs that ended well;
- each job is a local process: ``command + arguments`` run with the spawn's ``environment``, in a folder of its own
  (the container's), output and errors merged into one log (``logs`` shows it, as ``docker service logs`` does).
  The site storage that ``mount_archiver`` mounts is this host's own filesystem: a shared work folder is seen by
  jobs and by the test at the same path;
- a request line longer than 8 KiB is refused with 414, as the usual front ends do.

State is on disk (``services/`` the swarm's services, ``identity.json`` users and tokens): a new instance on the same
folder carries on; a job that was running when the cluster stopped is ``orphaned``. Test knobs, none on the wire:
``hold()`` (no node takes a job: they stay ``pending``), ``stop_frontend()``/``start_frontend()`` (the API down
while jobs run on), ``success_word``, ``missing_images``, ``token_life``, ``revoke()`` and ``add_user()``.
A killed job's whole process group is stopped (TERM, then KILL after a short grace, as Docker does).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.support.emulator_server import CuttableServer

VERSION = "2024.01.1-emulator"
MAX_REQUEST_LINE = 8190
ACTIVE = ("new", "pending", "assigned", "accepted", "preparing", "starting", "running")
#: Docker refuses a service name that is not a DNS-like label of at most 63 characters
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")
SPAWN_FIELDS: dict[str, tuple[type, ...]] = {
    "image_name": (str,),
    "command": (list,),
    "arguments": (list,),
    "job_name": (str,),
    "mount_archiver": (bool,),
    "swarm_network": (bool,),
    "job_mem_limit": (int,),
    "job_mem_reservation": (int,),
    "job_cpu_limit": (int, float),
    "job_cpu_reservation": (int, float),
    "environment": (dict,),
}
SPAWN_DEFAULTS = {
    "mount_archiver": True,
    "swarm_network": True,
    "job_mem_limit": 4294967296,
    "job_mem_reservation": 268435456,
    "job_cpu_limit": 1,
    "job_cpu_reservation": 1,
    "environment": {},
}
STOP_GRACE = 0.5  # seconds between TERM and KILL of a killed job


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_jwt(secret: str, claims: dict) -> str:
    """An HS256 JSON Web Token."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def read_jwt(secret: str, token: str) -> dict | None:
    """The claims of a token this server signed, None if it is not one (expiry is not checked here)."""
    try:
        head, body, mac = token.split(".")
        good = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(good, _unb64(mac)):
            return None
        claims = json.loads(_unb64(body))
    except (ValueError, TypeError):
        return None
    return claims if isinstance(claims, dict) else None


class ChimeSwarmService:
    """frb-master on loopback: ``url`` is its base (``/version``, ``/auth/...``, ``/v1/swarm/...``)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        token_life: float = 3600.0,
        success_word: str = "complete",
        nodes: int = 4,
        port: int = 0,
    ):
        self.state_dir = state_dir
        self.services = state_dir / "services"
        self.logs_dir = state_dir / "logs"
        self.containers = state_dir / "containers"
        for folder in (self.services, self.logs_dir, self.containers):
            folder.mkdir(parents=True, exist_ok=True)
        self.token_life = token_life
        self.success_word = success_word
        self.missing_images: set[str] = set()
        self._identity_path = state_dir / "identity.json"
        self._lock = threading.RLock()
        if not self._identity_path.exists():
            self._save_identity({"secret": secrets.token_hex(32), "users": {}, "refresh": {}})
        self.calls: list[dict] = []  # every request answered: method, path, status, whether a token came with it
        self._port = port
        self._server: CuttableServer | None = None
        self._stop = threading.Event()
        self._held = threading.Event()
        self._processes: dict[str, subprocess.Popen] = {}
        self._nodes = [threading.Thread(target=self._node, daemon=True, name=f"swarm-node-{n}") for n in range(nodes)]
        for record in self._records():
            if record["state"] in ACTIVE and record["state"] != "pending":
                self._save({**record, "state": "orphaned", "message": "the node went away"})

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> ChimeSwarmService:
        self.start_frontend()
        for node in self._nodes:
            node.start()
        return self

    def start_frontend(self) -> None:
        service = self

        class Handler(_Handler):
            swarm = service

        self._server = CuttableServer(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="frb-master").start()

    def stop_frontend(self) -> None:
        """The API goes away (kept-alive connections are cut, new ones refused); jobs run on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.cut_connections()
            self._server = None

    def stop(self) -> None:
        self.stop_frontend()
        self._stop.set()
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            _stop_group(process, 0)
        for node in self._nodes:
            if node.is_alive():
                node.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def hold(self, held: bool = True) -> None:
        """While held, no node takes a job (new jobs stay ``pending``)."""
        if held:
            self._held.set()
        else:
            self._held.clear()

    # -- users and tokens -------------------------------------------------------------------------------------
    def _load_identity(self) -> dict:
        return json.loads(self._identity_path.read_text())

    def _save_identity(self, data: dict) -> None:
        tmp = self._identity_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._identity_path)

    def add_user(self, name: str | None = None, password: str | None = None) -> dict:
        """A user with fresh tokens: ``{user, password, access_token, refresh_token}``."""
        name = name or f"user-{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(12)
        with self._lock:
            data = self._load_identity()
            data["users"][name] = {"password": password}
            self._save_identity(data)
        return {"user": name, "password": password, **self._tokens(name)}

    def access_token(self, user: str, life: float | None = None) -> str:
        """A new access token of ``user`` that expires in ``life`` seconds (default ``token_life``)."""
        secret = self._load_identity()["secret"]
        now = time.time()
        life = self.token_life if life is None else life
        return make_jwt(
            secret, {"user_id": user, "iat": int(now), "exp": now + life, "type": "access", "jti": secrets.token_hex(6)}
        )

    def _tokens(self, user: str) -> dict:
        refresh = secrets.token_urlsafe(32)
        with self._lock:
            data = self._load_identity()
            data["refresh"][refresh] = user
            self._save_identity(data)
        return {"access_token": self.access_token(user), "refresh_token": refresh}

    def revoke(self, refresh_token: str) -> None:
        """A refresh token stops working (its session was logged out)."""
        with self._lock:
            data = self._load_identity()
            data["refresh"].pop(refresh_token, None)
            self._save_identity(data)

    def user_of(self, token: str | None) -> str | None:
        """The user of a valid, unexpired access token."""
        claims = read_jwt(self._load_identity()["secret"], token or "")
        if claims is None or claims.get("type") != "access" or float(claims.get("exp", 0)) < time.time():
            return None
        return str(claims.get("user_id"))

    # -- what tests look at ---------------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.services / f"{name}.json"

    def _records(self) -> list[dict]:
        found = []
        for path in sorted(self.services.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (FileNotFoundError, ValueError):
                continue
        return found

    def record(self, name: str) -> dict | None:
        """The service named ``name``, None if there is none (never spawned, or killed)."""
        if not SERVICE_NAME.match(name):
            return None
        try:
            return json.loads(self._path(name).read_text())
        except FileNotFoundError:
            return None

    def _save(self, record: dict) -> None:
        with self._lock:
            tmp = self.services / f".{record['name']}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self._path(record["name"]))

    def _update(self, name: str, **changes) -> dict | None:
        """Change a service that still exists (a kill may have removed it meanwhile)."""
        with self._lock:
            record = self.record(name)
            if record is None:
                return None
            record.update(changes)
            self._save(record)
            return record

    def count(self, path_prefix: str) -> int:
        with self._lock:
            return sum(1 for c in self.calls if c["path"].startswith(path_prefix))

    def wait_for(self, name: str, states: tuple[str, ...], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.record(name)
            if record is not None and record["state"] in states:
                return record
            time.sleep(0.02)
        raise AssertionError(f"job {name} is {self.record(name)} after {timeout}s")

    # -- the routes ----------------------------------------------------------------------------------------------
    def spawn(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object")
        payload = {**SPAWN_DEFAULTS, **body}
        for key, types in SPAWN_FIELDS.items():
            if key not in payload:
                raise _Refused(400, f"missing field: {key}")
            value = payload[key]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise _Refused(400, f"{key}: wrong type {type(value).__name__}")
        unknown = sorted(set(payload) - set(SPAWN_FIELDS))
        if unknown:
            raise _Refused(400, f"unknown fields: {', '.join(unknown)}")
        if not all(isinstance(a, str) for a in payload["command"] + payload["arguments"]):
            raise _Refused(400, "command and arguments are lists of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in payload["environment"].items()):
            raise _Refused(400, "environment maps strings to strings")
        if not payload["image_name"] or not payload["command"] + payload["arguments"]:
            raise _Refused(400, "an image and a command are needed")
        name = payload["job_name"]
        if not SERVICE_NAME.match(name):
            raise _Refused(500, f"docker.errors.APIError: 400 Client Error: invalid name {name!r}")
        if payload["job_mem_reservation"] > payload["job_mem_limit"] or payload["job_mem_limit"] <= 0:
            raise _Refused(500, "docker.errors.APIError: memory reservation must be below its limit")
        if payload["job_cpu_reservation"] > payload["job_cpu_limit"] or payload["job_cpu_limit"] <= 0:
            raise _Refused(500, "docker.errors.APIError: cpu reservation must be below its limit")
        service_id = secrets.token_hex(13)[:25]
        with self._lock:
            if self._path(name).exists():
                raise _Refused(500, f"docker.errors.APIError: 409 Client Error: name conflicts: {name}")
            self._save({"name": name, "ID": service_id, "state": "pending", "spawned": time.time(), "spec": payload})
        return {"ID": service_id}

    def _matching(self, pattern: str) -> list[dict]:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise _Refused(400, f"not a regular expression: {exc}") from None
        return [r for r in self._records() if regex.search(r["name"])]

    def status(self, pattern: str) -> dict:
        return {r["name"]: r["state"] for r in self._matching(pattern)}

    def jobs(self) -> list:
        return [r["name"] for r in self._records()]

    def logs(self, name: str) -> dict:
        record = self.record(name)
        if record is None:
            raise _Refused(404, f"no such job: {name}")
        try:
            text = (self.logs_dir / f"{record['ID']}.log").read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return {name: text}

    def kill(self, name: str) -> dict:
        with self._lock:
            record = self.record(name)
            if record is None:
                return {name: False}
            self._path(name).unlink()
            process = self._processes.pop(name, None)
        if process is not None:
            _stop_group(process, STOP_GRACE)
        return {name: True}

    def prune(self, pattern: str) -> dict:
        pruned = {}
        for record in self._matching(pattern):
            if record["state"] in ("complete", "completed"):
                with self._lock:
                    self._path(record["name"]).unlink(missing_ok=True)
                pruned[record["name"]] = True
        return pruned

    def refresh(self, body: object) -> dict:
        token = body.get("refresh_token") if isinstance(body, dict) else None
        user = self._load_identity()["refresh"].get(token) if isinstance(token, str) else None
        if user is None:
            raise _Refused(401, "invalid refresh token")
        return {"access_token": self.access_token(user)}

    def login(self, body: object) -> dict:
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object")
        user = self._load_identity()["users"].get(body.get("username"))
        if user is None or not hmac.compare_digest(str(user["password"]), str(body.get("password"))):
            raise _Refused(401, "invalid username or password")
        return self._tokens(body["username"])

    # -- the nodes -----------------------------------------------------------------------------------------------
    def _node(self) -> None:
        while not self._stop.is_set():
            record = None if self._held.is_set() else self._take()
            if record is None:
                self._stop.wait(0.02)
                continue
            try:
                self._run(record)
            except Exception as exc:  # noqa: BLE001 - a node's failure fails the task, the node goes on
                self._update(record["name"], state="failed", message=f"the node failed: {exc}")

    def _take(self) -> dict | None:
        with self._lock:
            for record in self._records():
                if record["state"] == "pending":
                    record["state"] = "assigned"
                    self._save(record)
                    return record
        return None

    def _run(self, record: dict) -> None:
        name, spec = record["name"], record["spec"]
        if spec["image_name"] in self.missing_images:
            self._update(name, state="rejected", message=f"No such image: {spec['image_name']}")
            return
        for state in ("accepted", "preparing", "starting"):
            if self._update(name, state=state) is None:
                return  # killed meanwhile
        container = self.containers / record["ID"]
        container.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(container), "HOSTNAME": record["ID"][:12]}
        env.update(spec["environment"])
        with self._lock:
            if self.record(name) is None:
                return
            with open(self.logs_dir / f"{record['ID']}.log", "wb") as log:
                try:
                    process = subprocess.Popen(
                        spec["command"] + spec["arguments"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        cwd=container,
                        start_new_session=True,
                    )
                except OSError as exc:
                    self._update(name, state="rejected", message=f"starting container failed: {exc.strerror}")
                    return
            self._processes[name] = process
            self._update(name, state="running", started=time.time())
        code = process.wait()
        with self._lock:
            self._processes.pop(name, None)
            if self._stop.is_set():
                return  # the cluster went down with the job: it is orphaned on the next start
            self._update(
                name,
                state=self.success_word if code == 0 else "failed",
                exit_code=code,
                ended=time.time(),
                message="" if code == 0 else f"task: non-zero exit ({code})",
            )


def _stop_group(process: subprocess.Popen, grace: float) -> None:
    """TERM the job's process group, then KILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "uvicorn"
    swarm: ChimeSwarmService

    API = [
        ("POST", re.compile(r"^/v1/swarm/spawn-job$"), "spawn"),
        ("GET", re.compile(r"^/v1/swarm/job-status/([^/]+)$"), "status"),
        ("GET", re.compile(r"^/v1/swarm/jobs$"), "jobs"),
        ("GET", re.compile(r"^/v1/swarm/logs/([^/]+)$"), "logs"),
        ("GET", re.compile(r"^/v1/swarm/kill-job/([^/]+)$"), "kill"),
        ("GET", re.compile(r"^/v1/swarm/prune-job/([^/]+)$"), "prune"),
    ]
    OPEN = [
        ("GET", re.compile(r"^/version$"), "version"),
        ("GET", re.compile(r"^/auth/verify$"), "verify"),
        ("POST", re.compile(r"^/auth/refresh$"), "refresh"),
        ("POST", re.compile(r"^/auth$"), "login"),
    ]

    def log_message(self, *args) -> None:
        pass

    def parse_request(self) -> bool:
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.requestline = ""
            self.request_version = "HTTP/1.1"
            self.command = "GET"
            self.close_connection = True
            self.send_error(414, "Request-URI Too Long")
            return False
        return super().parse_request()

    def _answer(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        token = self.headers.get("authorization")
        record: dict = {"method": self.command, "path": path, "token": token is not None}
        swarm = self.swarm
        try:
            raw = self.rfile.read(length) if length else b""
            routes = [(m, r, n) for m, r, n in self.OPEN + self.API if r.match(path)]
            wanted = [(m, r, n) for m, r, n in routes if m == self.command]
            if not routes:
                raise _Refused(404, "Not Found")
            if not wanted:
                raise _Refused(405, "Method Not Allowed")
            _method, regex, name = wanted[0]
            argument = unquote(regex.match(path).group(1)) if regex.groups else ""
            body: object = None
            if self.command == "POST":
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise _Refused(400, "the body is not JSON") from None
            if (name, regex) in [(n, r) for _m, r, n in self.API] and swarm.user_of(token) is None:
                raise _Refused(401, "missing, invalid or expired token" if token else "authorization header missing")
            result = {
                "version": lambda: {"version": VERSION},
                "verify": lambda: {"valid": swarm.user_of(token) is not None},
                "refresh": lambda: swarm.refresh(body),
                "login": lambda: swarm.login(body),
                "spawn": lambda: swarm.spawn(body),
                "status": lambda: swarm.status(argument),
                "jobs": swarm.jobs,
                "logs": lambda: swarm.logs(argument),
                "kill": lambda: swarm.kill(argument),
                "prune": lambda: swarm.prune(argument),
            }[name]()
            status, answer = 200, result
        except _Refused as exc:
            status, answer = exc.status, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - an unhandled error: the framework's 500
            status, answer = 500, {"error": f"Internal Server Error: {type(exc).__name__}"}
        record["status"] = status
        with swarm._lock:
            swarm.calls.append(record)  # before answering: a client that has its answer finds its call counted
        self._answer(status, answer)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


@pytest.fixture(scope="session")
def chime_swarm_service(tmp_path_factory) -> Iterator[ChimeSwarmService]:
    """One frb-master per test session; tests that need their own users or knobs set them and put them back."""
    service = ChimeSwarmService(tmp_path_factory.mktemp("chime-swarm")).start()
    yield service
    service.stop()
