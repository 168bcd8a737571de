"""The options of a ``type: kotta`` backend section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from syncd.backends.tokens import TokenOptions
from syncd.config import BackendOptions, Duration


class KottaOptions(BackendOptions):
    """A Cloud Kotta deployment and the user's Login with Amazon tokens."""

    url: str = Field(pattern=r"^https?://", description="the Kotta server, e.g. https://kotta.example.org:8888")
    access_token: TokenOptions = Field(
        description="the Login with Amazon access token (lives an hour: give a file or command that keeps it fresh)"
    )
    refresh_token: TokenOptions | None = Field(
        None, description="the refresh token; Kotta exchanges it for a fresh access token on submit and upload"
    )
    queue: Literal["Test", "Prod"] = Field("Test", description="Kotta's queue: Test or Prod")
    default_walltime: Duration = Field(
        5 * 3600.0,
        gt=0,
        description="walltime of a job whose manifest sets neither timeout nor resources.walltime "
        "(Kotta stops nothing else: every job gets one)",
    )
    inputs: Literal["auto", "upload", "storage"] = Field(
        "auto",
        description="upload: through Kotta's upload_url; storage: presigned URLs into the inbox's S3 "
        "storage, fetched by the job; auto: storage when the inbox's storage is S3",
    )
    input_url_expiry: Duration = Field(
        7 * 86400.0, gt=0, le=7 * 86400.0, description="how long presigned input URLs live (storage inputs)"
    )
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
