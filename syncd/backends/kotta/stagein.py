"""How a job's inputs travel to Kotta: on their own through ``upload_url``, inside the control archive, or by
presigned URL from the inbox's storage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncd.backends.base import JobSpec, StagingArea
from syncd.errors import InputError, PermanentError
from syncd.intake.manifest import InputFile

#: inputs at least this big are uploaded on their own (and not again while unchanged); smaller ones ride in
#: the control archive
ALONE_FROM = 1024 * 1024
#: at most this many inputs travel on their own: each is a form field, and Kotta refuses a form over 100 KiB
MAX_ALONE = 400


@dataclass
class Plan:
    links: dict[str, str] = field(default_factory=dict)  # input path → the file in Kotta's job folder holding it
    carried: dict[str, Path] = field(default_factory=dict)  # control/blobs/<n> → the input file
    fetch: dict[str, str] = field(default_factory=dict)  # file name → presigned URL (storage inputs)
    alone: list[tuple[InputFile, str]] = field(default_factory=list)  # uploaded on their own, under that name


def plan(inputs: Sequence[InputFile], staging: StagingArea | None, url_expiry: float) -> Plan:
    """Where each input goes; with ``staging``, every input is put there (idempotent) and fetched by URL."""
    found = Plan()
    large = {i.relpath for i in sorted(inputs, key=lambda i: -i.size)[:MAX_ALONE] if i.size >= ALONE_FROM}
    for n, item in enumerate(sorted(inputs, key=lambda i: i.relpath)):
        blob = f"in-{hashlib.sha256(item.relpath.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}.dat"
        if staging is not None:
            info = as_input_error(inputs, staging.put_input, item)
            found.fetch[blob] = staging.url(info.key, expires=url_expiry)
            found.links[item.relpath] = blob
        elif item.relpath in large:
            found.alone.append((item, blob))
            found.links[item.relpath] = blob
        else:
            found.links[item.relpath] = carried = f"control/blobs/{n:06d}"
            found.carried[carried] = item.source
    return found


NO_URLS = (
    "backend '{name}' takes inputs from the inbox's storage (inputs: storage), but that storage cannot make "
    "URLs; use an s3 storage there, or inputs: upload"
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def presigns(spec: JobSpec) -> bool:
    """Whether the job's staging area can hand out URLs (an s3 storage; a file storage cannot)."""
    if spec.staging is None:
        return False
    try:
        spec.staging.url(spec.staging.input_key(".probe"), expires=60)
    except PermanentError:
        return False
    return True


def as_input_error(inputs: Sequence[InputFile], action: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``action(*args, **kw)``; an input that vanished or cannot be read is the user's to fix (InputError)."""
    try:
        return action(*args, **kw)
    except (FileNotFoundError, PermissionError) as exc:
        for item in inputs:
            if exc.filename == str(item.source):
                why = (
                    "disappeared from the job folder while it was being staged; put it back"
                    if isinstance(exc, FileNotFoundError)
                    else "cannot be read by the user syncd runs as; make it readable"
                )
                raise InputError([f"{item.relpath}: {why}"]) from exc
        raise
