"""How a job's inputs travel to Kotta: on their own through ``upload_url``, inside the control archive, or by
presigned URL from the inbox's storage."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from syncd.backends.base import StagingArea
from syncd.backends.storage_inputs import as_input_error
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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
