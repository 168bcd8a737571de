"""The status page's requests and answers, apart from the HTTP server that carries them
(:class:`syncd.service.observe.HttpEndpoint` hands every path but its own to :meth:`StatusPage.handle`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode

from syncd.config import Config
from syncd.fsutil import open_regular, read_regular
from syncd.names import RESULT_RECORD
from syncd.service.web import model, render
from syncd.service.web.auth import REALM, Credentials
from syncd.state.store import HELD, TERMINAL, Job, Store
from syncd.state.summary import local_iso

STATIC = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
MAX_RECORD = 16 * 1024 * 1024
LOG_TAIL = 2 * 1024 * 1024  # the end of a long stdout/stderr is what a person looks for
LOW_DISK = 0.05
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send "Origin: null" with our own forms
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class InboxView:
    name: str
    mode: str  # native or polling observer
    paused: bool
    pending: int  # folders seen and waiting to settle


@dataclass
class PageSources:
    """Where the page's data comes from (the daemon's parts, or a test's)."""

    store: Store
    config: Callable[[], Config]
    inboxes: Callable[[], list[InboxView]] = list
    probe_problems: Callable[[], dict[str, str]] = dict
    alive: Callable[[], bool] = lambda: True
    #: job id → (files done, files, bytes done, bytes) of the deliveries under way
    transfers: Callable[[], dict[str, tuple[int, int, int, int]]] = dict


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None = None
    origin: str | None = None
    host: str | None = None
    form: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Response:
    code: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class StatusPage:
    def __init__(self, sources: PageSources, credentials: Credentials | None = None, *, actions: bool = False):
        self.sources = sources
        self.credentials = credentials
        self.actions = actions and credentials is not None
        #: proves a POST comes from a page this daemon served (a browser sends basic auth to any site's form)
        self.csrf = secrets.token_urlsafe(32)

    # -- access -------------------------------------------------------------------------------
    def authorised(self, authorization: str | None) -> bool:
        return self.credentials is None or self.credentials.allows(authorization)

    def unauthorised(self) -> Response:
        body = b"authorisation needed: the token or user:password in the daemon's http.auth_file\n"
        return Response(401, body, "text/plain; charset=utf-8", {"WWW-Authenticate": REALM})

    # -- routing ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        """The answer to ``request``, or None when the path is not the page's."""
        parts = [p for p in request.path.split("/") if p]
        if request.method == "POST":
            if len(parts) == 3 and parts[0] == "job" and parts[2] in ("cancel", "retry"):
                return self._act(request, parts[1], parts[2])
            return None
        if not parts:
            return self._index(request)
        if parts == ["api", "version"]:
            body = json.dumps({"version": self.version()}).encode()
            return self._with_headers(Response(200, body, "application/json"))
        if len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
            data = resources.files("syncd.service.web").joinpath("static", parts[1]).read_bytes()
            return self._with_headers(Response(200, data, STATIC[parts[1]], {"Cache-Control": "no-cache"}))
        if parts[0] == "job" and len(parts) == 2:
            return self._job_page(request, parts[1])
        if parts[0] == "job" and len(parts) == 3 and parts[2] in ("stdout", "stderr"):
            return self._stream(parts[1], parts[2])
        return None

    def _with_headers(self, response: Response) -> Response:
        response.headers = {**SECURITY_HEADERS, **response.headers}
        return response

    def version(self) -> str:
        """Changes whenever anything the page shows may have: the database, or a delivery's progress."""
        transfers = self.sources.transfers()
        moved = sum(done[0] + done[2] for done in transfers.values())
        return f"{model.version(self.sources.store)}.{len(transfers)}.{moved}"

    def _html(self, title: str, body: str, request: Request, code: int = 200) -> Response:
        version = self.version()
        fragment = (request.query.get("fragment") or [""])[0] == "1"
        if fragment:
            html = body
        else:
            # rebuilt from its parts: a path like "//host" must not become a URL the script fetches elsewhere
            path = "/" + "/".join(quote(part) for part in request.path.split("/") if part)
            live_url = path + ("?" + urlencode(request.query, doseq=True) if request.query else "")
            html = render.page(title, f'<main id="content">{body}</main>', version=version, live_url=live_url)
        return self._with_headers(Response(code, html.encode("utf-8"), headers={"X-Syncd-Version": version}))

    # -- pages --------------------------------------------------------------------------------
    def _index(self, request: Request) -> Response:
        store, config = self.sources.store, self.sources.config()
        wanted = model.JobFilter.from_query(request.query)
        range_name = (request.query.get("range") or ["day"])[0]
        range_name = range_name if range_name in model.RANGES else "day"
        now = time.time()
        live = "".join(
            [
                render.health(self.health_rows()),
                render.counts(store.count_by_state(), wanted),
                render.jobs_table(model.list_jobs(store, wanted), now, self.sources.transfers()),
                render.charts(model.chart_data(store, range_name, now), range_name, wanted),
            ]
        )
        if (request.query.get("fragment") or [""])[0] == "1":
            return self._html("jobs", live, request)
        # the choices of the filters: asked once per page load, not at every live update
        inboxes = sorted({i.name for i in config.inboxes} | set(model.distinct(store, "inbox")))
        backends = sorted(set(config.backend_options) | set(model.distinct(store, "backend")))
        body = render.filter_form(wanted, inboxes, backends, range_name) + f'<div id="live-region">{live}</div>'
        return self._html("jobs", body, request)

    def _job(self, job_id: str) -> Job | None:
        try:
            return self.sources.store.get(job_id)
        except KeyError:
            return None

    def outbox_folder(self, job: Job) -> Path | None:
        try:
            inbox = self.sources.config().inbox(job.inbox)
        except KeyError:  # an inbox a reload removed
            return None
        return inbox.outbox / job.bucket / job.folder if job.folder else None

    def _job_page(self, request: Request, job_id: str) -> Response:
        job = self._job(job_id)
        if job is None:
            return self._html("not found", render.message("no such job", f"no job has the id {job_id}"), request, 404)
        folder = self.outbox_folder(job)
        streams = {s: folder is not None and (folder / f"syncd-{s}.txt").is_file() for s in ("stdout", "stderr")}
        body = render.job_detail(
            job,
            model.timeline(self.sources.store.events(job.id)),
            outbox_folder=str(folder) if folder else None,
            streams=streams,
            progress=self.sources.transfers().get(job.id),
            delivered=delivered_files(folder),
            actions=render.action_buttons(job, self.csrf, self.allowed_actions(job)),
            now=time.time(),
        )
        if (request.query.get("fragment") or [""])[0] == "1":
            return self._html(job.name, body, request)
        return self._html(job.name, f'<div id="live-region">{body}</div>', request)

    def _stream(self, job_id: str, stream: str) -> Response:
        job = self._job(job_id)
        folder = self.outbox_folder(job) if job else None
        if job is None or folder is None:
            return Response(404, b"no such job, or it has no results folder yet\n", "text/plain; charset=utf-8")
        path = folder / f"syncd-{stream}.txt"
        try:
            fd = open_regular(path, follow=False)
        except OSError:
            return Response(404, f"no {stream} delivered for this job\n".encode(), "text/plain; charset=utf-8")
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > LOG_TAIL:
                handle.seek(size - LOG_TAIL)
            data = handle.read(LOG_TAIL)
        # A sandboxed plain text answer: a log that holds HTML is shown as text, never run.
        return self._with_headers(
            Response(200, data, "text/plain; charset=utf-8", {"Content-Security-Policy": "sandbox; default-src 'none'"})
        )

    # -- actions ------------------------------------------------------------------------------
    def allowed_actions(self, job: Job) -> list[str]:
        if not self.actions:
            return []
        allowed = []
        if job.state not in TERMINAL and not job.cancel_requested:
            allowed.append("cancel")
        if (job.state == HELD or job.state in TERMINAL - {"succeeded", "rejected", "validated"}) and (
            not job.retry_requested
        ):
            allowed.append("retry")
        return allowed

    def _act(self, request: Request, job_id: str, kind: str) -> Response:
        if not self.actions:
            return self._html(
                "actions off",
                render.message("actions are off", "set http.actions: true (with http.auth_file) to allow them"),
                request,
                403,
            )
        same_origin = request.origin is None or request.origin in (f"http://{request.host}", f"https://{request.host}")
        if not same_origin or not secrets.compare_digest((request.form.get("csrf") or [""])[0], self.csrf):
            return self._html(
                "refused", render.message("refused", "this form did not come from this page"), request, 403
            )
        job = self._job(job_id)
        if job is None:
            return self._html("not found", render.message("no such job", f"no job has the id {job_id}"), request, 404)
        if kind not in self.allowed_actions(job):
            note = f"a job that is {job.state} cannot be asked to {kind} (or it was asked already)"
            return self._html("not possible", render.message(f"cannot {kind}", note), request, 409)
        if (request.form.get("confirm") or [""])[0] != "yes":
            return self._html(f"{kind} {job.name}?", render.confirm(job, kind, self.csrf), request)
        self.sources.store.request(job.id, kind)
        return Response(303, b"", "text/plain", {"Location": f"/job/{job.id}"})

    # -- health -------------------------------------------------------------------------------
    def health_rows(self) -> list[render.HealthRow]:
        store, config = self.sources.store, self.sources.config()
        rows: list[render.HealthRow] = []
        Row = render.HealthRow
        views = {v.name: v for v in self.sources.inboxes()}
        for inbox in config.inboxes:
            view = views.get(inbox.name)
            if view is None:
                rows.append(Row("inbox", inbox.name, "warn", "not watched", str(inbox.path)))
            elif view.paused:
                rows.append(Row("inbox", inbox.name, "bad", "paused: folder not reachable", str(inbox.path)))
            else:
                rows.append(Row("inbox", inbox.name, "ok", f"{view.mode} observer, {view.pending} pending"))
        pauses, circuits, problems = store.backend_pauses(), store.open_circuits(), self.sources.probe_problems()
        staged = store.staged_by_backend()
        for kind, names in (("backend", config.backend_options), ("storage", config.storage_options)):
            for name, options in names.items():
                service = f"{kind} {name}"
                if kind == "backend" and name in pauses:
                    until, why = pauses[name]
                    rows.append(Row(kind, name, "bad", f"paused until {local_iso(until)}: refused credentials", why))
                elif service in circuits:
                    _since, next_probe, why = circuits[service]
                    rows.append(Row(kind, name, "bad", f"not answering; next probe {local_iso(next_probe)}", why))
                elif service in problems:
                    rows.append(Row(kind, name, "warn", "did not answer the last probe", problems[service]))
                else:
                    waiting = f", {staged[name]} waiting for a slot" if kind == "backend" and staged.get(name) else ""
                    rows.append(Row(kind, name, "ok", f"{options.type}: answering{waiting}"))
        for outbox in sorted({inbox.outbox for inbox in config.inboxes}):
            try:
                usage = shutil.disk_usage(outbox)
            except OSError as exc:
                rows.append(Row("outbox", str(outbox), "bad", "not reachable", exc.strerror or str(exc)))
                continue
            level = "warn" if usage.free < LOW_DISK * usage.total else "ok"
            rows.append(Row("outbox", str(outbox), level, f"{_size(usage.free)} free of {_size(usage.total)}"))
        if store.write_problem is not None:
            rows.append(Row("state database", "syncd.db", "bad", "cannot be written", store.write_problem))
        else:
            size = store.path.stat().st_size if store.path.exists() else 0
            rows.append(Row("state database", "syncd.db", "ok", f"writable, {_size(size)}"))
        if not self.sources.alive():
            rows.append(Row("main loop", "pump", "bad", "stalled: no progress lately"))
        return rows


def delivered_files(folder: Path | None) -> tuple[int, int] | None:
    """Files and bytes a job's result record lists as delivered (None before there is one)."""
    if folder is None:
        return None
    try:
        record = json.loads(read_regular(folder / RESULT_RECORD, MAX_RECORD, follow=False))
        outputs = record.get("outputs") or []
        return len(outputs), sum(int(entry.get("size") or 0) for entry in outputs)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def parse_request(method: str, raw_path: str, headers: dict[str, str | None], body: bytes = b"") -> Request:
    path, _, query = raw_path.partition("?")
    form = parse_qs(body.decode("utf-8", "replace")) if body else {}
    return Request(
        method,
        unquote(path),
        parse_qs(query),
        authorization=headers.get("authorization"),
        origin=headers.get("origin"),
        host=headers.get("host"),
        form=form,
    )
