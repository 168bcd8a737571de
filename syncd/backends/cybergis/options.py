"""The options of ``type: cybergis`` (documented in the README's config reference)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from syncd.backends.cybergis.api import DEFAULT_URL
from syncd.backends.tokens import TokenOptions
from syncd.config import BackendOptions, ConfigPath, Duration


class CybergisOptions(BackendOptions, TokenOptions):
    """A CyberGIS-Compute gateway, the JupyterHub user's token (:class:`TokenOptions`), the registered runner, and
    the folder through which data moves: one this host and the gateway both reach."""

    url: str = Field(DEFAULT_URL, pattern=r"^https?://", description="the gateway's address")
    prefix: str = Field(
        "v2",
        description="path prefix of the gateway's routes (the public gateway's proxy adds "
        "v2; '' for a core server reached directly)",
    )
    jupyterhub_host: str = Field(
        description="the JupyterHub the token belongs to, as the gateway lists it "
        "(host[:port], no scheme), e.g. jupyter.cigi.illinois.edu"
    )
    hpc: str | None = Field(None, description="the HPC to run on (default: the maintainer's default HPC)")
    maintainer: str = Field("community_contribution", description="the gateway's maintainer for the jobs")
    runner: str = Field(description="git id under which syncd's runner (examples/cybergis/runner) is registered")
    data_path: ConfigPath = Field(
        description="the folder on this host where each job's folder is staged and "
        "Globus-delivered results land; the gateway must reach it too"
    )
    server_data_path: str | None = Field(
        None,
        description="data_path as the gateway's server sees it (a path on its host): inputs go as a "
        "'local' data folder",
    )
    globus_endpoint: str | None = Field(None, description="the Globus collection that holds data_path")
    globus_path: str | None = Field(None, description="data_path's path within globus_endpoint")
    results_path: ConfigPath | None = Field(
        None,
        description="where the HPC's CyberGIS-Compute folders are mounted on this host: results are read "
        "there; without it they come by Globus into data_path",
    )
    globus_poll: Duration = Field(30.0, gt=0, description="how often a Globus transfer's status is asked")
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
    keep_data: bool = Field(False, description="keep each job's folder in data_path after its results are delivered")

    @field_validator("jupyterhub_host")
    @classmethod
    def _bare_host(cls, value: str) -> str:
        value = re.sub(r"^https?://", "", value.strip()).rstrip("/")
        if not value or "@" in value or "/" in value:
            raise ValueError("give the JupyterHub's host (and port), e.g. jupyter.cigi.illinois.edu")
        return value

    @model_validator(mode="after")
    def _a_way_for_data(self):
        if (self.globus_endpoint is None) != (self.globus_path is None):
            raise ValueError("globus_endpoint and globus_path go together: the collection, and data_path's path in it")
        if self.server_data_path is None and self.globus_endpoint is None:
            raise ValueError(
                "the gateway must reach data_path: set server_data_path (a path on the gateway's "
                "host) or globus_endpoint and globus_path (a Globus collection)"
            )
        if self.results_path is None and self.globus_endpoint is None:
            raise ValueError(
                "results come from results_path (the HPC's folders, mounted here) or by Globus "
                "(globus_endpoint and globus_path); set one"
            )
        return self

    @property
    def globus_results(self) -> bool:
        return self.results_path is None
