"""frb-master's swarm API: the paths and bodies syncd sends, the answers it reads. Behaviour is in
:mod:`syncd.backends.chime_swarm.backend`; the protocol, call by call, in ``shared/protocols/chime_frb.md``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from syncd.backends.base import RemoteState, RemoteStatus

SPAWN = "/v1/swarm/spawn-job"
JOBS = "/v1/swarm/jobs"
VERIFY = "/auth/verify"
REFRESH = "/auth/refresh"

#: Docker's rule for a service name, which the job name becomes
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9_.-]{0,61}[a-zA-Z0-9])?$")
#: a status request's regex stays below this many characters, encoded (front ends refuse request lines over 8 KiB)
MAX_PATTERN = 6000

#: Docker Swarm's task states (lowercase on the wire) while a job has not ended
WAITING = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"})
#: the spellings of success: Docker's word, and the one the SDK's own monitor counts
SUCCESS = frozenset({"complete", "completed"})
FAILED_WHY = {
    "failed": "the job's container exited with an error",
    "rejected": "the cluster rejected the job (an image it cannot pull, or a mount it cannot make)",
    "orphaned": "the node running the job was down for too long",
}
CANCELLED_WHY = {
    "shutdown": "Docker shut the job down",
    "remove": "the job's service was removed before it ended",
}

#: runs in the job's container: enters the job's folder on the site storage and starts the wrapper there with
#: stdout and stderr kept apart in the job's folder (the service's own log merges them); paths come as arguments
LAUNCHER = (
    'cd "$1" || exit 125; '
    'echo "syncd: running in $1; stdout and stderr are written to the job folder"; '
    'exec /bin/sh .syncd/run.sh >"$2" 2>"$3"'
)


def named(path: str, name: str) -> str:
    """``/v1/swarm/<path>/<name>``, the name percent-encoded (the SDK puts it in raw; a regex needs encoding)."""
    return f"/v1/swarm/{path}/{quote(name, safe='')}"


def exact(name: str) -> str:
    """A regex that matches ``name`` and nothing else (status and prune search names with a regex)."""
    return f"^{re.escape(name)}$"


def status_pattern(names: Sequence[str]) -> str:
    """One anchored regex for the ``job-status`` of all ``names``: exactly them, or, when that would make the
    request line too long, every name that starts with their common prefix (the caller compares names exactly).

    Anchored because the service searches: ``syncd-x`` alone would also match ``syncd-x-2``, the same job's
    second attempt."""
    unique = sorted(set(names))
    exact_names = f"^(?:{'|'.join(re.escape(n) for n in unique)})$"
    if len(quote(exact_names, safe="")) <= MAX_PATTERN:
        return exact_names
    return f"^{re.escape(os.path.commonprefix(unique))}"


def states(data: Any) -> dict[str, str]:
    """``job-status``: job name → state word (only string values count)."""
    if not isinstance(data, Mapping):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, str)}


def state_of(word: str) -> RemoteStatus:
    """How a job the service still shows stands. Exit codes are not reported: the wrapper's exit file is the truth."""
    word = word.strip().lower()
    if word in WAITING:
        return RemoteStatus(RemoteState.QUEUED, word)
    if word == "running":
        return RemoteStatus(RemoteState.RUNNING, word)
    if word in SUCCESS:
        return RemoteStatus(RemoteState.SUCCEEDED, word)
    if word in FAILED_WHY:
        return RemoteStatus(RemoteState.FAILED, word, message=FAILED_WHY[word])
    if word in CANCELLED_WHY:
        return RemoteStatus(RemoteState.CANCELLED, word, message=CANCELLED_WHY[word])
    return RemoteStatus(RemoteState.UNKNOWN, word, message=f"frb-master reports a state syncd does not know: {word!r}")


def spawn_body(
    *,
    image: str,
    job_name: str,
    work: str,
    stdout: str,
    stderr: str,
    mount_archiver: bool,
    swarm_network: bool,
    cpus: float,
    memory: int,
    memory_reservation: int,
    environment: Mapping[str, str],
) -> dict[str, Any]:
    """``spawn-job``: every key the SDK sends. The command is the constant launcher; the job's own command is in
    data files of its folder (:mod:`syncd.backends.wrapper`)."""
    return {
        "image_name": image,
        "command": ["/bin/sh", "-c", LAUNCHER, "syncd-launcher"],
        "arguments": [work, stdout, stderr],
        "job_name": job_name,
        "mount_archiver": mount_archiver,
        "swarm_network": swarm_network,
        "job_mem_limit": int(memory),
        "job_mem_reservation": int(min(memory_reservation, memory)),
        "job_cpu_limit": float(cpus),
        "job_cpu_reservation": float(cpus),
        "environment": dict(environment),
    }


def service_id(data: Any) -> str | None:
    """The ``ID`` of the service a spawn created."""
    value = data.get("ID") if isinstance(data, Mapping) else None
    return value if isinstance(value, str) and value else None
