"""Qarnot's S3 side: the resource bucket syncd stages inputs into and the result bucket of each task.

Qarnot's storage is S3 with the account's e-mail (from ``GET /info``) as access key and the API token as
secret. Inputs go into one resource bucket per backend, under a prefix per job; the task sees only its
prefix, stripped. Results come back in a bucket per task. Every failure is classified by the S3 storage's
classifier (:mod:`syncd.storage.s3.errors`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from syncd.errors import AuthError, InputError
from syncd.storage.s3 import errors as s3_errors

#: files up to this size go in one PUT, so that their ETag is their MD5 (how syncd sees they are unchanged)
SINGLE_PUT = 256 * 2**20
_TRANSFER = TransferConfig(multipart_threshold=SINGLE_PUT, multipart_chunksize=64 * 2**20, max_concurrency=4)


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    etag: str

    @property
    def md5(self) -> str | None:
        """The MD5 an ETag is, for an object put in one request (a multipart ETag has a ``-N`` suffix)."""
        value = self.etag.strip('"')
        return value if len(value) == 32 and "-" not in value else None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Buckets:
    """An S3 client for one Qarnot account, rebuilt whenever the token changes."""

    def __init__(self, endpoint: str, timeout: tuple[float, float]):
        self.endpoint = endpoint
        self._timeout = timeout
        self._client: Any = None
        self._credentials: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def client(self, email: str, token: str) -> Any:
        with self._lock:
            if self._client is None or self._credentials != (email, token):
                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint,
                    aws_access_key_id=email,
                    aws_secret_access_key=token,
                    region_name="us-east-1",
                    config=BotoConfig(
                        s3={"addressing_style": "path"},
                        retries={"total_max_attempts": 1},
                        connect_timeout=self._timeout[0],
                        read_timeout=self._timeout[1],
                        request_checksum_calculation="when_required",
                    ),
                )
                self._credentials = (email, token)
            return self._client

    def _error(self, exc: BaseException, where: str) -> BaseException:
        error = s3_errors.classify(exc, where, f"Qarnot's storage at {self.endpoint}")
        if isinstance(error, AuthError):
            return AuthError(
                f"{where}: Qarnot's storage at {self.endpoint} refused the account's e-mail and API "
                f"token; check the token configured for the backend"
            )
        return error

    def ensure(self, s3: Any, bucket: str) -> None:
        try:
            s3.head_bucket(Bucket=bucket)
            return
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                raise self._error(exc, bucket) from None
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._error(exc, bucket) from None
        try:
            s3.create_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise self._error(exc, bucket) from None

    def listing(self, s3: Any, bucket: str, prefix: str = "") -> Iterator[Stored]:
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield Stored(item["Key"], int(item["Size"]), str(item.get("ETag", "")))
        except Exception as exc:  # noqa: BLE001
            if "NoSuchBucket" in str(exc):
                return
            raise self._error(exc, f"{bucket}/{prefix}") from None

    def put_if_changed(
        self, s3: Any, bucket: str, key: str, source: Path | bytes, known: Stored | None, relpath: str
    ) -> None:
        """Upload unless ``known`` (the object there now) has the same content."""
        try:
            if isinstance(source, bytes):
                size, md5 = len(source), hashlib.md5(source).hexdigest()
            else:
                size, md5 = source.stat().st_size, file_md5(source)
        except OSError as exc:
            raise InputError(
                [f"{relpath}: cannot be read ({exc.strerror}); make it readable or remove it from the job"]
            ) from None
        if known is not None and known.size == size and known.md5 == md5:
            return
        try:
            if isinstance(source, bytes):
                s3.put_object(Bucket=bucket, Key=key, Body=source)
            else:
                s3.upload_file(str(source), bucket, key, Config=_TRANSFER)
        except OSError as exc:
            raise InputError([f"{relpath}: cannot be read ({exc.strerror})"]) from None
        except Exception as exc:  # noqa: BLE001
            raise self._error(exc, f"{bucket}/{key}") from None

    def download(self, s3: Any, bucket: str, item: Stored, dest: Path) -> None:
        if dest.exists() and dest.stat().st_size == item.size:
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            s3.download_file(bucket, item.key, str(part))
        except Exception as exc:  # noqa: BLE001
            part.unlink(missing_ok=True)
            raise self._error(exc, f"{bucket}/{item.key}") from None
        part.replace(dest)

    def remove(self, s3: Any, bucket: str, prefix: str = "", *, bucket_too: bool = False) -> None:
        """Delete the objects under ``prefix`` (and the bucket); what is gone already is no error."""
        keys = [item.key for item in self.listing(s3, bucket, prefix)]
        try:
            for start in range(0, len(keys), 1000):
                s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
                )
            if bucket_too:
                s3.delete_bucket(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001
            if "NoSuchBucket" not in str(exc):
                raise self._error(exc, bucket) from None
