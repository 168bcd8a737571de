"""CHIME/FRB Workflow Buckets' wire shapes: the Work syncd deposits, the queries it sends, the states it reads.
Behaviour is in :mod:`syncd.backends.chime_workflow.backend`; the protocol in ``shared/protocols/chime_frb.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

from syncd.backends.base import RemoteState, RemoteStatus

#: the fields a poll reads (results can be megabytes: read once, when the outputs are collected)
STATUS_FIELDS = ("id", "tags", "status", "start", "stop", "timeout", "creation", "attempt")
OUTCOME_FIELDS = ("id", "status", "results", "products", "plots")
#: Works one ``/view`` answer may hold; more are paged with ``skip``
VIEW_LIMIT = 500
WORK_ID = re.compile(r"^[0-9a-f]{24}$")
#: what the runner records as results of a command that succeeded, when the Work brought none
RUNNER_RESULT_KEYS = frozenset({"args", "stdout", "stderr", "returncode"})


def work(
    *,
    pipeline: str,
    site: str,
    user: str,
    command: list[str],
    parameters: Mapping[str, Any],
    tag: str,
    timeout: int,
    priority: int,
) -> dict[str, Any]:
    """The payload of one Work, every field a client sends. ``retries: 0``: the service's audit must not run a
    failed job again behind syncd's back (syncd owns retries); products and plots are left where the job put them
    (``bypass``): syncd collects them from the shared folder."""
    return {
        "pipeline": pipeline,
        "site": site,
        "user": user,
        "function": None,
        "parameters": dict(parameters),
        "command": command,
        "results": None,
        "products": None,
        "plots": None,
        "tags": [tag],
        "event": None,
        "id": None,
        "creation": time.time(),
        "start": None,
        "stop": None,
        "attempt": 0,
        "status": "created",
        "timeout": timeout,
        "retries": 0,
        "priority": priority,
        "config": {
            "archive": {"results": True, "products": "bypass", "plots": "bypass", "logs": "move"},
            "metrics": False,
            "parent": None,
            "orgs": ["chimefrb"],
            "teams": None,
        },
        "notify": {"slack": {}},
    }


def view(query: Mapping[str, Any], fields: tuple[str, ...], skip: int = 0) -> dict[str, Any]:
    return {
        "query": dict(query),
        "projection": {**{name: True for name in fields}, "_id": False},
        "skip": skip,
        "limit": VIEW_LIMIT,
    }


def documents(data: Any) -> list[dict[str, Any]]:
    """The Works of a ``/view`` answer (anything else in it is ignored)."""
    if not isinstance(data, list):
        raise ValueError("not a JSON array")
    return [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]


def is_runner_default(results: Any, command: list[str]) -> bool:
    """The runner's own record of a command that exited 0 (its output went to syncd's log files instead)."""
    return isinstance(results, dict) and set(results) == RUNNER_RESULT_KEYS and results.get("args") == command


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def state_of(doc: Mapping[str, Any], *, cancelled: bool = False) -> RemoteStatus:
    """How a Work stands. The runner reports no exit code (a non-zero exit is only ``failure``): the wrapper's exit
    file is the truth; a failure that lasted its whole timeout was stopped by the runner."""
    word = str(doc.get("status", ""))
    started, ended = _number(doc.get("start")), _number(doc.get("stop"))
    if word in ("created", "queued"):
        state, message = RemoteState.QUEUED, ""
    elif word == "running":
        state, message = RemoteState.RUNNING, ""
    elif word == "success":
        state, message = RemoteState.SUCCEEDED, ""
    elif word == "failure" and cancelled:
        state, message = RemoteState.CANCELLED, "cancelled while queued; the runner took it but did not run it"
    elif word == "failure":
        results = doc.get("results")
        timeout = _number(doc.get("timeout"))
        if isinstance(results, dict) and "error" in results:
            state, message = RemoteState.FAILED, f"the site runner failed: {results['error']}"
        elif started is not None and ended is not None and timeout is not None and ended - started >= timeout - 0.5:
            state, message = RemoteState.TIMED_OUT, f"the site runner stopped the job at its timeout ({timeout:.0f}s)"
        else:
            state, message = RemoteState.FAILED, "the site runner reports the job failed"
    else:
        state, message = RemoteState.UNKNOWN, f"the buckets service reports a state syncd does not know: {word!r}"
    return RemoteStatus(state, word, message=message, started=started, ended=ended)
