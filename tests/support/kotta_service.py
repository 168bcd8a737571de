"""A Cloud Kotta service on loopback: its REST front end and its task executor, as a test double.

Written from ``shared/protocols/kotta.md`` and the server's source (``web2/web_server.py``, ``web2/uploads.py``,
``task_executor.py``, ``applications.py``, ``command.py``), never from syncd's backend. What it reproduces:

- the Bottle front end: form-encoded bodies (also on ``GET /rest/v1/list_tasks``, where only the body is read),
  ``{"status": "Fail", "reason": ...}`` refusals with HTTP 200, JSON answers whose ``items`` are objects keyed
  "0", "1", … of one-key objects in no particular order, Bottle's HTML pages for 404, 405, 413 (a body over
  ``MEMFILE_MAX``) and 500 (an unhandled exception, traceback included: the real server ran with debug on);
- "Login with Amazon" tokens: an access token names a user (it expires), a refresh token is exchanged for a fresh
  access token on submit and upload_url; the server's validation bug (a refused token on submit/upload_url answers
  ``'user_id'``) and cookie sessions (``session.auto``) that let a client keeping cookies work on with a refused
  token; a valid login that is not a Kotta user makes an HTML 500;
- ``status_task`` without authentication; an unknown id, or a job without inputs, answers an HTML 500; only the
  first input is shown, outputs only once a job ended, each as ``<a href="presigned GET">name</a>`` or
  ``<i>name</i>`` when the file is not in the bucket;
- ``submit_task`` as ``_submit_task`` builds the record (``walltime`` minutes → seconds, ``jobname`` default the
  job id, ``input_url*`` and ``inputs``, ``outputs`` and ``output_*``, the script's name always an output); the
  record is written before the queue is checked, so a wrong queue leaves a record that never runs;
- the executor: inputs fetched into the job's temporary folder under the last ``/``-segment of their URL
  (``http://`` plain, ``https://s3*.amazonaws.com/`` and ``s3://`` from the S3 side, ``src.strip("s3://")``
  included; anything else skipped), the script written and ``executable`` run (split like a shell, no shell, when
  the walltime is 300 s or less; else through ``/bin/sh`` with a check every 5 s for the walltime and for a cancel);
  STDOUT.txt/STDERR.txt in that folder; declared outputs uploaded to ``klab-jobs/outputs/<job id>/<name>`` (a
  missing one only logged); the states in the real order, each a separate write of the whole record
  (``failed`` is written before its ``ERROR_CODE``; an exception in the application writes ``Failed`` and the job
  may still end ``completed``); 1001 for the walltime, 1002 for a cancel;
- its object store is the session's SeaweedFS (bucket ``klab-jobs``; upload URLs are presigned PUTs for
  ``uploads/<user id>/python/pkl/<filepath>``, valid for an hour).

State is on disk (``jobs/`` is the DynamoDB table, ``queue/`` the SQS queue, ``identity.json`` the users and tokens):
a new instance on the same folder carries on; a job taken by a worker that stopped stays in its last state, as on
the real service. Test knobs, none on the wire: ``minute`` (seconds a wire minute lasts: walltimes and the
executor's 5 s check are scaled by it), ``hold()`` (workers take nothing), ``stop_frontend()``/``start_frontend()``
(the web server down while the workers run on), ``web_cancel()`` (the web UI's cancel), and the users and tokens.
The one deliberate difference: a job's whole process group is killed, not only its shell, so tests leave no
orphans.
"""

from __future__ import annotations

import hmac
import html
import json
import os
import random
import re
import secrets
import shlex
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests

from tests.support.emulator_server import CuttableServer, kill_group
from tests.support.s3server import S3Server

BUCKET = "klab-jobs"
MEMFILE_MAX = 102400  # Bottle 0.12: a form body longer than this is refused with 413
WALLTIME_EXCEEDED = 1001
KILLED_BY_REQUEST = 1002
SLEEP_TIME = 5  # seconds between the executor's checks of a long job
ACCESS_TOKEN_LIFE = 3600.0
UPLOAD_URL_EXPIRY = 3600
OUTPUT_URL_EXPIRY = 1500
SESSION_COOKIE = "beaker.session.id"
INVALID_GRANT = json.dumps(
    {"error_description": "The request has an invalid grant parameter : refresh_token", "error": "invalid_grant"}
)
JOBS = ("doc_to_vec", "generic", "script", "python", "experimental")  # the executor's table of job types


