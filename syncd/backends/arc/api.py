"""A-REX REST wire shapes: the ADL job description syncd sends, and the JSON answers it reads.

Behaviour is in :mod:`syncd.backends.arc.backend`; the protocol in ``shared/protocols/jasmin_arc.md``.
The JSON is a mechanical rendering of XML: a repeated element is a list, a single one an object (ARC 6) or a
one-item list (ARC 7), an empty list may be an empty body, and numbers are strings. :func:`items` reads all of them.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from syncd.backends.base import RemoteState, RemoteStatus

ADL_NS = "http://www.eu-emi.eu/es/2010/12/adl"
#: the REST versions syncd speaks, best first
VERSIONS = ("1.1", "1.0")
#: REST states (``arcrest:<STATE>``) of jobs that have not ended
WAITING = {"ACCEPTING", "ACCEPTED", "PREPARING", "PREPARED", "SUBMITTING", "QUEUING", "HELD"}
RUNNING = {"RUNNING", "EXITINGLRMS", "OTHER", "EXECUTED", "FINISHING", "KILLING"}
CANCELLED_BY_REQUEST = re.compile(r"cancel+ed by external request|killed by", re.IGNORECASE)
#: the message of a ``FAILED`` job whose description carries no reason
NO_REASON = "the CE reports the job failed"
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def items(value: Any) -> list:
    """A JSON collection as a list, whichever way the server rendered it (absent, "", object, list)."""
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def text(value: Any) -> str:
    """A leaf as text: ARC renders ``<file size="3">a</file>`` as ``{"_text": ...}`` in some versions."""
    if isinstance(value, dict):
        value = value.get("_text", value.get("#text", ""))
    return "" if value is None else str(value)


def versions(data: Any) -> list[str]:
    """``GET <endpoint>/rest``: the versions the server offers."""
    return [text(v) for v in items(data.get("version") if isinstance(data, dict) else None)]


def pick_version(offered: Sequence[str], *, token: bool) -> str | None:
    """The best version both sides speak; tokens need 1.1."""
    for version in VERSIONS:
        if version in offered and (version != "1.0" or not token):
            return version
    return None


def xml_safe(value: str) -> str:
    """XML 1.0 cannot carry control characters (other than tab and newlines) at all, escaped or not."""
    if _XML_UNSAFE.search(value):
        raise ValueError("contains a control character XML cannot carry")
    return value


def adl(
    *,
    name: str,
    executable: str,
    arguments: Sequence[str],
    stdout: str,
    stderr: str,
    env: Mapping[str, str],
    inputs: Sequence[str],
    queue: str | None = None,
    slots: int | None = None,
    memory_bytes: int | None = None,
    walltime_seconds: int | None = None,
) -> bytes:
    """An ADL ``ActivityDescription``, built as a tree (every value escaped by the serialiser). Inputs are declared
    without a source: the client uploads them. The whole session folder (``/``) is kept as output."""
    ET.register_namespace("", ADL_NS)

    def sub(parent: ET.Element, tag: str, value: str | None = None) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ADL_NS}}}{tag}")
        if value is not None:
            element.text = xml_safe(value)
        return element

    root = ET.Element(f"{{{ADL_NS}}}ActivityDescription")
    sub(sub(root, "ActivityIdentification"), "Name", name)
    app = sub(root, "Application")
    exe = sub(app, "Executable")
    sub(exe, "Path", executable)
    for arg in arguments:
        sub(exe, "Argument", arg)
    sub(app, "Output", stdout)
    sub(app, "Error", stderr)
    for key, value in env.items():
        pair = sub(app, "Environment")
        sub(pair, "Name", key)
        sub(pair, "Value", value)
    resources = sub(root, "Resources")
    if memory_bytes:
        sub(resources, "IndividualPhysicalMemory", str(int(memory_bytes)))
    if slots:
        sub(sub(resources, "SlotRequirement"), "NumberOfSlots", str(int(slots)))
    if queue:
        sub(resources, "QueueName", queue)
    if walltime_seconds:
        sub(resources, "WallTime", str(int(walltime_seconds)))
    staging = sub(root, "DataStaging")
    for relpath in inputs:
        sub(sub(staging, "InputFile"), "Name", relpath)
    sub(sub(staging, "OutputFile"), "Name", "/")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


@dataclass(frozen=True)
class Entry:
    """One job's part of a bulk answer."""

    id: str
    code: int
    reason: str
    data: dict

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def entries(data: Any) -> list[Entry]:
    """The per-job entries of a bulk answer (``{"job": ...}``), in the order the server gave them."""
    found = []
    for item in items(data.get("job") if isinstance(data, dict) else None):
        if not isinstance(item, dict):
            continue
        code = text(item.get("status-code"))
        found.append(
            Entry(
                id=text(item.get("id")),
                code=int(code) if code.isdigit() else 0,
                reason=text(item.get("reason")),
                data=item,
            )
        )
    return found


