"""Cloud Kotta's wire shapes: the form fields syncd sends, the answers it reads. Behaviour is in
:mod:`syncd.backends.kotta.backend`; the protocol, call by call, in ``shared/protocols/kotta.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from syncd.backends.base import RemoteState, RemoteStatus

#: the words ``list_tasks`` may show, and what they mean while a job is not over
LISTED: dict[str, RemoteState] = {
    "pending": RemoteState.QUEUED,
    "staging_inputs": RemoteState.RUNNING,
    "processing": RemoteState.RUNNING,
    "staging_outputs": RemoteState.RUNNING,
    "active": RemoteState.RUNNING,
    # the executor's word for an exception in the application; it goes on to stage outputs and ends later
    "Failed": RemoteState.RUNNING,
}
#: words after which ``status_task`` tells how the job ended
ENDED = frozenset({"completed", "failed", "cancelled"})
WALLTIME_EXCEEDED = 1001
KILLED_BY_REQUEST = 1002
#: the ``reason`` of a Fail answer that means the tokens were refused (the last is the server's token-check bug)
AUTH_REASONS = frozenset({"Failed to authenticate", "access_token missing", "'user_id'"})


def fail_reason(data: Any) -> str | None:
    """The reason of a ``{"status": "Fail", "reason": ...}`` answer (sent with HTTP 200), else None."""
    if isinstance(data, dict) and data.get("status") == "Fail":
        reason = data.get("reason")
        return reason if isinstance(reason, str) else json.dumps(reason)
    return None


def is_auth_reason(reason: str) -> bool:
    """The tokens were refused: Kotta's own words, or Amazon's answer to a refresh token it refused
    (``{"error": "invalid_grant", ...}``, passed on as the reason)."""
    if reason in AUTH_REASONS:
        return True
    try:
        data = json.loads(reason)
    except ValueError:
        return False
    return isinstance(data, dict) and "error" in data


def listed(data: dict) -> dict[str, str]:
    """``list_tasks``: job id → status word."""
    items = data.get("items") or {}
    return {str(i["job_id"]): str(i.get("status", "")) for i in items.values() if isinstance(i, dict) and "job_id" in i}


def stamps(data: dict) -> dict[str, str]:
    """``list_tasks``: job id → submit stamp (``YYYY-MM-DD HH:MM:SS`` in the server's time: sorts, but is no clock)."""
    items = data.get("items") or {}
    return {
        str(i["job_id"]): str(i.get("submit_stamp", ""))
        for i in items.values()
        if isinstance(i, dict) and "job_id" in i
    }


_LINK = re.compile(r'^<a href="(.*)">(.*)</a>$', re.DOTALL)
_NO_LINK = re.compile(r"^<i>(.*)</i>$", re.DOTALL)


def parse_link(text: str) -> tuple[str, str | None]:
    """An output of ``status_task``: (name, presigned GET URL), or (name, None) when the file is not in the bucket."""
    if match := _LINK.match(text):
        return match.group(2), match.group(1)
    if match := _NO_LINK.match(text):
        return match.group(1), None
    return text, None


@dataclass(frozen=True)
class JobRecord:
    """What ``status_task`` shows of a job (its ``items`` are one-key objects in no order; outputs repeat)."""

    status: str
    jobname: str | None = None
    error: str | None = None
    error_code: int | None = None
    reason: str | None = None
    walltime: int | None = None  # seconds
    outputs: dict[str, str | None] = field(default_factory=dict)  # name → URL, None when the file is absent


def job_record(data: dict) -> JobRecord:
    fields: dict[str, Any] = {}
    outputs: dict[str, str | None] = {}
    for item in (data.get("items") or {}).values():
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == "outputs" and isinstance(value, str):
                name, url = parse_link(value)
                outputs[name] = url if url is not None else outputs.get(name)
            else:
                fields[key] = value
    code = fields.get("ERROR_CODE")
    walltime = fields.get("walltime")
    return JobRecord(
        status=str(data.get("status", fields.get("status", ""))),
        jobname=_text(fields.get("jobname")),
        error=_text(fields.get("ERROR")),
        reason=_text(fields.get("reason")),
        error_code=int(code)
        if isinstance(code, (int, float)) or (isinstance(code, str) and code.lstrip("-").isdigit())
        else None,
        walltime=int(walltime) if isinstance(walltime, (int, float)) else None,
        outputs=outputs,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def state_of_word(word: str) -> RemoteStatus:
    """A job that has not ended, from the word ``list_tasks`` shows."""
    state = LISTED.get(word, RemoteState.UNKNOWN)
    message = "Kotta's executor reported an error; it goes on to stage the outputs" if word == "Failed" else ""
    if state is RemoteState.UNKNOWN:
        message = f"Kotta reports a state syncd does not know: {word!r}"
    return RemoteStatus(state, word, message=message)


def state_of(record: JobRecord) -> RemoteStatus:
    """How a job stands, from ``status_task``. Exit codes are not reported: the wrapper's exit file is the truth
    (Kotta's ``ERROR_CODE`` mixes the script's code with its own 1001 and 1002)."""
    word = record.status
    if word == "completed":
        if record.error:  # "Failed" was written, then the executor finished the job as if nothing happened
            return RemoteStatus(RemoteState.FAILED, word, message=f"Kotta's executor failed: {record.error}")
        return RemoteStatus(RemoteState.SUCCEEDED, word)
    if word == "failed":
        if record.error_code == WALLTIME_EXCEEDED:
            minutes = f" ({record.walltime // 60} min)" if record.walltime else ""
            return RemoteStatus(RemoteState.TIMED_OUT, word, message=f"Kotta stopped the job at its walltime{minutes}")
        if record.error_code == KILLED_BY_REQUEST:
            return RemoteStatus(RemoteState.CANCELLED, word, message="Kotta killed the job on request (its web UI)")
        if record.error_code is None and not record.error:
            # status is written before ERROR_CODE: the outcome is not all there yet
            return RemoteStatus(RemoteState.RUNNING, word, message="Kotta is still writing the job's outcome")
        return RemoteStatus(
            RemoteState.FAILED, word, message=record.error or f"the job's script exited {record.error_code}"
        )
    if word == "cancelled":
        why = record.reason or "cancelled"
        return RemoteStatus(RemoteState.CANCELLED, word, message=f"cancelled in Kotta ({why})")
    return state_of_word(word)


def s3_uri(upload_url: str) -> str:
    """The ``s3://bucket/key`` of an ``upload_url`` answer, for the job's inputs: the bucket is the first label of
    a virtual-hosted URL (``klab-jobs.s3.amazonaws.com``), else the first segment of a path-style one."""
    parts = urlsplit(upload_url)
    path = unquote(parts.path)
    host = parts.hostname or ""
    first, _, rest = path.lstrip("/").partition("/")
    if rest.startswith("uploads/") or not re.match(r"^[a-z0-9][a-z0-9.-]*\.s3[.-]", host):
        return f"s3://{first}/{rest}"
    return f"s3://{host.split('.')[0]}{path}"


def token_in(text: str, name: str) -> str:
    """The token named ``name`` (``access_token``, ``refresh_token``) in what a token source holds: the bare token,
    the JSON credentials Kotta's /refresh_token page shows, or the "Login Success" URL (or its query string)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return text
        value = data.get(name) if isinstance(data, dict) else None
        return value if isinstance(value, str) else ""
    if f"{name}=" in text:
        query = urlsplit(text).query or urlsplit(text).fragment or text
        values = parse_qs(query).get(name)
        return values[-1] if values else ""
    return text


def submit_form(
    *,
    jobname: str,
    queue: str,
    walltime_minutes: int,
    executable: str,
    script: str,
    script_name: str,
    outputs: list[str],
    stdout: str,
    stderr: str,
    input_urls: list[str],
) -> dict[str, str]:
    """``submit_task`` for a ``script`` job. Every input is its own ``input_url<n>`` field (a URL holds no comma
    to split on), and outputs are declared by name: Kotta uploads nothing else."""
    form = {
        "jobtype": "script",
        "queue": queue,
        "walltime": str(walltime_minutes),
        "jobname": jobname,
        "executable": executable,
        "script": script,
        "script_name": script_name,
        "outputs": ",".join(outputs),
        "output_file_stdout": stdout,
        "output_file_stderr": stderr,
    }
    form.update({f"input_url_{n:04d}": url for n, url in enumerate(input_urls)})
    return form