class _Refused(Exception):
    """A Bottle HTTPError: answered with its status and Bottle's HTML page."""

    def __init__(self, status: int, reason: str, body: str):
        super().__init__(body)
        self.status, self.reason, self.body = status, reason, body


def bottle_page(status: int, reason: str, body: str, url: str, exc: BaseException | None = None) -> bytes:
    """Bottle's default error page (debug on: an exception and its traceback are shown)."""
    extra = ""
    if exc is not None:
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        extra = (
            f"<h2>Exception:</h2>\n<pre>{html.escape(repr(exc))}</pre>\n"
            f"<h2>Traceback:</h2>\n<pre>{html.escape(trace)}</pre>\n"
        )
    return (
        f'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html>\n<head>\n'
        f"<title>Error: {status} {reason}</title>\n</head>\n<body>\n<h1>Error: {status} {reason}</h1>\n"
        f"<p>Sorry, the requested URL <tt>{html.escape(repr(url))}</tt>\ncaused an error:</p>\n"
        f"<pre>{html.escape(body)}</pre>\n{extra}</body>\n</html>\n"
    ).encode()


def parse_form(body: bytes) -> dict[str, list[str]]:
    """Bottle's ``_parse_qsl``: ``&`` and ``;`` separate pairs, ``+`` is a space, a value may be empty."""
    fields: dict[str, list[str]] = {}
    for pair in body.decode("latin-1").replace(";", "&").split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        key = unquote(name.replace("+", " "), encoding="latin-1")
        fields.setdefault(key, []).append(unquote(value.replace("+", " "), encoding="latin-1"))
    return fields


class Form:
    """``request.POST``: ``get`` gives the last value of a key, like Bottle's FormsDict."""

    def __init__(self, fields: dict[str, list[str]]):
        self.fields = fields

    def get(self, key: str, default=None):
        values = self.fields.get(key)
        return values[-1] if values else default

    def keys(self) -> list[str]:
        return list(self.fields)