def job_ids(data: Any) -> list[str]:
    """``GET /jobs``: the ids of the caller's jobs."""
    return [text(item.get("id")) for item in items(data.get("job") if isinstance(data, dict) else None) if item]


def name(value: Any) -> str:
    """A file name from a listing. A-REX 6 escapes each byte of a UTF-8 name as its own ``\\u00XX``, so a name whose
    characters are all below 256 and that reads as UTF-8 once they are taken as bytes is read that way."""
    found = text(value)
    try:
        return found.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return found


def listing(data: Any) -> tuple[list[str], list[str]]:
    """A session folder listing: (files, folders)."""
    if not isinstance(data, dict):
        return [], []
    return [name(f) for f in items(data.get("file"))], [name(d) for d in items(data.get("dir"))]


def activity(entry: Entry) -> dict:
    """The GLUE2 ``ComputingActivity`` of an ``action=info`` entry ({} while the CE has not written it)."""
    document = entry.data.get("info_document")
    found = document.get("ComputingActivity") if isinstance(document, dict) else None
    return found if isinstance(found, dict) else {}


def rest_state(info: dict) -> str | None:
    """The ``arcrest:`` state among an activity's states."""
    for state in items(info.get("State")):
        if text(state).startswith("arcrest:"):
            return text(state)[len("arcrest:") :]
    return None


def status_of(entry: Entry) -> RemoteStatus:
    """How a job stands, from its ``action=info`` entry."""
    status = _status_of(entry)
    info = activity(entry)
    return replace(status, started=_stamp(info.get("StartTime")), ended=_stamp(info.get("EndTime")))


def _status_of(entry: Entry) -> RemoteStatus:
    if entry.code == 404:
        return RemoteStatus(RemoteState.UNKNOWN, "None", message=f"the CE does not know job {entry.id}")
    if not entry.ok:
        return RemoteStatus(RemoteState.UNKNOWN, str(entry.code), message=f"the CE said {entry.reason!r}")
    info = activity(entry)
    state = rest_state(info)
    if state is None:
        # A job the information system has not described yet (it writes every few seconds): just accepted.
        return RemoteStatus(RemoteState.QUEUED, "ACCEPTING", message="the CE has not described the job yet")
    exit_text = text(info.get("ExitCode"))
    exit_code = int(exit_text) if re.fullmatch(r"-?\d+", exit_text) else None
    errors = "; ".join(text(e) for e in items(info.get("Error")) if text(e))
    if state in WAITING:
        return RemoteStatus(RemoteState.QUEUED, state)
    if state in RUNNING:
        return RemoteStatus(RemoteState.RUNNING, state)
    if state == "KILLED" or (state == "FAILED" and CANCELLED_BY_REQUEST.search(errors)):
        return RemoteStatus(RemoteState.CANCELLED, state, message=errors or "killed on request")
    if state == "FINISHED":
        if exit_code not in (0, None):
            return RemoteStatus(RemoteState.FAILED, state, exit_code=exit_code, message=f"the job exited {exit_code}")
        return RemoteStatus(RemoteState.SUCCEEDED, state, exit_code=exit_code)
    if state == "FAILED":
        return RemoteStatus(
            RemoteState.FAILED,
            state,
            exit_code=exit_code if exit_code is not None and exit_code >= 0 else None,
            message=errors or NO_REASON,
        )
    if state == "WIPED":
        return RemoteStatus(RemoteState.UNKNOWN, state, message="the CE has wiped the job")
    return RemoteStatus(RemoteState.UNKNOWN, state, message=f"the CE reports a state syncd does not know: {state!r}")


def unexplained(status: RemoteStatus) -> bool:
    """A ``FAILED`` job whose description gave no reason. The information system renders a job's terminal
    state from its ``.failed`` file when it next runs, and has been seen to publish ``FAILED`` with no
    reason for a job that was being killed; the control folder's own ``failed`` file is then the word."""
    return status.state is RemoteState.FAILED and status.native == "FAILED" and status.message == NO_REASON


def explained(status: RemoteStatus, failure: str) -> RemoteStatus:
    """``status`` once the job's ``diagnose/failed`` text is known: killed on request, or failed for it."""
    reason = "; ".join(line.strip() for line in failure.splitlines() if line.strip())
    if CANCELLED_BY_REQUEST.search(reason):
        return replace(status, state=RemoteState.CANCELLED, exit_code=None, message=reason)
    return replace(status, message=reason or NO_REASON)


def _stamp(value: Any) -> float | None:
    """``2026-12-03T10:29:09Z`` as a Unix time."""
    from datetime import UTC, datetime

    try:
        return datetime.strptime(text(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
