"""Qarnot's wire shapes: the task JSON syncd sends and reads, its states, dates and filters (no behaviour).

Facts from shared/protocols/qarnot.md: paths hang off the base URL with no version; the task's
``shortname`` is client-chosen, DNS-safe, unique per user and usable in place of the uuid; paging is a
POST with ``{filter, token, maximumResults}`` answered by ``{data, nextToken, isTruncated}``; dates are
``YYYY-MM-DDTHH:MM:SSZ`` with or without microseconds; a task reports no exit code.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from syncd.backends.base import RemoteState

QUEUED = ("UnSubmitted", "Submitted", "PartiallyDispatched", "FullyDispatched")
RUNNING = ("PartiallyExecuting", "FullyExecuting", "UploadingResults", "DownloadingResults", "PendingCancel")
ENDED = {"Success": RemoteState.SUCCEEDED, "Failure": RemoteState.FAILED, "Cancelled": RemoteState.CANCELLED}
#: what the service says (in a 403 on submit) when the account's task quota is used up
MAX_TASKS = "maximum number of tasks reached"
#: in a 402 on submit: no machine matches the task's hardware constraints (any other 402: credits)
HARDWARE = "hardware constraint"
MAX_SHORTNAME = 63


def shortname(submit_key: str) -> str:
    """A DNS-safe name for a submit key (lower case, ``a-z0-9-``, at most 63 characters), the same every time."""
    name = re.sub(r"[^a-z0-9-]+", "-", submit_key.lower()).strip("-")
    return name[:MAX_SHORTNAME].rstrip("-") or "syncd"


def bucket_name(name: str) -> str:
    """An S3 bucket name (3-63 characters of ``a-z0-9-``, starting and ending alphanumeric)."""
    name = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return name if len(name) >= 3 else f"{name}-bucket"


def parse_date(value: Any) -> float | None:
    """A Unix time from ``2018-06-13T09:06:20Z`` or ``2018-06-13T09:06:20.537708Z`` (the SDK's two forms);
    None for anything else (a missing or unreadable date is no reason to fail a poll)."""
    if not isinstance(value, str):
        return None
    for form in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(value, form).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def state_of(native: str | None) -> RemoteState:
    if native in ENDED:
        return ENDED[native]
    if native in RUNNING:
        return RemoteState.RUNNING
    if native in QUEUED:
        return RemoteState.QUEUED
    return RemoteState.UNKNOWN


def errors_of(task: Mapping[str, Any]) -> str:
    """The task's own error messages (``errors: [{code, message, debug}]``), joined."""
    found = [str(e.get("message") or e.get("code") or "") for e in task.get("errors") or [] if isinstance(e, dict)]
    return "; ".join(m for m in found if m)


def tag_filter(tag: str) -> dict:
    return {"operator": "Equal", "field": "Tags", "value": tag}


def page_request(filter_: dict | None, token: str | None, maximum: int | None) -> dict:
    return {"filter": filter_, "token": token, "maximumResults": maximum}


def resource_bucket(bucket: str, prefix: str) -> dict:
    """A resource bucket of which the task sees only ``prefix``, with the prefix stripped from the paths."""
    return {
        "bucketName": bucket,
        "filtering": {"prefixFiltering": {"prefix": prefix}},
        "resourcesTransformation": {"stripPrefix": {"prefix": prefix}},
        "cacheTTLSec": None,
    }


def hardware_constraints(cpus: int | None, memory_bytes: int | None, gpus: int | None) -> list[dict]:
    found: list[dict] = []
    if cpus:
        found.append({"discriminator": "MinimumCoreHardwareConstraint", "coreCount": int(cpus)})
    if memory_bytes:
        found.append(
            {"discriminator": "MinimumRamHardwareConstraint", "minimumMemoryMB": -(-int(memory_bytes) // 2**20)}
        )
    if gpus:
        found.append({"discriminator": "GpuHardwareConstraint"})
    return found


def docker_image(image: str | None) -> list[tuple[str, str]]:
    """``repo[:tag]`` → the profile's ``DOCKER_REPO`` and ``DOCKER_TAG`` constants."""
    if not image:
        return []
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry's port
        return [("DOCKER_REPO", image)]
    return [("DOCKER_REPO", repo), ("DOCKER_TAG", tag)]


def task_body(
    *,
    name: str,
    short: str,
    profile: str,
    argv: Sequence[str],
    constants: Mapping[str, str],
    tags: Sequence[str],
    labels: Mapping[str, str],
    resources: dict,
    result_bucket: str,
    constraints: Mapping[str, str],
    hardware: Sequence[dict],
) -> dict:
    """The JSON of ``POST /tasks`` for one instance. ``DOCKER_CMD`` is syncd's constant wrapper command; user text
    travels only as data (constants, files in the resource bucket)."""
    return {
        "name": name,
        "shortname": short,
        "profile": profile,
        "poolUuid": None,
        "jobUuid": None,
        "instanceCount": 1,
        "constants": [
            {"key": "DOCKER_CMD", "value": shlex.join(argv)},
            *({"key": k, "value": v} for k, v in constants.items()),
        ],
        "constraints": [{"key": k, "value": v} for k, v in constraints.items()],
        "forcedConstants": [],
        "labels": dict(labels),
        "tags": list(tags),
        "dependencies": {"dependsOn": []},
        "advancedResourceBuckets": [resources],
        "resultBucket": result_bucket,
        "hardwareConstraints": list(hardware),
        "uploadResultsOnCancellation": True,
        # Kept until syncd has delivered the results, then deleted by syncd (never by the service first).
        "autoDeleteOnCompletion": False,
        "completionTimeToLive": "00:00:00",
    }