class Table:
    """The DynamoDB jobs table: one JSON file per record, whole records written (``put_item(overwrite=True)``)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def get(self, job_id: str) -> dict | None:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", job_id):
            return None
        try:
            return json.loads((self.folder / f"{job_id}.json").read_text())
        except FileNotFoundError:
            return None

    def put(self, record: dict) -> None:
        with self.lock:
            tmp = self.folder / f".{record['job_id']}.{threading.get_ident()}.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.folder / f"{record['job_id']}.json")

    def scan(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.folder.glob("*.json"))]


class KottaService:
    """Cloud Kotta on loopback: ``url`` is the base of ``/rest/v1/...``; ``s3`` is its object store."""

    def __init__(self, state_dir: Path, s3: S3Server, *, minute: float = 60.0, workers: int = 4, port: int = 0):
        self.state_dir = state_dir
        self.s3 = s3
        self.minute = minute
        self.table = Table(state_dir / "jobs")
        self.queue = state_dir / "queue"
        self.active = state_dir / "active"
        for folder in (self.queue, self.active, state_dir / "workers"):
            folder.mkdir(parents=True, exist_ok=True)
        self._identity_path = state_dir / "identity.json"
        self._identity_lock = threading.Lock()
        if not self._identity_path.exists():
            self._save_identity(
                {
                    "users": {},
                    "access": {},
                    "refresh": {},
                    "session_key": secrets.token_hex(16),
                    "client_id": "amzn1.application-oa2-client.kotta",
                }
            )
        self._client = s3.client()
        try:
            self._client.create_bucket(Bucket=BUCKET)
        except (self._client.exceptions.BucketAlreadyOwnedByYou, self._client.exceptions.BucketAlreadyExists):
            pass
        self.calls: list[dict] = []  # every request the front end answered: method, path, field names, status
        self._calls_lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._held = threading.Event()
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"kotta-worker-{n}") for n in range(workers)
        ]
        self._running: dict[str, subprocess.Popen] = {}
        self._running_lock = threading.Lock()

    # -- life ------------------------------------------------------------------------------------------------
    def start(self) -> KottaService:
        self.start_frontend()
        for worker in self._workers:
            worker.start()
        return self

    def start_frontend(self) -> None:
        service = self

        class Handler(_Handler):
            kotta = service

        self._server = CuttableServer(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="kotta-web").start()

    def stop_frontend(self) -> None:
        """The web server goes away (open connections are cut, new ones refused); workers carry on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.cut_connections()
            self._server = None

    def stop(self) -> None:
        self.stop_frontend()
        self._stop.set()
        with self._running_lock:
            for process in self._running.values():
                kill_group(process)
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def hold(self, held: bool = True) -> None:
        """While held, workers take no job from the queue (jobs stay ``pending``)."""
        if held:
            self._held.set()
        else:
            self._held.clear()

    # -- users and tokens (Login with Amazon and Kotta's users table) -------------------------------------------
    def _load_identity(self) -> dict:
        return json.loads(self._identity_path.read_text())

    def _save_identity(self, data: dict) -> None:
        tmp = self._identity_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._identity_path)

    def add_user(self, name: str = "Ada Lovelace", *, kotta_user: bool = True) -> dict:
        """A user who logged in with Amazon: ``{user_id, name, email, access_token, refresh_token}``. Without
        ``kotta_user`` the login is valid but Kotta's users table does not list the user."""
        user_id = f"amzn1.account.{secrets.token_hex(12).upper()}"
        email = f"{name.split()[0].lower()}@example.org"
        with self._identity_lock:
            data = self._load_identity()
            data["users"][user_id] = {"name": name, "email": email, "role": "KottaUser", "listed": kotta_user}
            access = self._issue(data, user_id)
            refresh = f"Atzr|{secrets.token_urlsafe(48)}"
            data["refresh"][refresh] = user_id
            self._save_identity(data)
        return {"user_id": user_id, "name": name, "email": email, "access_token": access, "refresh_token": refresh}

    @staticmethod
    def _issue(data: dict, user_id: str) -> str:
        token = f"Atza|{secrets.token_urlsafe(48)}"
        data["access"][token] = {"user_id": user_id, "expires": time.time() + ACCESS_TOKEN_LIFE}
        return token

    def expire(self, token: str) -> None:
        """An access token's hour is over (or a refresh token is revoked)."""
        with self._identity_lock:
            data = self._load_identity()
            if token in data["access"]:
                data["access"][token]["expires"] = 0
            data["refresh"].pop(token, None)
            self._save_identity(data)

    def new_access_token(self, user_id: str) -> str:
        with self._identity_lock:
            data = self._load_identity()
            token = self._issue(data, user_id)
            self._save_identity(data)
        return token

    def _identity_from_token(self, access_token: str | None) -> tuple[str | None, str | None, str | None]:
        """Amazon's tokeninfo and profile: (user_id, name, email), or Nones and a message."""
        data = self._load_identity()
        entry = data["access"].get(access_token or "")
        if entry is None or entry["expires"] < time.time():
            return None, None, "Failed to verify origin of authentication token"
        user = data["users"][entry["user_id"]]
        return entry["user_id"], user["name"], user["email"]

    def _find_user_role(self, user_id: str) -> dict | None:
        user = self._load_identity()["users"].get(user_id)
        return {"email": user["email"], "role": user["role"]} if user and user["listed"] else None

    def _refresh(self, refresh_token: str) -> tuple[bool, dict | str]:
        """Amazon's token endpoint, ``grant_type=refresh_token``."""
        with self._identity_lock:
            data = self._load_identity()
            user_id = data["refresh"].get(refresh_token)
            if user_id is None:
                return False, INVALID_GRANT
            token = self._issue(data, user_id)
            self._save_identity(data)
        return True, {
            "access_token": token,
            "refresh_token": refresh_token,
            "token_type": "bearer",
            "expires_in": int(ACCESS_TOKEN_LIFE),
        }

    # -- what tests look at ---------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """Every job record (the DynamoDB table)."""
        return self.table.scan()

    def named(self, jobname: str) -> list[dict]:
        return [r for r in self.records() if r.get("jobname") == jobname]

    def count(self, path_prefix: str) -> int:
        with self._calls_lock:
            return sum(1 for c in self.calls if c["path"].startswith(path_prefix))

    def web_cancel(self, job_id: str) -> None:
        """The web UI's ``GET /cancel/<job_id>``: the record says cancelled; a long job's runner kills it."""
        record = self.table.get(job_id)
        assert record is not None, job_id
        record.update(status="cancelled", reason="User request cancel", cancel_time=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.table.put(record)

    def wait_for(
        self, job_id: str, states: tuple[str, ...] = ("completed", "failed", "cancelled"), timeout: float = 30.0
    ) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.table.get(job_id)
            if (
                record is not None
                and record["status"] in states
                and (record["status"] != "failed" or "ERROR" in record or "ERROR_CODE" in record)
            ):
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} is {self.table.get(job_id)} after {timeout}s")

    # -- the REST routes ---------------------------------------------------------------------------------------
    def _validate_session(self, access_token: str | None) -> dict | None:
        if not access_token:
            return None
        user_id, name, _email = self._identity_from_token(access_token)
        if not user_id or not name:
            return None
        user_info = self._find_user_role(user_id)
        return {
            "user_id": user_id,
            "name": name,
            "username": name,
            "email": user_info["email"],  # a login that is not a Kotta user: TypeError, HTML 500
            "user_role": user_info["role"],
        }

    def _validate_tokens(self, form: Form, session: dict):
        access_token = form.get("access_token")
        if form.get("refresh_token"):
            ok, vals = self._refresh(form.get("refresh_token"))
            if not ok:
                return False, {"status": "Fail", "reason": vals}
            assert isinstance(vals, dict)
            access_token = vals["access_token"]
        if access_token:
            user_info = self._validate_session(access_token)
            if not user_info:
                # The server's bug: a dict, not a tuple; the caller unpacks its two keys and carries on.
                return {"status": "Fail", "reason": "Failed to authenticate"}
            session.update(user_info)
            session["logged_in"] = True
        else:
            return False, {"status": "Fail", "reason": "access_token missing"}
        return True, {"status": "Okay"}

    def submit_task(self, form: Form, session: dict) -> dict:
        res, res_long = self._validate_tokens(form, session)
        if not res:
            return res_long
        try:
            uid = self._submit_task(form, session)
        except Exception as exc:  # noqa: BLE001 - the route answers every exception as a Fail
            return {"status": "Fail", "reason": str(exc)}
        return {"status": "Success", "job_id": uid}

    def _submit_task(self, form: Form, session: dict) -> str:
        session["user_id"]  # KeyError ('user_id') when the token check let a refused token through
        jobtype = form.get("jobtype").strip()
        outputs = form.get("outputs", None)
        uid = str(uuid.uuid4())
        queue = form.get("queue")
        data = {
            "job_id": uid,
            "username": session["username"],
            "i_user_id": session["user_id"],
            "i_wosuser": "None",
            "i_wospasswd": "None",
            "jobname": form.get("jobname", uid),
            "i_user_role": f"arn:aws:iam::000000000000:role/{session['user_role']}",
            "user_email": session["email"],
            "submit_time": int(time.time()),
            "submit_stamp": time.strftime("%Y-%m-%d %H:%M:%S"),
            "walltime": int(form.get("walltime")) * 60,
            "queue": queue,
            "jobtype": jobtype,
            "status": "pending",
        }
        if jobtype == "doc_to_vec":
            input_url = form.get("input_url")
            data["inputs"] = [{"type": "doc", "src": input_url, "dest": input_url.split("/")[-1]}]
            data["outputs"] = [
                {"src": name, "dest": f"{BUCKET}/outputs/{uid}/{name}"}
                for name in ("doc_mat.pkl", "word_mat.pkl", "mdl.pkl", "STDOUT.txt", "STDERR.txt", "pipeline.log")
            ]
        elif jobtype == "script":
            data["executable"] = form.get("executable")
            data["args"] = form.get("args", "")
            data["i_script"] = form.get("script").rstrip("\r")
            data["i_script_name"] = form.get("script_name")
            data["outputs"] = [
                {"src": data["i_script_name"], "dest": f"{BUCKET}/outputs/{uid}/{data['i_script_name']}"}
            ]
            data["inputs"] = []
            for key in form.keys():
                if key.startswith("input_url"):
                    url = form.get(key)
                    data["inputs"].append({"src": url, "dest": url.split("/")[-1]})
                elif key == "inputs":
                    inputs = form.get(key)
                    if inputs:
                        data["inputs"] += [
                            {"src": x.strip(), "dest": x.strip().split("/")[-1]} for x in inputs.split(",")
                        ]
                elif key == "outputs":
                    if not outputs:
                        continue
                    for name in outputs.split(","):
                        name = name.strip()
                        data["outputs"].append({"src": name, "dest": f"{BUCKET}/outputs/{uid}/{name}"})
                elif key.startswith("output_"):
                    name = form.get(key)
                    data["outputs"].append({"src": name, "dest": f"{BUCKET}/outputs/{uid}/{name}"})
        self.table.put(data)  # written before the queue is checked
        if queue not in ("Test", "Prod"):
            raise Exception(f"Queue : [{queue}] is not valid")
        message = self.queue / f"{time.time_ns():020d}-{uid}.json"
        tmp = message.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, message)
        return uid

    def list_tasks(self, form: Form, session: dict) -> dict:
        if form.get("access_token"):
            user_info = self._validate_session(form.get("access_token"))
            if not user_info:
                return {"status": "Fail", "reason": "Failed to authenticate"}
            session.update(user_info)
            session["logged_in"] = True
        else:
            return {"status": "Fail", "reason": "access_token missing"}
        mine = [r for r in self.table.scan() if r.get("i_user_id") == session["user_id"]]
        random.shuffle(mine)  # a full DynamoDB scan: no order
        items = {
            str(i): {
                "job_id": str(r["job_id"]),
                "status": str(r["status"]),
                "jobtype": str(r["jobtype"]),
                "submit_stamp": str(r["submit_stamp"]),
            }
            for i, r in enumerate(mine)
        }
        return {"items": items, "status": "Success"}

    def status_task(self, job_id: str) -> dict:
        item = self.table.get(job_id)
        if item is None:
            item = "The requested job_id was not found in the jobs database"  # the helper returns a string...
        pairs = []
        keys = list(item.keys())  # ...and this raises for it: HTML 500
        random.shuffle(keys)  # DynamoDB's attribute order
        for key in keys:
            value = item[key]
            if key.startswith("i_") and key != "i_ispublished":
                continue
            if key in ("submit_time", "complete_time", "start_time"):
                pairs.append((key, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))))
            elif key == "inputs":
                pairs.append((key, f'<a href="{value[0]["src"]}">{value[0]["dest"]}</a>'))  # [] → IndexError
            elif key == "outputs":
                if item["status"].lower() not in ("completed", "failed", "cancelled"):
                    continue
                for out in value:
                    bucket, key_path = out["dest"].split("/", 1)
                    signed = self._signed_get(bucket, key_path)
                    pairs.append((key, f'<a href="{signed}">{out["src"]}</a>' if signed else f"<i>{out['src']}</i>"))
            else:
                pairs.append((key, value))
        result: dict = {"items": {}}
        for i, (key, value) in enumerate(pairs):
            result["items"][str(i)] = {key: value}
            if key == "status":
                result["status"] = value
        return result

    def _signed_get(self, bucket: str, key: str) -> str | None:
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except Exception:  # noqa: BLE001 - boto's get_key answers None, and generate_url on None raises
            return None
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=OUTPUT_URL_EXPIRY
        )

    def upload_url(self, form: Form, session: dict) -> str | dict:
        res, res_long = self._validate_tokens(form, session)
        if not res:
            return res_long
        fpath = form.get("filepath")
        try:
            url = self._client.generate_presigned_url(
                "put_object",
                Params={"Bucket": BUCKET, "Key": f"uploads/{session['user_id']}/python/pkl/{fpath}"},
                ExpiresIn=UPLOAD_URL_EXPIRY,
            )
        except Exception as exc:  # noqa: BLE001
            return {"status": "Fail", "reason": str(exc)}
        return json.dumps({"status": "Success", "upload_url": url})  # a string: json.dumps'd by the route itself

    # -- the executor ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            message = None if self._held.is_set() else self._take()
            if message is None:
                self._stop.wait(0.05)
                continue
            data = json.loads(message.read_text())
            try:
                self._exec_job(data)
            except Exception:  # noqa: BLE001 - "Job failed to complete": the worker goes on
                traceback.print_exc()
            finally:
                message.unlink(missing_ok=True)

    def _take(self) -> Path | None:
        for message in sorted(self.queue.glob("*.json")):
            target = self.active / message.name
            try:
                os.rename(message, target)  # one worker wins the message
            except FileNotFoundError:
                continue
            return target
        return None

    def _save(self, record: dict, **changes) -> None:
        """``update_record``: the worker's copy of the record, changed and written whole."""
        record.update(changes)
        self.table.put(record)

    def _exec_job(self, data: dict) -> None:
        job_id = data["job_id"]
        record = self.table.get(job_id)
        assert record is not None
        self._save(record, start_time=time.time(), i_instance_id="i-0kotta", i_instance_type="t2.micro")
        tmpdir = self.state_dir / "workers" / job_id
        if tmpdir.exists():
            subprocess.run(["rm", "-rf", str(tmpdir)], check=False)
        tmpdir.mkdir(parents=True)
        self._save(record, status="staging_inputs")
        stagein_start = time.time()
        try:
            self._get_inputs(data.get("inputs"), tmpdir)
        except Exception as exc:  # noqa: BLE001
            self._save(record, ERROR=f"Failed to download inputs {exc}")
            self._save(record, status="failed")
            self._save(record, complete_time=time.time())
            return
        stagein_total = time.time() - stagein_start
        self._save(record, status="processing")
        if data.get("jobtype") not in JOBS:
            return  # "Unable to process jobtype": the record stays processing
        returncode = 0
        process_start = time.time()
        try:
            if data["jobtype"] != "script":
                raise TypeError(f"{data['jobtype']}() takes different arguments")
            returncode = self._script_executor(data, tmpdir)
        except Exception as exc:  # noqa: BLE001
            self._save(record, status="Failed")
            self._save(record, complete_time=time.time())
            self._save(record, ERROR=str(exc))
        process_total = time.time() - process_start
        if self._stop.is_set():
            return  # the worker went down with the job: nobody writes its record any more
        record = self.table.get(job_id) or record
        self._save(record, status="staging_outputs")
        stageout_start = time.time()
        self._put_outputs(data.get("outputs"), tmpdir)
        self._save(
            record,
            z_stagein_dur=stagein_total,
            z_stageout_dur=time.time() - stageout_start,
            z_processing_dur=process_total - 1,
        )
        if returncode != 0:
            self._save(record, status="failed")
            self._save(record, complete_time=time.time())
            self._save(record, ERROR_CODE=returncode)
        else:
            self._save(record, status="completed")
            self._save(record, complete_time=time.time())
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)

    def _get_inputs(self, inputs: list[dict] | None, tmpdir: Path) -> None:
        for item in inputs or []:
            src, dest = item["src"], tmpdir / item["dest"]
            if src.startswith("http://"):
                # urllib.urlretrieve: whatever the server answers (an error page too) is saved
                dest.write_bytes(requests.get(src, timeout=60).content)
            elif re.search("https://s3.*amazonaws.com/", src):
                bucket, key = re.sub("https://s3.*amazonaws.com/", "", src).split("/", 1)
                self._client.download_file(bucket, key, str(dest))
            elif src.startswith("s3://"):
                bucket, key = src.strip("s3://").split("/", 1)  # noqa: B005 - the server's own bug, on purpose
                self._client.download_file(bucket, key, str(dest))
            # anything else: "No match. Could not fetch data"

    def _put_outputs(self, outputs: list[dict] | None, tmpdir: Path) -> None:
        for out in outputs or []:
            bucket, key = out["dest"].split("/", 1)
            try:
                self._client.upload_file(str(tmpdir / out["src"]), bucket, key)
            except Exception as exc:  # noqa: BLE001 - "Upload to s3 failed": logged, the job goes on
                print(f"kotta emulator: upload of {out['src']} failed: {exc}")

    def _script_executor(self, job: dict, tmpdir: Path) -> int:
        walltime = int(job.get("walltime", 24 * 60 * 60))
        script_file = job.get("i_script_name")
        script = job.get("i_script").replace("\r\n", "\n")
        path = tmpdir / script_file  # None: TypeError, the application's exception
        if tmpdir not in path.resolve().parents:
            raise OSError(f"refusing to write the script outside the job's folder: {script_file}")
        path.write_text(script)
        os.chmod(path, 0o744)
        return self._execute(job["executable"], walltime, job["job_id"], tmpdir)

    def _execute(self, cmd: str, walltime: int, job_id: str, tmpdir: Path) -> int:
        scale = self.minute / 60.0
        env = {**os.environ, "wosuser": "None", "wospasswd": "None", "TURING_JOB_ID": job_id, "HOME": "/home/ubuntu"}
        with open(tmpdir / "STDOUT.txt", "w") as out, open(tmpdir / "STDERR.txt", "w") as err:
            if walltime < 301:
                try:
                    process = subprocess.Popen(
                        shlex.split(cmd), stdout=out, stderr=err, env=env, cwd=tmpdir, start_new_session=True
                    )
                except Exception:  # noqa: BLE001 - "Process exited with exception"
                    return -1
                self._track(job_id, process)
                try:
                    return process.wait(timeout=walltime * scale)
                except subprocess.TimeoutExpired:
                    kill_group(process)
                    return WALLTIME_EXCEEDED
                finally:
                    self._untrack(job_id)
            process = subprocess.Popen(
                cmd, shell=True, stdout=out, stderr=err, env=env, cwd=tmpdir, start_new_session=True
            )
            self._track(job_id, process)
            try:
                start = time.time()
                while True:
                    status = process.poll()
                    if status is not None:
                        return status
                    if int((time.time() - start) / scale) > walltime:
                        kill_group(process)
                        return WALLTIME_EXCEEDED
                    if (self.table.get(job_id) or {}).get("status") == "cancelled":
                        kill_group(process)
                        return KILLED_BY_REQUEST
                    if self._stop.wait(SLEEP_TIME * scale):
                        kill_group(process)
                        return -9
            finally:
                self._untrack(job_id)

    def _track(self, job_id: str, process: subprocess.Popen) -> None:
        with self._running_lock:
            self._running[job_id] = process

    def _untrack(self, job_id: str) -> None:
        with self._running_lock:
            self._running.pop(job_id, None)


