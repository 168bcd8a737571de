"""The options of a ``type: chime-workflow`` backend section."""

from __future__ import annotations

from pydantic import Field

from syncd.backends.tokens import TokenOptions
from syncd.config import BackendOptions, ConfigPath, Duration

MAX_TIMEOUT = 259200.0  # the longest timeout a Work may carry


class ChimeWorkflowOptions(BackendOptions, TokenOptions):
    """A Workflow Buckets service, its access token (:class:`TokenOptions`, sent as ``x-access-token``), the
    pipeline bucket a site runner serves, and the folder this host and that runner share."""

    url: str = Field(
        pattern=r"^https?://", description="the buckets service, e.g. https://frb.chimenet.ca/workflow/buckets"
    )
    pipeline: str = Field(
        pattern=r"^[A-Za-z0-9-]{1,128}$", description="the bucket (pipeline name) the site's runner withdraws from"
    )
    site: str = Field(description="the site whose runner runs the jobs, as the workspace names it")
    user: str = Field(description="the user recorded in each Work")
    work_dir: ConfigPath = Field(
        description="the folder on this host where each job's folder is staged; the site runner must reach it"
    )
    runner_work_dir: str | None = Field(
        None, description="work_dir as the site runner sees it (default: the same path)"
    )
    products_dirs: list[ConfigPath] = Field(
        default_factory=list,
        description="folders on this host from which a Work's products and plots are delivered (besides work_dir); "
        "a path the service names anywhere else is not read",
    )
    priority: int = Field(3, ge=1, le=5, description="the Works' priority, 1 (lowest) to 5")
    default_timeout: Duration = Field(
        3600.0,
        gt=0,
        le=MAX_TIMEOUT,
        description="timeout of a job whose manifest sets neither timeout nor resources.walltime "
        "(the runner stops every Work at its timeout)",
    )
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(30.0, gt=0, description="seconds to wait for an answer")
