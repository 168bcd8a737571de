"""slurmrestd wire shapes (OpenAPI v0.0.36–v0.0.38 and later): requests built, responses read.

Only shapes live here; behaviour (auth, retries classification, staging) is in
:mod:`syncd.backends.slurm`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from syncd.backends.base import RemoteState

# Slurm's job states → syncd's normalised states.
STATE_MAP: dict[str, RemoteState] = {
    "PENDING": RemoteState.QUEUED,
    "CONFIGURING": RemoteState.QUEUED,
    "REQUEUED": RemoteState.QUEUED,
    "REQUEUE_FED": RemoteState.QUEUED,
    "REQUEUE_HOLD": RemoteState.QUEUED,
    "RESV_DEL_HOLD": RemoteState.QUEUED,
    "RESIZING": RemoteState.RUNNING,
    "RUNNING": RemoteState.RUNNING,
    "COMPLETING": RemoteState.RUNNING,
    "STAGE_OUT": RemoteState.RUNNING,
    "SIGNALING": RemoteState.RUNNING,
    "SUSPENDED": RemoteState.RUNNING,
    "STOPPED": RemoteState.RUNNING,
    "COMPLETED": RemoteState.SUCCEEDED,
    "FAILED": RemoteState.FAILED,
    "OUT_OF_MEMORY": RemoteState.FAILED,
    "NODE_FAIL": RemoteState.FAILED,
    "BOOT_FAIL": RemoteState.FAILED,
    "DEADLINE": RemoteState.FAILED,
    "PREEMPTED": RemoteState.FAILED,
    "SPECIAL_EXIT": RemoteState.FAILED,
    "REVOKED": RemoteState.FAILED,
    "CANCELLED": RemoteState.CANCELLED,
    "TIMEOUT": RemoteState.TIMED_OUT,
}
# Slurm error numbers that mean "no such job".
INVALID_JOB_ID = 2017


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    name: str
    comment: str
    state: str  # Slurm's own word, e.g. COMPLETED or OUT_OF_MEMORY
    exit_status: int | None  # decoded from the wait status
    signal: int | None
    reason: str
    start_time: float | None
    end_time: float | None

    @property
    def normalised(self) -> RemoteState:
        state = STATE_MAP.get(self.state, RemoteState.UNKNOWN)
        if state is RemoteState.SUCCEEDED and self.exit_status not in (0, None):
            return RemoteState.FAILED
        return state


def decode_wait_status(raw: Any) -> tuple[int | None, int | None]:
    """(exit status, signal) from Slurm's raw wait status: ``exit 3`` → 768, SIGTERM → 15."""
    if isinstance(raw, Mapping):  # v0.0.39+: {"status": ..., "return_code": ..., "signal": {...}}
        signal = (raw.get("signal") or {}).get("signal_id") if isinstance(raw.get("signal"), Mapping) else None
        code = raw.get("return_code")
        code = code.get("number") if isinstance(code, Mapping) else code
        return (int(code) if code is not None else None), (int(signal) if signal else None)
    if raw is None:
        return None, None
    raw = int(raw)
    if raw & 0x7F:
        signal = raw & 0x7F
        return 128 + signal, signal
    return (raw >> 8) & 0xFF, None


def _number(value: Any) -> float | None:
    if isinstance(value, Mapping):  # v0.0.39+: {"set": true, "number": N}
        value = value.get("number") if value.get("set", True) else None
    return float(value) if value not in (None, 0) else None


def parse_job(data: Mapping[str, Any]) -> SlurmJob:
    state = data.get("job_state", "")
    if isinstance(state, list):  # v0.0.39+ lists the state with its flags
        state = state[0] if state else ""
    exit_status, signal = decode_wait_status(data.get("exit_code"))
    return SlurmJob(
        job_id=str(data.get("job_id")),
        name=data.get("name") or "",
        comment=data.get("comment") or "",
        state=str(state),
        exit_status=exit_status,
        signal=signal,
        reason=data.get("state_reason") or "",
        start_time=_number(data.get("start_time")),
        end_time=_number(data.get("end_time")),
    )


def error_list(body: Any) -> list[Mapping[str, Any]]:
    if isinstance(body, Mapping) and isinstance(body.get("errors"), list):
        return [e for e in body["errors"] if isinstance(e, Mapping)]
    return []


def describe_errors(errors: list[Mapping[str, Any]]) -> str:
    return (
        "; ".join(
            f"{e.get('description') or e.get('error') or 'error'} ({e.get('source', '?')}, errno {e.get('error_number')})"
            for e in errors
        )
        or "no error detail"
    )


def submit_body(
    *,
    script: str,
    name: str,
    comment: str,
    workdir: str,
    environment: Mapping[str, str],
    stdout: str,
    stderr: str,
    time_limit_seconds: float | None,
    partition: str | None,
    account: str | None,
    qos: str | None,
    cpus: int | None,
    memory_bytes: int | None,
    gpus: int | None,
) -> dict[str, Any]:
    job: dict[str, Any] = {
        "name": name,
        "comment": comment,
        "current_working_directory": workdir,
        "environment": dict(environment),
        "standard_output": stdout,
        "standard_error": stderr,
        "requeue": False,
    }
    if time_limit_seconds:
        job["time_limit"] = max(1, math.ceil(time_limit_seconds / 60))
    if partition:
        job["partition"] = partition
    if account:
        job["account"] = account
    if qos:
        job["qos"] = qos
    if cpus:
        job["cpus_per_task"] = cpus
    if memory_bytes:
        job["memory_per_node"] = max(1, math.ceil(memory_bytes / (1024 * 1024)))
    if gpus:
        job["gres"] = f"gpu:{gpus}"
    return {"script": script, "job": job}