class _Handler(BaseHTTPRequestHandler):
    """Bottle's routing: a known path with another method is 405, an unknown one 404."""

    protocol_version = "HTTP/1.1"
    server_version = "CherryPy/3.2.2"
    kotta: KottaService

    ROUTES = [
        ("POST", re.compile(r"^/rest/v1/submit_task$"), "submit"),
        ("GET", re.compile(r"^/rest/v1/status_task/([^/]+)$"), "status"),
        ("GET", re.compile(r"^/rest/v1/list_tasks$"), "list"),
        ("POST", re.compile(r"^/rest/v1/upload_url$"), "upload"),
        ("GET", re.compile(r"^/cancel/([^/]+)$"), "cancel"),
    ]

    def log_message(self, *args) -> None:
        pass

    def _answer(
        self,
        status: int,
        reason: str,
        body: bytes,
        content_type: str,
        cookie: str | None = None,
        location: str | None = None,
    ) -> None:
        self.send_response(status, reason)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if cookie is not None:
            self.send_header("Set-Cookie", f"{SESSION_COOKIE}={cookie}; Path=/")
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)

    def _session(self) -> dict:
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == SESSION_COOKIE:
                return self._decode_session(value)
        return {}

    def _decode_session(self, value: str) -> dict:
        payload, _, mac = value.partition(".")
        key = self.kotta._load_identity()["session_key"]
        if not secrets.compare_digest(mac, _mac(key, payload)):
            return {}
        try:
            return json.loads(bytes.fromhex(payload))
        except ValueError:
            return {}

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        url = f"http://{self.headers.get('Host', '')}{self.path}"
        length = int(self.headers.get("Content-Length") or 0)
        record = {"method": self.command, "path": path, "fields": [], "cookie": "Cookie" in self.headers}
        try:
            body = self.rfile.read(length) if length else b""
            match = [(m, r, n) for m, r, n in self.ROUTES if r.match(path)]
            wanted = [(m, r, n) for m, r, n in match if m == self.command]
            if not match:
                raise _Refused(404, "Not Found", f"Not found: {path!r}")
            if not wanted:
                raise _Refused(405, "Method Not Allowed", "Method not allowed.")
            _method, regex, name = wanted[0]
            if name != "status" and length > MEMFILE_MAX:  # request.POST reads the body only where it is used
                raise _Refused(413, "Request Entity Too Large", "Request entity too large")
            content_type = self.headers.get("Content-Type", "")
            form = Form({} if content_type.startswith("multipart/") else parse_form(body))
            record["fields"] = sorted(form.keys())
            session = self._session()
            before = json.dumps(session, sort_keys=True)
            argument = regex.match(path).group(1) if regex.groups else None
            if name == "cancel":
                self._web_cancel(argument, session)
                return
            result = {
                "submit": lambda: self.kotta.submit_task(form, session),
                "list": lambda: self.kotta.list_tasks(form, session),
                "upload": lambda: self.kotta.upload_url(form, session),
                "status": lambda: self.kotta.status_task(argument),
            }[name]()
            body_out = (result if isinstance(result, str) else json.dumps(result)).encode()
            cookie = None
            if json.dumps(session, sort_keys=True) != before:  # session.auto: saved on change
                key = self.kotta._load_identity()["session_key"]
                payload = json.dumps(session).encode().hex()
                cookie = f"{payload}.{_mac(key, payload)}"
            record["status"] = 200
            self._answer(200, "OK", body_out, "application/json", cookie=cookie)
        except _Refused as exc:
            record["status"] = exc.status
            self._answer(
                exc.status, exc.reason, bottle_page(exc.status, exc.reason, exc.body, url), "text/html; charset=UTF-8"
            )
        except Exception as exc:  # noqa: BLE001 - an unhandled exception: Bottle's 500 page
            record["status"] = 500
            self._answer(
                500,
                "Internal Server Error",
                bottle_page(500, "Internal Server Error", "Internal Server Error", url, exc),
                "text/html; charset=UTF-8",
            )
        finally:
            with self.kotta._calls_lock:
                self.kotta.calls.append(record)

    def _web_cancel(self, job_id: str, session: dict) -> None:
        if not session.get("logged_in"):
            self._answer(303, "See Other", b"", "text/html; charset=UTF-8", location="/login")
            return
        self.kotta.web_cancel(job_id)
        self._answer(303, "See Other", b"", "text/html; charset=UTF-8", location=f"/jobs/{job_id}")

    do_GET = do_POST = do_PUT = do_DELETE = _handle


def _mac(key: str, payload: str) -> str:
    return hmac.new(key.encode(), payload.encode(), "sha256").hexdigest()


@pytest.fixture(scope="session")
def kotta_service(tmp_path_factory, seaweedfs) -> Iterator[KottaService]:
    """One Cloud Kotta per test session on the session's SeaweedFS. A wire minute lasts 2 s here, so a job's
    walltime (whole minutes on the wire) ends in seconds."""
    service = KottaService(tmp_path_factory.mktemp("kotta"), seaweedfs, minute=2.0).start()
    yield service
    service.stop()
