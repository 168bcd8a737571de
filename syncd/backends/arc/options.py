"""The options of a ``type: arc`` backend section."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from syncd.backends.tokens import TokenOptions
from syncd.config import BackendOptions, ConfigPath, Duration


class ArcOptions(BackendOptions):
    """An ARC-CE (A-REX) and the user's grid credential."""

    url: str = Field(
        pattern=r"^https://",
        description="the A-REX service endpoint, e.g. https://ce.example.org:443/arex (REST lives under /rest)",
    )
    certificate: ConfigPath | None = Field(
        None, description="the user's X.509 certificate (PEM); with key. REST 1.0 sites accept only this or a proxy"
    )
    key: ConfigPath | None = Field(None, description="the certificate's private key (PEM, not encrypted)")
    proxy: ConfigPath | None = Field(
        None, description="an X.509 proxy file (certificate and key in one PEM, e.g. made by arcproxy)"
    )
    token: TokenOptions | None = Field(
        None,
        description="a bearer token (REST 1.1 sites, ARC 7 and later); token, token_file, token_env or token_command",
    )
    ca_bundle: ConfigPath | None = Field(None, description="a PEM file of the CAs that may sign the CE's certificate")
    capath: ConfigPath | None = Field(
        None, description="a folder of hashed CA certificates, e.g. /etc/grid-security/certificates"
    )
    queue: str | None = Field(None, description="the CE's queue (default: the CE's default queue)")
    connect_timeout: Duration = Field(5.0, gt=0, description="seconds to wait for a connection")
    request_timeout: Duration = Field(60.0, gt=0, description="seconds to wait for an answer")
    inputs: Literal["upload", "storage", "auto"] = Field(
        "upload",
        description="upload: syncd PUTs each input into the job's session folder on the CE; storage: inputs are "
        "put into the inbox's S3 storage and the job fetches them by presigned URL on the worker node (which must "
        "reach that storage); auto: storage when the inbox's storage is S3",
    )
    input_url_expiry: Duration = Field(
        7 * 86400.0,
        gt=0,
        le=7 * 86400.0,
        description="how long presigned input URLs live (inputs: storage); a job still queued after that cannot "
        "fetch its inputs",
    )
    keep_on_ce: bool = Field(False, description="leave each job's session folder on the CE after delivery")

    @model_validator(mode="after")
    def _one_credential(self):
        given = [
            name
            for name, present in (
                ("certificate and key", self.certificate is not None or self.key is not None),
                ("proxy", self.proxy is not None),
                ("token", self.token is not None),
            )
            if present
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one credential: certificate and key, proxy, or token"
                + (f" (given: {', '.join(given)})" if given else "")
            )
        if (self.certificate is None) != (self.key is None):
            raise ValueError("certificate and key go together; give both")
        if self.ca_bundle is not None and self.capath is not None:
            raise ValueError("give ca_bundle or capath, not both")
        return self

    @property
    def verify(self) -> str | bool:
        """What ``requests`` checks the CE's certificate against."""
        trusted: Path | None = self.ca_bundle or self.capath
        return str(trusted) if trusted is not None else True
