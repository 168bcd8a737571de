"""Classify S3 failures into syncd's three kinds: transient, permanent, auth.

Messages name the endpoint, bucket and key and say what to do next. They never
carry credentials: botocore's messages don't, and we only add names we chose.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl

from syncd.errors import AuthError, PermanentError, SyncdError, TransientError
from syncd.fsutil import os_error
from syncd.storage.s3.http11 import ProxyError

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "AllAccessDisabled",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestTimeTooSkewed",
        "PreconditionFailed",
        "BadDigest",
        "IncompleteBody",
        "OperationAborted",
    }
)
_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")
_REGION = re.compile(rb"<Region>([a-z0-9-]{1,40})</Region>")
#: codes a region mismatch comes with: a redirect to the bucket's region, or a signature for the wrong one
REGION_CODES = frozenset({"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed"})


def code_from_body(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body, or ''."""
    match = _CODE.search(body or b"")
    return match.group(1).decode("ascii", "replace") if match else ""


def region_from(body: bytes, bucket_region: str | None) -> str | None:
    """The region a refusal names: the ``x-amz-bucket-region`` header, else ``<Region>`` in the error body."""
    if bucket_region:
        return bucket_region
    match = _REGION.search(body or b"")
    return match.group(1).decode("ascii") if match else None


def classify_status(
    status: int,
    code: str,
    where: str,
    endpoint: str,
    retry_after: str | None = None,
    region: str | None = None,
) -> SyncdError:
    """An error for an HTTP status and S3 error code at ``where`` (``bucket/key``). The code decides before the
    status: S3 answers 403 for a skewed clock and 400 or 301 for a wrong region, neither of them a credential
    problem. ``region`` is the region the server named, if it named one."""
    if code == "RequestTimeTooSkewed":
        return TransientError(
            f"{where}: the S3 server at {endpoint} refused the request because this host's clock differs from "
            f"its own by too much (RequestTimeTooSkewed); fix the clock (e.g. timedatectl set-ntp true); "
            f"syncd tries again"
        )
    if code in REGION_CODES or (status in (301, 307) and region):
        bucket = where.split("/", 1)[0]
        named = f"bucket '{bucket}' is in region {region}" if region else f"bucket '{bucket}' is in another region"
        return PermanentError(
            f"{where}: the S3 server at {endpoint} says {named} ({code or status}); "
            f"set region: {region or '<the bucket region>'} in this storage's config"
        )
    if code in AUTH_CODES or status in (401, 403):
        return AuthError(
            f"{where}: the S3 server at {endpoint} refused the credentials ({code or status}); "
            f"check access_key_id/secret_access_key (or the AWS profile) and the bucket policy"
        )
    if code == "NoSuchBucket":
        bucket = where.split("/", 1)[0]
        return PermanentError(
            f"{where}: bucket '{bucket}' does not exist at {endpoint}; create it "
            f"(or set create_buckets: true) or fix the bucket name"
        )
    if code == "NoSuchKey" or status == 404:
        return PermanentError(f"{where}: the object does not exist at {endpoint}")
    if code == "NotImplemented" or status == 501:
        return PermanentError(
            f"{where}: the S3 server at {endpoint} does not implement this request ({code or status}); "
            f"use a server that does, or a storage option that avoids it"
        )
    if code in TRANSIENT_CODES or status in (408, 412, 429) or status >= 500:
        hint = float(retry_after) if retry_after and retry_after.isdigit() else None
        return TransientError(
            f"{where}: the S3 server at {endpoint} answered {' '.join(filter(None, (str(status), code)))}",
            retry_after=hint,
        )
    return PermanentError(
        f"{where}: the S3 server at {endpoint} refused the request ({' '.join(filter(None, (str(status), code)))})"
    )


def classify(exc: BaseException, where: str, endpoint: str) -> BaseException:
    """Turn a botocore/urllib3/OS exception into a syncd error (others are returned unchanged)."""
    if isinstance(exc, SyncdError):
        return exc
    if type(exc).__module__.startswith(("botocore", "boto3", "s3transfer", "urllib3")):
        # Only the rare boto3 calls (bucket creation, multipart uploads) raise these: import on demand.
        return _classify_boto(exc, where, endpoint)
    if isinstance(exc, ProxyError):
        if exc.status == 407:
            return AuthError(
                f"{where}: {exc}; the proxy wants credentials: give them in its URL "
                f"(HTTPS_PROXY=http://user:password@host:port)"
            )
        return TransientError(f"{where}: {exc}; if this persists, check HTTP_PROXY, HTTPS_PROXY and NO_PROXY")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(
            f"{where}: the TLS certificate of {endpoint} is not trusted ({exc.verify_message}); "
            f"set ca_bundle to the CA's PEM file (or verify_tls: false on a test server)"
        )
    if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
        return TransientError(
            f"{where}: the connection to the S3 server at {endpoint} failed "
            f"({type(exc).__name__}); if this persists, check endpoint_url "
            f"and that the server is up"
        )
    if isinstance(exc, socket.gaierror):
        return TransientError(
            f"{where}: cannot resolve the host of {endpoint} ({exc.strerror}); check endpoint_url if this persists"
        )
    if isinstance(exc, OSError):
        if exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.EPIPE, errno.ETIMEDOUT):
            return TransientError(f"{where}: connection to {endpoint} failed ({exc.strerror})")
        return os_error(exc, where)
    return exc


def _classify_boto(exc: BaseException, where: str, endpoint: str) -> BaseException:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProxyConnectionError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        ReadTimeoutError as BotoReadTimeout,
    )
    from botocore.exceptions import (
        SSLError as BotoSSLError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(
            f"{where}: no usable S3 credentials were found; set access_key_id and "
            f"secret_access_key (e.g. from ${{ENV}} variables) or a profile, or the AWS_* variables"
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode") or 0)
        headers = meta.get("HTTPHeaders") or {}
        region = headers.get("x-amz-bucket-region") or error.get("Region")
        return classify_status(status, str(error.get("Code", "")), where, endpoint, headers.get("retry-after"), region)
    if isinstance(exc, ProxyConnectionError):
        return TransientError(
            f"{where}: the proxy for {endpoint} failed ({exc}); if this persists, check HTTP_PROXY, HTTPS_PROXY "
            f"and NO_PROXY"
        )
    if isinstance(exc, BotoSSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return PermanentError(
            f"{where}: the TLS certificate of {endpoint} is not trusted; "
            f"set ca_bundle to the CA's PEM file (or verify_tls: false on a test server)"
        )
    if isinstance(exc, (BotoConnectionError, BotoReadTimeout, ResponseStreamingError, Urllib3Error)):
        return TransientError(
            f"{where}: the connection to the S3 server at {endpoint} failed "
            f"({type(exc).__name__}); if this persists, check endpoint_url "
            f"and that the server is up"
        )
    if isinstance(exc, BotoCoreError):
        return PermanentError(f"{where}: {exc}")
    return exc
