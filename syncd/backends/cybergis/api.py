"""CyberGIS-Compute wire shapes (cybergis-compute-core "v2", as client 0.2.6 speaks it): requests built,
answers read, refusals classified. Behaviour is in :mod:`syncd.backends.cybergis.backend`.

The gateway's status codes say little (402 for a refused token, 403 for a failed Globus call, 200 for an unknown
job), so a refusal is read from the body's ``error`` key; the one HTTP classifier judges everything else.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.backends.base import JobSpec
from syncd.errors import AuthError, NotFoundError, PermanentError

DEFAULT_URL = "https://cgjobsup.cigi.illinois.edu"
#: param key that carries syncd's submit key: the job is found by it after a crash
MARKER = "syncd_key"
#: what the gateway says when it does not accept the token (its route handlers' words)
TOKEN_REFUSALS = ("invalid token", "cannot find jupyterhubhost in allowlist", "submit without login is not allowed")
NOT_FOUND_REFUSALS = ("invalid access", "entitynotfound", "could not find any entity")
ALREADY_SUBMITTED = "job already submitted or in queue"
NOT_HELD = "job is not in queue or running jobs"
GLOBUS_BUSY = "a globus job is currently running"
GLOBUS_FORGOTTEN = "failed to query globus"
#: the server's ceiling for every slurm field it checks (``JobUtil.validateSlurmConfig``)
DEFAULT_CEILING = {"cpu_per_task": 50, "gpus": 20, "memory": "50G", "time": "10:00:00"}
KIB = 1024
MIB = 1024 * 1024


def base_url(url: str, prefix: str) -> str:
    """``url`` with the path prefix the public gateway's proxy puts before every route (``/v2``) unless it is
    there already; an empty prefix speaks to a core server directly."""
    base, prefix = url.rstrip("/"), prefix.strip("/")
    return base if not prefix or base.endswith("/" + prefix) else f"{base}/{prefix}"


def encode_token(host: str, token: str) -> str:
    """``jupyterhubApiToken`` as the official client sends it: base64 of ``<host>@<token>``."""
    return base64.b64encode(f"{host}@{token}".encode()).decode("ascii")


class Refused(PermanentError):
    """The gateway answered with an ``error`` key (whatever its status code); ``said`` is its text."""

    def __init__(self, message: str, said: str):
        super().__init__(message)
        self.said = said


class RefusedToken(Refused, AuthError):
    pass


class RefusedUnknown(Refused, NotFoundError):
    pass


def refusal(data: Mapping[str, Any], *, service: str, what: str, status: int, host: str) -> Refused:
    said = str(data.get("error"))
    if messages := data.get("messages"):
        said += f" {messages}"
    said = " ".join(said.split())[:300]
    lowered = said.lower()
    how = f'while {what} (HTTP {status}): "{said}"'
    if any(word in lowered for word in TOKEN_REFUSALS):
        return RefusedToken(
            f"{service} refused the JupyterHub token of {host} {how}; check jupyterhub_host and "
            f"the token (a JupyterHub API token of a user the gateway admits)",
            said,
        )
    if any(word in lowered for word in NOT_FOUND_REFUSALS):
        return RefusedUnknown(f"{service} does not know what was asked for {how}", said)
    return Refused(f"{service} refused the request {how}", said)


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch of one of the gateway's JSON dates (``2024-03-21T10:00:00.000Z``)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class GatewayJob:
    """What syncd reads of a job object (``Helper.job2object``)."""

    id: str
    key: str | None  # syncd's marker in param
    initialized: float | None
    finished: float | None
    failed: bool  # isFailed (null, for a job the gateway never initialised, counts as not failed)
    result_folder: Mapping[str, Any] | None
    events: tuple[str, ...]  # event types; empty in GET /user/job, which loads no events
    data: Mapping[str, Any]

    @property
    def submitted(self) -> bool:
        """Known only from GET /job/{id}: the gateway never shows ``queuedAt``."""
        return "JOB_QUEUED" in self.events or self.initialized is not None or self.finished is not None


def parse_job(data: Any) -> GatewayJob | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("id"), str):
        return None
    param: Mapping[str, Any] = data["param"] if isinstance(data.get("param"), Mapping) else {}
    folder = data.get("remoteResultFolder")
    events: list[Any] = data["events"] if isinstance(data.get("events"), list) else []
    return GatewayJob(
        id=data["id"],
        key=param.get(MARKER) if isinstance(param.get(MARKER), str) else None,
        initialized=timestamp(data.get("initializedAt")),
        finished=timestamp(data.get("finishedAt")),
        failed=data.get("isFailed") is True,
        result_folder=folder if isinstance(folder, Mapping) and isinstance(folder.get("id"), str) else None,
        events=tuple(str(e.get("type")) for e in events if isinstance(e, Mapping)),
        data=data,
    )


def job_list(data: Any) -> list[GatewayJob]:
    jobs = data.get("job") if isinstance(data, Mapping) else None
    return [job for item in (jobs if isinstance(jobs, list) else []) if (job := parse_job(item)) is not None]


# -- slurm: syncd's resources as the gateway's slurm field, and the limits it enforces ----------------------------
def slurm_time(seconds: float) -> str:
    """``HH:MM:SS`` (``D-HH:MM:SS`` from a day on), whole minutes up: both Slurm and the gateway read it."""
    minutes = math.ceil(seconds / 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    return f"{days}-{hours:02d}:{minutes:02d}:00" if days else f"{hours:02d}:{minutes:02d}:00"


def slurm_memory(size: int) -> str:
    mib = math.ceil(size / MIB)
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def memory_kib(value: Any) -> int | None:
    """``8GB``, ``512M``, ``1p`` in KiB, read as the gateway reads them; None if it cannot."""
    text = str(value).lower().replace("b", "").strip()
    for unit, factor in (("p", KIB**3), ("g", KIB**2), ("m", KIB)):
        if text.endswith(unit) and text[:-1].strip().isdigit():
            return int(text[:-1]) * factor
    return None


def time_seconds(value: str) -> int | None:
    """``[D-]HH:MM:SS``, ``HH:MM``... in seconds (Slurm's reading)."""
    days, _, rest = str(value).rpartition("-")
    try:
        parts = [int(p) for p in rest.split(":")]
        base = int(days) * 86400 if days else 0
    except ValueError:
        return None
    if days:
        parts += [0] * (3 - len(parts))
        return base + parts[0] * 3600 + parts[1] * 60 + parts[2]
    return {1: lambda p: p[0] * 60, 2: lambda p: p[0] * 60 + p[1], 3: lambda p: p[0] * 3600 + p[1] * 60 + p[2]}.get(
        len(parts), lambda p: None
    )(parts)


def _rule_max(field: str, rule: Any) -> float | None:
    """A rule's ``max`` in the field's comparable unit (count, KiB, seconds)."""
    if not isinstance(rule, Mapping) or not isinstance(rule.get("max"), (int, float)) or rule["max"] <= 0:
        return None
    if field == "memory":
        return memory_kib(f"{rule['max']}{rule.get('unit', '')}")
    if field == "time":
        factor = {"Minutes": 60, "Hours": 3600, "Days": 86400}.get(str(rule.get("unit")))
        return rule["max"] * factor if factor else None
    return float(rule["max"])


def _value(field: str, value: Any) -> float | None:
    if field == "memory":
        return memory_kib(value)
    if field == "time":
        return time_seconds(value)
    return float(value) if isinstance(value, (int, float)) else None


def ceilings(hpc: Mapping[str, Any], git: Mapping[str, Any]) -> dict[str, float]:
    """The largest value of each slurm field the gateway accepts: the HPC's rules, the runner's manifest rules,
    the HPC's global cap and the server's defaults, whichever is smallest."""
    found: dict[str, float] = {}
    for field, default in DEFAULT_CEILING.items():
        candidates = [
            _rule_max(field, (hpc.get("slurm_input_rules") or {}).get(field)),
            _rule_max(field, (git.get("slurm_input_rules") or {}).get(field)),
            _value(field, (hpc.get("slurm_global_cap") or {}).get(field)),
            _value(field, default),
        ]
        found[field] = min(c for c in candidates if c is not None)
    return found


def describe(field: str, value: float) -> str:
    if field == "memory":
        return f"{value / KIB**2:g} GiB" if value >= KIB**2 else f"{value / KIB:g} MiB"
    if field == "time":
        return slurm_time(value)
    return f"{value:g}"


def slurm_request(spec: JobSpec, time_ceiling: float | None = None) -> dict[str, Any]:
    """The ``slurm`` field of the job. The time limit is the walltime, or the timeout plus a minute (syncd enforces
    the timeout itself, to the second; the gateway's limit is a backstop), never past ``time_ceiling``."""
    wanted = spec.resources
    slurm: dict[str, Any] = {}
    if wanted.get("cpus"):
        slurm["cpu_per_task"] = int(wanted["cpus"])
    if wanted.get("memory"):
        slurm["memory"] = slurm_memory(int(wanted["memory"]))
    limits = [t for t in (wanted.get("walltime"), spec.timeout + 60 if spec.timeout else None) if t]
    if limits:
        seconds = min(limits)
        if time_ceiling is not None and not wanted.get("walltime"):
            seconds = min(seconds, time_ceiling)
        slurm["time"] = slurm_time(seconds)
    if wanted.get("gpus"):
        slurm["gpus"] = int(wanted["gpus"])
    return slurm


def resource_problems(spec: JobSpec, limits: Mapping[str, float], where: str) -> list[str]:
    """What in ``spec`` the gateway would refuse, each with the allowed range."""
    problems = []
    slurm = slurm_request(spec)
    names = {"cpu_per_task": "resources.cpus", "memory": "resources.memory", "gpus": "resources.gpus"}
    for field, name in names.items():
        if field in slurm and (value := _value(field, slurm[field])) is not None and value > limits[field]:
            problems.append(
                f"{name}: {describe(field, value)} is more than {where} allows "
                f"(at most {describe(field, limits[field])}); ask for less or use another inbox"
            )
    walltime = spec.resources.get("walltime")
    for name, seconds in (("resources.walltime", walltime), ("timeout", spec.timeout)):
        if seconds and math.ceil(seconds / 60) * 60 > limits["time"]:
            problems.append(
                f"{name}: {slurm_time(seconds)} is longer than {where} allows "
                f"(at most {describe('time', limits['time'])}); shorten it or use another inbox"
            )
    return problems
