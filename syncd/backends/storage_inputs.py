"""Inputs a job fetches itself, by presigned URL, from the inbox's storage: what backends whose jobs do that
share (Cloud Kotta, ARC with ``inputs: storage``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from syncd.backends.base import JobSpec
from syncd.errors import InputError, PermanentError
from syncd.intake.manifest import InputFile

NO_URLS = (
    "backend '{name}' takes inputs from the inbox's storage (inputs: storage), but that storage cannot make "
    "URLs; use an s3 storage there, or inputs: upload"
)

#: ``fetch URL DEST`` for a job's shell script: whichever of curl, wget or Python the node has, failing on an
#: HTTP error or a cut-off body
FETCH_FUNCTION = """fetch() {
    if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 3 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
    else python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi
}"""


def presigns(spec: JobSpec) -> bool:
    """Whether the job's staging area can hand out URLs (an s3 storage; a file storage cannot)."""
    if spec.staging is None:
        return False
    try:
        spec.staging.url(spec.staging.input_key(".probe"), expires=60)
    except PermanentError:
        return False
    return True


def wanted(choice: str, spec: JobSpec, backend: str) -> bool:
    """Whether this job's inputs go through the storage, for a backend's ``inputs`` option (auto, upload or
    storage): ``storage`` on a storage that cannot make URLs is the config's mistake, said as such."""
    if choice == "upload":
        return False
    if presigns(spec):
        return True
    if choice == "storage":
        raise PermanentError(NO_URLS.format(name=backend))
    return False


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
