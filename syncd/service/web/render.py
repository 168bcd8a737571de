"""HTML of the status page. Every value that comes from users or services (job and folder names,
messages, remote ids, paths) goes through :func:`text`: made visible by :func:`syncd.text.shown`
(no hidden or reordering characters) and HTML-escaped, quotes included, so it is only ever text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from urllib.parse import urlencode

from syncd.service.web.charts import histogram, outcomes_chart
from syncd.service.web.model import JOBS_LISTED, ORDER, ChartData, JobFilter, Step, run_seconds, wait_seconds
from syncd.state.store import ACTIVE, Job
from syncd.text import shown


def text(value: object) -> str:
    return escape(shown(value), quote=True)


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def badge(state: str) -> str:
    return f'<span class="badge st-{text(state)}">{text(state.replace("_", " "))}</span>'


def reason(job: Job) -> str:
    """Why a job is held, failed, was rejected or cancelled (empty for the others)."""
    if job.error:
        return job.error
    if job.state in ("failed", "timed_out", "cancelled", "held") and job.message:
        return job.message
    return ""


def page(title: str, body: str, *, version: str, live_url: str, header_extra: str = "") -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{text(title)} · syncd</title>
<link rel="stylesheet" href="/static/page.css">
<script src="/static/page.js" defer></script>
</head>
<body>
<header>
<a class="brand" href="/">syncd</a>
<span class="title">{text(title)}</span>
{header_extra}
<span id="live" class="live" data-version="{text(version)}" data-url="{text(live_url)}">live</span>
</header>
{body}
</body>
</html>
"""


@dataclass(frozen=True)
class HealthRow:
    kind: str  # inbox, backend, storage, outbox, state database, main loop
    name: str
    level: str  # ok, warn, bad
    status: str
    detail: str = ""


def health(rows: list[HealthRow]) -> str:
    cards = "".join(
        f'<div class="card lvl-{text(r.level)}" data-kind="{text(r.kind)}" data-name="{text(r.name)}">'
        f'<div class="kind">{text(r.kind)}</div><div class="name">{text(r.name)}</div>'
        f'<div class="status">{text(r.status)}</div>'
        + (f'<div class="detail">{text(r.detail)}</div>' if r.detail else "")
        + "</div>"
        for r in rows
    )
    return f'<section class="health" aria-label="health"><h2>Health</h2><div class="cards">{cards}</div></section>'


def counts(by_state: dict[str, int], wanted: JobFilter) -> str:
    chips = []
    for state in ORDER:
        if n := by_state.get(state):
            link = "?" + urlencode({**dict(wanted.items()), "state": state})
            chips.append(f'<a class="chip st-{state}" href="{text(link)}">{text(state.replace("_", " "))} {n}</a>')
    return '<nav class="counts" aria-label="jobs by state">' + "".join(chips) + "</nav>"


def _options(values: list[str], selected: str, any_label: str) -> str:
    out = [f'<option value="">{text(any_label)}</option>']
    for value in values:
        mark = " selected" if value == selected else ""
        out.append(f'<option value="{text(value)}"{mark}>{text(value.replace("_", " "))}</option>')
    return "".join(out)


def filter_form(wanted: JobFilter, inboxes: list[str], backends: list[str], range_name: str) -> str:
    states = ["active", *ORDER]
    return f"""<form id="filters" class="filters" method="get" action="/">
<label>state <select name="state">{_options(states, wanted.state, "any")}</select></label>
<label>inbox <select name="inbox">{_options(inboxes, wanted.inbox, "any")}</select></label>
<label>backend <select name="backend">{_options(backends, wanted.backend, "any")}</select></label>
<label>name <input type="search" name="name" value="{text(wanted.name)}" placeholder="name or id"></label>
<input type="hidden" name="range" value="{text(range_name)}">
<button type="submit">filter</button>
<a href="/">clear</a>
</form>"""


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def transfer(done: tuple[int, int, int, int]) -> str:
    files_done, files, bytes_done, total = done
    return (
        f'<span class="transfer">delivering: {files_done} of {files} file(s), '
        f"{size(bytes_done)} of {size(total)}</span>"
    )


def jobs_table(jobs: list[Job], now: float, transfers: dict[str, tuple[int, int, int, int]] | None = None) -> str:
    if not jobs:
        return '<p class="empty">no jobs match</p>'
    rows = []
    for job in jobs:
        run = run_seconds(job)
        if run is None and job.started_at and job.state in ACTIVE:
            run = now - job.started_at
        why = reason(job)
        rows.append(
            f'<tr data-job="{text(job.id)}" data-state="{text(job.state)}">'
            f'<td class="name"><a href="/job/{text(job.id)}">{text(job.name)}</a></td>'
            f"<td>{badge(job.state)}</td>"
            f"<td>{text(job.inbox)}</td><td>{text(job.backend)}</td>"
            f'<td class="mono">{text(job.remote_id or "")}</td>'
            f'<td class="num">{job.attempts}</td>'
            f"<td>{when(job.created)}</td>"
            f'<td class="num">{duration(wait_seconds(job))}</td><td class="num">{duration(run)}</td>'
            f'<td class="reason" title="{text(why)}">{text(why[:160])}'
            f"{transfer(transfers[job.id]) if transfers and job.id in transfers else ''}</td></tr>"
        )
    head = (
        "<tr><th>name</th><th>state</th><th>inbox</th><th>backend</th><th>remote id</th><th>attempts</th>"
        "<th>created</th><th>queue wait</th><th>run time</th><th>reason</th></tr>"
    )
    more = (
        f'<p class="muted">the {len(jobs)} newest shown; narrow the filters to find older jobs</p>'
        if len(jobs) >= JOBS_LISTED
        else ""
    )
    return f'<table class="jobs"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{more}'


