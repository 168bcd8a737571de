"""The options of a ``type: chime-swarm`` backend section."""

from __future__ import annotations

from pydantic import Field

from syncd.backends.tokens import TokenOptions
from syncd.config import BackendOptions, ConfigPath, Duration, Size


class ChimeSwarmOptions(BackendOptions):
    """frb-master's swarm API, the user's CHIME/FRB tokens, and the site storage the jobs and this host share."""

    url: str = Field(
        pattern=r"^https?://", description="frb-master, e.g. https://frb.chimenet.ca/frb-master (no /v1 suffix)"
    )
    access_token: TokenOptions = Field(
        description="the CHIME/FRB access token (a JWT, sent raw in the authorization header); "
        "refreshed through /auth/refresh before it expires"
    )
    refresh_token: TokenOptions | None = Field(
        None, description="the refresh token that /auth/refresh exchanges for a fresh access token"
    )
    image: str = Field(min_length=1, description="the container image every job runs in; it needs /bin/sh")
    work_folder: ConfigPath = Field(
        description="a folder on the site storage that this host and the cluster's jobs both see: each job gets "
        "<work_folder>/<submit key>/ for its inputs, outputs and logs"
    )
    job_work_folder: str | None = Field(
        None,
        pattern=r"^/",
        description="the same folder as the jobs see it (their mount of the site storage), when its path there "
        "differs from work_folder",
    )
    mount_archiver: bool = Field(True, description="mount the site's data archivers into the job (the site storage)")
    swarm_network: bool = Field(True, description="attach the job to the cluster's network")
    cpus: float = Field(1.0, gt=0, description="CPU cores of a job whose manifest sets no resources.cpus")
    memory: Size = Field(4 * 1024**3, gt=0, description="memory limit of a job whose manifest sets no resources.memory")
    memory_reservation: Size = Field(
        256 * 1024**2, gt=0, description="memory the cluster reserves for a job (at most its limit)"
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="environment of every job (the manifest's env is added)"
    )
    refresh_before: Duration = Field(
        300.0, description="refresh the access token when it expires sooner than this (read from the JWT's exp)"
    )
    keep_workdir: bool = Field(False, description="keep each job's folder after its results are delivered")
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
