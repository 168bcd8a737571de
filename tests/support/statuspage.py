"""A state database with a job in every state (and hostile names), for the status page's tests and its
screenshot; and a status page served in-process by the real HTTP endpoint."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from syncd.config import Config
from syncd.service.observe import HttpEndpoint, Metrics
from syncd.service.web.app import InboxView, PageSources, StatusPage
from syncd.service.web.auth import Credentials
from syncd.service.web.model import ORDER
from syncd.state.store import Store
from tests.data.hostile.cases import CASES

#: names a page must show as text: markup, attribute breakers, script URLs, bidi and control characters
HTML_HOSTILE = (
    "<script>alert('pwned-html')</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
    "h-\u202egnp.exe",
    "a&amp;b</td></tr><tr><td>forged",
)

REASONS = {
    "held": "credentials refused by the service; fix them and run: syncd retry",
    "failed": "the command exited with code 3",
    "rejected": "job.yaml: command is empty",
    "timed_out": "the job ran longer than its timeout of 10m",
    "cancelled": "cancelled by the admin",
}


def hostile_names() -> list[str]:
    names = [os.fsdecode(case.fsname) for case in CASES if case.dir_name is not None]
    return [*HTML_HOSTILE, *names]


def populate(store: Store, outbox: Path, *, now: float | None = None, seed: int = 7) -> dict[str, str]:
    """One job per state (named after it) plus finished jobs over the last day; returns state → job id."""
    now = time.time() if now is None else now
    rng = random.Random(seed)
    ids = {}
    for i, state in enumerate(ORDER):
        created = now - 600 + i * 20
        values: dict = {"submitted_at": None, "started_at": None, "ended_at": None}
        if state in (
            "submitted",
            "queued",
            "running",
            "collecting",
            "held",
            "succeeded",
            "failed",
            "cancelled",
            "timed_out",
        ):
            values["submitted_at"] = created + 5
            values["remote_id"] = f"{4100 + i}"
        if state in ("running", "collecting", "succeeded", "failed", "timed_out", "cancelled"):
            values["started_at"] = created + 35
        if state in ("succeeded", "failed", "timed_out", "cancelled", "rejected", "validated"):
            values["ended_at"] = created + 95
        job_id = f"demo{i:02d}"
        folder = f"analysis-{state}" if state not in ("claiming", "rejected") else None
        store.create_job(
            id=job_id,
            name=f"analysis-{state}",
            dir_name=f"analysis-{state}",
            inbox="default",
            backend="local",
            storage="local",
            bucket="results",
            folder=folder,
            state=state,
            held_from="running" if state == "held" else None,
            attempts=2 if state == "held" else 1,
            error=REASONS.get(state) if state in ("held", "rejected") else None,
            message=REASONS.get(state) if state not in ("held", "rejected") else None,
            exit_code={"succeeded": 0, "failed": 3}.get(state),
            spool_path=f"/srv/inbox/.syncd/claimed/{job_id}",
            created=created,
            updated=values["ended_at"] or created + 40,
            **values,
        )
        ids[state] = job_id
        if folder:
            (outbox / "results" / folder).mkdir(parents=True, exist_ok=True)
            (outbox / "results" / folder / "syncd-stdout.txt").write_text(f"output of {state}\n")
    for n in range(60):  # history for the charts
        ended = now - rng.uniform(0, 23.5 * 3600)
        wait, run = rng.choice([0.5, 4, 30, 120, 900]), rng.choice([3, 40, 300, 1800, 7200])
        state = rng.choices(["succeeded", "failed", "cancelled", "timed_out"], [16, 3, 1, 1])[0]
        store.create_job(
            id=f"past{n:03d}",
            name=f"batch-{n:03d}",
            dir_name=f"batch-{n:03d}",
            inbox="default",
            backend="local",
            storage="local",
            bucket="results",
            state=state,
            attempts=1,
            spool_path="/srv/inbox/.syncd/done",
            created=ended - run - wait - 10,
            updated=ended,
            submitted_at=ended - run - wait,
            started_at=ended - run,
            ended_at=ended,
        )
    return ids


def serve(
    store: Store,
    config: Config,
    *,
    credentials: Credentials | None = None,
    actions: bool = False,
    inboxes: list[InboxView] | None = None,
) -> HttpEndpoint:
    """The daemon's HTTP endpoint with the status page, on a free loopback port (started)."""
    page = StatusPage(
        PageSources(store, lambda: config, inboxes=lambda: inboxes or [InboxView("default", "native", False, 0)]),
        credentials,
        actions=actions,
    )
    endpoint = HttpEndpoint("127.0.0.1", 0, metrics=Metrics(), alive=lambda: True, ready=dict, jobs=list, page=page)
    endpoint.start()
    return endpoint