def charts(data: ChartData, range_name: str, wanted: JobFilter) -> str:
    links = []
    for name in ("day", "week"):
        if name == range_name:
            links.append(f'<span class="current">{name}</span>')
        else:
            link = "?" + urlencode({**dict(wanted.items()), "range": name})
            links.append(f'<a href="{text(link)}">{name}</a>')
    per = "hour" if data.bar == 3600 else f"{int(data.bar // 3600)} hours"
    return f"""<section class="charts" aria-label="charts">
<h2>Last {range_name} <span class="ranges">{" · ".join(links)}</span></h2>
<div class="chartgrid">
<figure><figcaption>jobs ended per {per}, by outcome</figcaption>{outcomes_chart(data)}</figure>
<figure><figcaption>queue wait (submitted → running)</figcaption>{histogram(data.waits, "queue wait")}</figure>
<figure><figcaption>run time (running → ended)</figcaption>{histogram(data.runs, "run time")}</figure>
</div></section>"""


def _field(label: str, value: str) -> str:
    return f"<tr><th>{text(label)}</th><td>{value}</td></tr>" if value else ""


def job_detail(
    job: Job,
    steps: list[Step],
    *,
    outbox_folder: str | None,
    streams: dict[str, bool],
    actions: str,
    now: float,
    progress: tuple[int, int, int, int] | None = None,
    delivered: tuple[int, int] | None = None,
) -> str:
    run = run_seconds(job)
    if run is None and job.started_at and job.state in ACTIVE:
        run = now - job.started_at
    links = " ".join(
        f'<a href="/job/{text(job.id)}/{stream}">{stream}</a>' if present else f'<span class="muted">no {stream}</span>'
        for stream, present in streams.items()
    )
    fields = "".join(
        [
            _field("name", text(job.name)),
            _field("folder", text(job.dir_name)),
            _field("id", f'<span class="mono">{text(job.id)}</span>'),
            _field("state", badge(job.state) + (f" (held from {text(job.held_from)})" if job.held_from else "")),
            _field("reason", f'<span class="reason-text">{text(reason(job))}</span>' if reason(job) else ""),
            _field("message", text(job.message) if job.message and job.message != reason(job) else ""),
            _field("inbox", text(job.inbox)),
            _field("backend", text(job.backend)),
            _field("remote id", f'<span class="mono">{text(job.remote_id)}</span>' if job.remote_id else ""),
            _field("attempts", str(job.attempts)),
            _field("exit code", "" if job.exit_code is None else str(job.exit_code)),
            _field("created", when(job.created)),
            _field("queue wait", duration(wait_seconds(job))),
            _field("run time", duration(run)),
            _field("transfer", transfer(progress) if progress else ""),
            _field("delivered", f"{delivered[0]} file(s), {size(delivered[1])}" if delivered else ""),
            _field("results folder", f'<span class="mono path">{text(outbox_folder)}</span>' if outbox_folder else ""),
            _field("logs", links),
        ]
    )
    rows = []
    for step in steps:
        change = badge(step.state) if step.state else '<span class="muted">note</span>'
        rows.append(
            f'<tr class="{"change" if step.state else "note"}"><td>{when(step.at)}</td><td>{change}</td>'
            f'<td class="num">{duration(step.seconds)}</td><td>{text(step.message)}</td></tr>'
        )
    timeline = (
        '<table class="timeline"><thead><tr><th>at</th><th>state</th><th>for</th><th>what happened</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return (
        f'<section class="job" data-job="{text(job.id)}" data-state="{text(job.state)}">'
        f'<table class="fields">{fields}</table>{actions}<h2>Timeline</h2>{timeline}</section>'
    )


def action_buttons(job: Job, csrf: str, allowed: list[str]) -> str:
    if not allowed:
        return ""
    forms = "".join(
        f'<form method="post" action="/job/{text(job.id)}/{kind}" class="action">'
        f'<input type="hidden" name="csrf" value="{text(csrf)}"><button type="submit" name="do" value="{kind}">'
        f"{kind}…</button></form>"
        for kind in allowed
    )
    return f'<div class="actions">{forms}</div>'


def confirm(job: Job, kind: str, csrf: str) -> str:
    return (
        f'<section class="confirm"><p>{text(kind)} job <strong>{text(job.name)}</strong> '
        f'(<span class="mono">{text(job.id)}</span>, now {badge(job.state)})?</p>'
        f'<form method="post" action="/job/{text(job.id)}/{text(kind)}">'
        f'<input type="hidden" name="csrf" value="{text(csrf)}"><input type="hidden" name="confirm" value="yes">'
        f'<button type="submit" class="danger">yes, {text(kind)} it</button> '
        f'<a href="/job/{text(job.id)}">no, go back</a></form></section>'
    )


def message(title: str, body: str) -> str:
    return f'<section class="message"><h2>{text(title)}</h2><p>{text(body)}</p></section>'
