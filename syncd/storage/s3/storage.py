"""``type: s3`` storage: any S3-compatible object store (AWS S3, MinIO, Ceph, SeaweedFS, …).

Object requests (LIST, HEAD, GET, PUT, DELETE) go through
:mod:`syncd.storage.s3.wire` (SigV4-signed requests over keep-alive pools),
because per-object CPU, not bandwidth, bounds many-small-file transfers; a boto3
client is built only for bucket creation and multipart uploads. boto3's own retries are switched off: every failure is classified
(:mod:`syncd.storage.s3.errors`) and retried by the one policy in the engine
and the mirror, never here.

Copies stay on the server: CopyObject up to ``copy_part_threshold`` (5 GiB, the most one
CopyObject may copy), above it a multipart upload of UploadPartCopy parts. Presigned URLs
(:meth:`S3Storage.presign`) come from botocore's SigV4 presigner on the same client.

Integrity: uploads store the SHA-256 of the content. A single-part upload sends Content-MD5 (the
server refuses a corrupted body) and puts the SHA-256 in the object's metadata ``sha256``; a
multipart upload hashes the file while its parts go up and attaches the SHA-256 as the object's
tag ``sha256`` (its metadata ``sha256-in: tagging`` says so), since metadata must be known before
the first part. Downloads verify that SHA-256 when present, else the server's full-object checksum,
else the MD5 of a single-part ETag, else the size; ranged downloads send ``If-Match`` so parts of two
versions are never mixed.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import ssl
import threading
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from pydantic import Field, PositiveInt, SecretStr

from syncd.config import ConfigPath, Duration, Size, StorageOptions
from syncd.errors import AuthError, PermanentError, SyncdError, TransientError
from syncd.storage.base import ObjectInfo, Storage, check_key
from syncd.storage.s3 import endpoints
from syncd.storage.s3.errors import classify
from syncd.storage.s3.http11 import Headers, pwrite_all
from syncd.storage.s3.wire import Endpoint, SignedHttp

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

CHUNK = 1024 * 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
SHA256_META = "sha256"
#: metadata of an object whose SHA-256 is its ``sha256`` tag instead (multipart uploads: see ``_upload_parts``)
SHA256_WHERE = "sha256-in"
#: the longest a SigV4 presigned URL may last
PRESIGN_MAX = 7 * 24 * 3600
#: the most parts one multipart upload may have
MAX_PARTS = 10_000
_SINGLE_PART_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d{1,5})$")


class S3StorageOptions(StorageOptions):
    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. http://127.0.0.1:8333 or https://minio.lab:9000 (default: AWS)"
    )
    region: str | None = Field(
        None, description="region used to sign requests (default: from the AWS config, else us-east-1)"
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="bucket in the path or in the host name; auto: path with endpoint_url, else virtual"
    )
    verify_tls: bool = Field(True, description="verify the server's TLS certificate")
    ca_bundle: ConfigPath | None = Field(None, description="PEM file of CA certificates to trust for TLS")
    access_key_id: SecretStr | None = Field(
        None, description="access key; write ${ENV_VAR}. Unset: the standard AWS credential chain"
    )
    secret_access_key: SecretStr | None = Field(None, description="secret key; write ${ENV_VAR}")
    session_token: SecretStr | None = Field(None, description="session token for temporary credentials")
    profile: str | None = Field(None, description="named profile from ~/.aws/credentials and ~/.aws/config")
    create_buckets: bool = Field(False, description="create a missing bucket instead of failing")
    connect_timeout: Duration = Field(10.0, description="how long to wait for a connection")
    read_timeout: Duration = Field(60.0, description="how long a response may stall before it is abandoned")
    max_connections: PositiveInt = Field(
        64,
        description="size of the HTTP connection pool; also the connections that small objects (up to "
        "1 MiB) of all mirrors at once are fetched over, from one thread each",
    )
    transfer_workers: PositiveInt = Field(
        16, description="threads transferring objects at once in a mirror or sync (uploads, objects over 1 MiB)"
    )
    part_size: Size = Field(
        32 * 1024 * 1024,
        gt=5 * 1024 * 1024 - 1,
        description="objects larger than this move in parallel parts of this size",
    )
    part_workers: PositiveInt = Field(8, description="parts of one large object transferred at once")
    copy_part_threshold: Size = Field(
        5 * GiB,
        gt=0,
        le=5 * GiB,
        description="objects larger than this are copied on the server in parts "
        "(UploadPartCopy) rather than by one CopyObject; at most 5GiB",
    )
    copy_part_size: Size = Field(
        512 * MiB, ge=5 * MiB, le=5 * GiB, description="size of the parts of a copy in parts (between 5MiB and 5GiB)"
    )


@dataclass(frozen=True)
class StaticCredentials:
    """Keys given in the config; also serves as its own frozen copy."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)

    def get_frozen_credentials(self) -> StaticCredentials:
        return self


def _etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def _if_match(expected: ObjectInfo) -> dict[str, str]:
    """Refuse any version but the listed one (a changed object is fetched again on the next pass), and ask for
    the checksum the server keeps for it, if it keeps one."""
    return {**({"If-Match": f'"{expected.etag}"'} if expected.etag else {}), **CHECKSUM_MODE}


#: asks S3 for the full-object checksum it keeps of an object uploaded with one
CHECKSUM_MODE = {"x-amz-checksum-mode": "ENABLED"}
#: the server's checksums syncd can verify, by preference (CRC32C and CRC64NVME need libraries syncd does not
#: depend on: such objects, like a multipart object with none, are checked by size)
SERVER_CHECKSUMS = (
    ("sha256", "x-amz-checksum-sha256"),
    ("sha1", "x-amz-checksum-sha1"),
    ("crc32", "x-amz-checksum-crc32"),
)
#: part sizes other tools use by default (boto3 and the AWS CLI 8 MiB, rclone 5 MiB, ...), tried after syncd's own
#: when a local file is compared with a multipart ETag
COMMON_PART_SIZES = (8 << 20, 5 << 20, 16 << 20, 64 << 20)


class _Crc32:
    name = "crc32"

    def __init__(self) -> None:
        self._value = 0

    def update(self, data) -> None:
        self._value = zlib.crc32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


class Check:
    """A running digest of the content and the value it must reach (its name says which checksum it is)."""

    def __init__(self, digest, expected: str):
        self.digest, self.expected, self.name = digest, expected, digest.name

    def update(self, data) -> None:
        self.digest.update(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def _check_for(headers: Headers, etag: str, md5_etag: bool, sha: str | None = None) -> Check | None:
    """How to check an object's content: syncd's SHA-256 (``sha``, else from the metadata), else the server's
    full-object checksum (a composite one, ``…-N``, would need the part sizes), else a single-part ETag's MD5,
    else nothing (size only)."""
    sha = sha or headers.get(f"x-amz-meta-{SHA256_META}")
    if sha:
        return Check(hashlib.sha256(), sha)
    for name, header in SERVER_CHECKSUMS:
        value = headers.get(header)
        if value and "-" not in value:
            try:
                expected = base64.b64decode(value, validate=True).hex()
            except ValueError:
                continue
            return Check(_Crc32() if name == "crc32" else hashlib.new(name), expected)
    return Check(hashlib.md5(), etag) if md5_etag else None


def multipart_etag(path: Path, part_size: int, parts: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in parts of ``part_size``: the MD5 of the parts' MD5s."""
    digests = b""
    with open(path, "rb") as handle:
        for _ in range(parts):
            digest = hashlib.md5()
            left = part_size
            while left and (chunk := handle.read(min(left, 1 << 20))):
                digest.update(chunk)
                left -= len(chunk)
            digests += digest.digest()
    return f"{hashlib.md5(digests).hexdigest()}-{parts}"


def _chunks(response, size: int) -> Iterator[memoryview]:
    """The body of an object of ``size`` bytes in chunks, read straight into one reused buffer."""
    buffer = memoryview(bytearray(max(1, min(CHUNK, size))))  # a small object needs no 1 MiB buffer
    while count := response.readinto(buffer):
        yield buffer[:count]


def _hash_file(path: Path, algorithm: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


class _BackgroundDigest:
    """The SHA-256 of a file, computed in a thread of its own (hashlib lets go of the interpreter lock)."""

    def __init__(self, path: Path):
        self._path = path
        self._sha: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="s3-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._sha = _hash_file(self._path, "sha256")
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._sha is not None
        return self._sha


def parse_tag(body: bytes, name: str) -> str | None:
    """The value of tag ``name`` in a GetObjectTagging answer, if it has that tag."""
    for tag in ET.fromstring(body).iter():
        if tag.tag.rsplit("}", 1)[-1] == "Tag":
            fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in tag}
            if fields.get("Key") == name:
                return fields.get("Value")
    return None


def _refused(exc: BaseException) -> bool:
    """Whether the server refused a tagging request as something it does not do or allow."""
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in ("NotImplemented", "MethodNotAllowed", "AccessDenied") or status in (403, 405, 501)


class _Slots:
    """Connections for small-object batches, shared by the batches running at once.

    A batch takes what it can use of what is free; when nothing is, it runs on one connection
    of its own rather than wait behind a long batch.
    """

    def __init__(self, total: int):
        self._free = total
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        with self._lock:
            taken = min(wanted, self._free)
            self._free -= taken
            return taken

    def give(self, taken: int) -> None:
        with self._lock:
            self._free += taken


class S3Storage(Storage):
    options_model = S3StorageOptions
    options: S3StorageOptions
    batch_fetch = True

    def __init__(self, name: str, options: S3StorageOptions):
        super().__init__(name, options)
        self.transfer_workers = options.transfer_workers
        self.endpoint = options.endpoint_url or "AWS S3"
        self._lock = threading.Lock()
        self._client = None
        self._region = "us-east-1"
        self._virtual = False
        self._http: SignedHttp | None = None
        self._session: Any = None  # botocore's session, when credentials come from its chain
        self._trust: str | None = None  # the CA file both halves trust (None: the system's store)
        self._parts: ThreadPoolExecutor | None = None
        self._tagging = True  # until the server refuses a tag
        # Small-object batches run on their own sockets; together they stay within max_connections.
        self._batch_slots = _Slots(options.max_connections)

    # -- connections (built on first use, so commands that never touch S3 don't pay for them) --
    def _connect(self) -> SignedHttp:
        opts = self.options
        region = opts.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if opts.access_key_id is not None:
            if opts.secret_access_key is None:
                raise AuthError(
                    f"storage '{self.name}': access_key_id is set but secret_access_key is not; "
                    f"set both (e.g. from ${{ENV}} variables)"
                )
            credentials = StaticCredentials(
                opts.access_key_id.get_secret_value(),
                opts.secret_access_key.get_secret_value(),
                opts.session_token.get_secret_value() if opts.session_token else None,
            )
            session = None
        else:  # the standard chain: environment, profile files, SSO, instance metadata, …
            import botocore.session

            session = botocore.session.Session(profile=opts.profile)
            region = region or session.get_config_variable("region")
            try:
                credentials = session.get_credentials()
            except Exception as exc:
                raise classify(exc, f"storage '{self.name}'", self.endpoint) from None
            if credentials is None:
                raise AuthError(
                    f"storage '{self.name}': no S3 credentials found; set access_key_id and "
                    f"secret_access_key (e.g. ${{S3_KEY}}), a profile, or the AWS_* variables"
                )
        self._region = region or "us-east-1"
        custom = endpoints.configured(opts.endpoint_url, os.environ)
        self._virtual = opts.addressing_style == "virtual" or (opts.addressing_style == "auto" and not custom)
        base = custom or endpoints.aws(self._region)
        self.endpoint = custom or f"AWS S3 ({base})"
        # One trust decision for both halves: the config's CA file, else AWS_CA_BUNDLE or the profile's
        # ca_bundle (as boto3 reads them), else the system's store (not the CA file boto3 ships with).
        self._session = session
        self._trust = (
            str(opts.ca_bundle)
            if opts.ca_bundle
            else os.environ.get("AWS_CA_BUNDLE") or (session.get_config_variable("ca_bundle") if session else None)
        )
        return SignedHttp(
            Endpoint(base, self._region, self._virtual, aws=custom is None),
            credentials,
            max_connections=opts.max_connections,
            verify=opts.verify_tls,
            ca_bundle=self._trust,
            connect_timeout=opts.connect_timeout,
            read_timeout=opts.read_timeout,
        )

    def _ready(self) -> SignedHttp:
        with self._lock:
            if self._http is None:
                self._http = self._connect()
            return self._http

    def _boto(self):
        """A boto3 client, for the rare calls worth its start-up cost: bucket creation and multipart uploads."""
        http = self._ready()
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config as BotoConfig

                opts = self.options
                verify: bool | str = (
                    (self._trust or ssl.get_default_verify_paths().cafile or True) if opts.verify_tls else False
                )
                if self._session is not None:
                    # the same session, so the same credentials: refreshed as they expire (STS, SSO, instances)
                    session = boto3.session.Session(botocore_session=self._session)
                else:
                    frozen = http.credentials.get_frozen_credentials()
                    session = boto3.session.Session(
                        aws_access_key_id=frozen.access_key,
                        aws_secret_access_key=frozen.secret_key,
                        aws_session_token=frozen.token,
                    )
                self._client = session.client(
                    "s3",
                    endpoint_url=http.endpoint.base,  # the one the fast path resolved, never another
                    verify=verify,
                    config=BotoConfig(
                        region_name=self._region,
                        signature_version="s3v4",
                        s3={"addressing_style": "virtual" if self._virtual else "path"},
                        retries={"total_max_attempts": 1, "mode": "standard"},  # the engine retries
                        connect_timeout=opts.connect_timeout,
                        read_timeout=opts.read_timeout,
                        max_pool_connections=opts.max_connections,
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
        return self._client

    def _fail(self, exc: BaseException, bucket: str, key: str = "") -> BaseException:
        return classify(exc, f"{bucket}/{key}" if key else bucket, self.endpoint)

    # -- buckets and listing ---------------------------------------------------------------
    def ensure_bucket(self, bucket: str) -> None:
        http = self._ready()
        try:
            response = http.request("HEAD", bucket, missing_ok=True)
            if response.status != 404:
                return
            if not self.options.create_buckets:
                raise PermanentError(
                    f"bucket '{bucket}' does not exist at {self.endpoint}; create it, set "
                    f"create_buckets: true on storage '{self.name}', or fix the bucket name"
                )
            extra = (
                {}
                if self._region == "us-east-1"
                else {"CreateBucketConfiguration": {"LocationConstraint": self._region}}
            )
            self._boto().create_bucket(Bucket=bucket, **extra)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou",):
                raise self._fail(exc, bucket) from None

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        http = self._ready()
        try:
            for item in http.list_objects(bucket, prefix):
                yield ObjectInfo(key=item.key, size=item.size, etag=item.etag, modified=item.modified)
        except PermanentError as exc:
            if self.options.create_buckets and "does not exist" in str(exc) and "bucket" in str(exc):
                return  # a bucket syncd will create on first write holds nothing yet
            raise
        except Exception as exc:
            raise self._fail(exc, bucket, prefix) from None

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        return self._head(bucket, key)

    def _head(self, bucket: str, key: str, tags: bool = True) -> ObjectInfo | None:
        """The object's info; with ``tags``, its SHA-256 read from its tag when it keeps it there."""
        http = self._ready()
        try:
            response = http.request("HEAD", bucket, key, missing_ok=True)
        except Exception as exc:
            raise self._fail(exc, bucket, key) from None
        if response.status == 404:
            return None
        headers = response.headers
        try:
            sha = self._tagged_sha(http, bucket, key, headers) if tags else headers.get(f"x-amz-meta-{SHA256_META}")
        except Exception as exc:
            raise self._fail(exc, bucket, key) from None
        modified = headers.get("Last-Modified")
        return ObjectInfo(
            key,
            int(headers.get("Content-Length") or 0),
            _etag(headers.get("ETag")),
            parsedate_to_datetime(modified).timestamp() if modified else None,
            f"sha256:{sha}" if sha else None,
        )

    def delete(self, bucket: str, key: str) -> None:
        http = self._ready()
        try:
            http.request("DELETE", bucket, key, missing_ok=True)
        except Exception as exc:
            raise self._fail(exc, bucket, key) from None

    # -- upload ------------------------------------------------------------------------------
    def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        check_key(key)
        http = self._ready()
        try:
            if key.endswith("/"):
                response = http.request("PUT", bucket, key, body=b"")
                return ObjectInfo(key, 0, _etag(response.headers.get("ETag")))
            size = source.stat().st_size
            if size <= self.options.part_size:
                data = source.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                headers = {
                    "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                    "x-amz-meta-sha256": sha,
                    "Content-Type": "application/octet-stream",
                }
                response = http.request("PUT", bucket, key, headers=headers, body=data)
                return ObjectInfo(key, len(data), _etag(response.headers.get("ETag")), checksum=f"sha256:{sha}")
            sha = self._upload_parts(source, bucket, key)
        except FileNotFoundError as exc:
            raise PermanentError(f"uploading {source} to {bucket}/{key}: the file does not exist") from exc
        except SyncdError:
            raise
        except Exception as exc:
            failure: BaseException = exc
            if type(exc).__name__ == "S3UploadFailedError":  # boto3's wrapper around the real failure
                failure = exc.__cause__ or exc.__context__ or TransientError(f"{bucket}/{key}: {exc}")
            raise self._fail(failure, bucket, key) from None
        info = self._head(bucket, key, tags=False)  # the SHA-256 is the one just computed: no need to read it back
        if info is None or info.size != size:
            raise TransientError(f"{bucket}/{key}: the upload did not leave a complete object")
        return info if info.checksum else replace(info, checksum=f"sha256:{sha}")

    def _upload_parts(self, source: Path, bucket: str, key: str) -> str:
        """A multipart upload (boto3's), with the file's SHA-256 computed while the parts go up and then
        attached as the object's ``sha256`` tag; the object's metadata says so (``sha256-in: tagging``).

        Metadata has to be known when the upload is created, so storing the digest there would mean reading
        the whole file once before sending a byte. A server that refuses tags gets, from then on, that first
        pass and the digest in metadata (this object is sent again that way). Returns the SHA-256.
        """
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=self.options.part_size,
            multipart_chunksize=self.options.part_size,
            max_concurrency=self.options.part_workers,
            use_threads=True,
        )
        client = self._boto()
        if not self._tagging:
            sha = _hash_file(source, "sha256")
            client.upload_file(str(source), bucket, key, Config=config, ExtraArgs={"Metadata": {SHA256_META: sha}})
            return sha
        before = source.stat()
        digest = _BackgroundDigest(source)
        try:
            client.upload_file(
                str(source), bucket, key, Config=config, ExtraArgs={"Metadata": {SHA256_WHERE: "tagging"}}
            )
        finally:
            sha = digest.result()
        after = source.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise TransientError(
                f"uploading {source} to {bucket}/{key}: the file changed while it was being sent; syncd sends it again"
            )
        try:
            client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": SHA256_META, "Value": sha}]})
        except Exception as exc:
            if not _refused(exc):
                raise
            self._tagging = False  # this server keeps no tags: the digest goes into metadata instead
            return self._upload_parts(source, bucket, key)
        return sha

    def _tagged_sha(self, http: SignedHttp, bucket: str, key: str, headers: Headers) -> str | None:
        """The SHA-256 of an object: from its metadata, or from its tag when its metadata says it is there
        (a tag a crash kept from being set, one a user removed, or one this reader may not read leaves the
        object checked by size)."""
        sha = headers.get(f"x-amz-meta-{SHA256_META}")
        if sha or headers.get(f"x-amz-meta-{SHA256_WHERE}") != "tagging":
            return sha
        try:
            answer = http.request("GET", bucket, key, query={"tagging": ""}, missing_ok=True)
        except (AuthError, PermanentError):  # tags this reader may not read, or a server without them
            return None
        return None if answer.status == 404 else parse_tag(answer.body, SHA256_META)

    # -- copy and presigned URLs ---------------------------------------------------------------
    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """Copy on the server: one CopyObject up to ``copy_part_threshold``, else UploadPartCopy parts.

        Every request names the source's ETag (``x-amz-copy-source-if-match``), so a source that changes
        meanwhile fails the copy (retried) instead of mixing versions. The destination is checked to have
        the source's size (TransientError otherwise); its info is returned.
        """
        check_key(src_key)
        check_key(dst_key)
        source = self.head(src_bucket, src_key)
        where = f"{dst_bucket}/{dst_key} (a copy of {src_bucket}/{src_key})"
        if source is None:
            raise PermanentError(
                f"copying {src_bucket}/{src_key} to {dst_bucket}/{dst_key}: the source object "
                f"{src_bucket}/{src_key} does not exist at {self.endpoint}"
            )
        client = self._boto()
        copy_source = {"Bucket": src_bucket, "Key": src_key}  # a dict: botocore encodes the key
        if_match = {"CopySourceIfMatch": f'"{source.etag}"'} if source.etag else {}
        try:
            if source.size <= self.options.copy_part_threshold:
                client.copy_object(Bucket=dst_bucket, Key=dst_key, CopySource=copy_source, **if_match)
            else:
                self._copy_parts(client, copy_source, source, dst_bucket, dst_key, if_match)
        except Exception as exc:
            raise classify(exc, where, self.endpoint) from None
        copied = self.head(dst_bucket, dst_key)
        if copied is None or copied.size != source.size:
            raise TransientError(
                f"{where}: the copy has {copied.size if copied else 'no'} bytes, the source "
                f"{source.size}; syncd copies it again"
            )
        return copied

    def _copy_parts(
        self, client, copy_source: dict[str, str], source: ObjectInfo, bucket: str, key: str, if_match: dict[str, str]
    ) -> None:
        """A multipart upload of UploadPartCopy parts (in parallel, ``part_workers`` at once), completed,
        or aborted on any failure so no parts are left on the server."""
        from concurrent import futures

        head = client.head_object(
            Bucket=copy_source["Bucket"],
            Key=copy_source["Key"],
            **({"IfMatch": if_match["CopySourceIfMatch"]} if if_match else {}),
        )
        part = max(self.options.copy_part_size, -(-source.size // MAX_PARTS))
        spans = [(start, min(start + part, source.size) - 1) for start in range(0, source.size, part)]
        metadata = head.get("Metadata") or {}
        tags = {}
        if metadata.get(SHA256_WHERE) == "tagging":  # the SHA-256 travels with the copy (CopyObject copies tags)
            answer = client.get_object_tagging(Bucket=copy_source["Bucket"], Key=copy_source["Key"])
            tags = {"Tagging": urlencode({tag["Key"]: tag["Value"] for tag in answer.get("TagSet", [])})}
        upload_id = client.create_multipart_upload(
            Bucket=bucket,
            Key=key,
            Metadata=metadata,
            ContentType=head.get("ContentType") or "application/octet-stream",
            **tags,
        )["UploadId"]
        try:

            def one(number: int, first: int, last: int) -> dict:
                answer = client.upload_part_copy(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={first}-{last}",
                    **if_match,
                )
                return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

            pool = self._part_pool()
            parts = [pool.submit(one, number, first, last) for number, (first, last) in enumerate(spans, 1)]
            try:
                done = [future.result() for future in parts]
            finally:
                for future in parts:
                    future.cancel()
                futures.wait(parts)  # no part still running when the upload is aborted
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                pass
            raise

    def presign(self, bucket: str, key: str, method: str = "GET", expires: float = 3600) -> str:
        """A SigV4 presigned URL to GET or PUT the object, valid for ``expires`` seconds (at most 7 days).

        Signed locally by botocore with this storage's endpoint, region, addressing style and
        credentials; temporary credentials (a session token) end the URL's life when they expire.
        """
        check_key(key)
        verb = method.upper()
        if verb not in ("GET", "PUT"):
            raise PermanentError(f"storage '{self.name}': a presigned URL is for GET or PUT, not {method!r}")
        if not 0 < expires <= PRESIGN_MAX:
            raise PermanentError(
                f"storage '{self.name}': a presigned URL lasts more than 0 seconds and at most "
                f"7 days ({PRESIGN_MAX} s), not {expires} s"
            )
        try:
            return self._boto().generate_presigned_url(
                "get_object" if verb == "GET" else "put_object",
                Params={"Bucket": bucket, "Key": key},
                ExpiresIn=max(1, int(expires)),
                HttpMethod=verb,
            )
        except Exception as exc:
            raise self._fail(exc, bucket, key) from None

    # -- download ----------------------------------------------------------------------------
    def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        return self.fetch(bucket, key, dest)

    def fetch(self, bucket: str, key: str, dest: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        http = self._ready()
        if expected is None:
            expected = self.head(bucket, key)
            if expected is None:
                raise PermanentError(f"{bucket}/{key}: the object does not exist at {self.endpoint}")
        try:
            if expected.size > self.options.part_size:
                return self._fetch_parts(http, bucket, key, dest, expected)
            return self._fetch_whole(http, bucket, key, dest, expected)
        except Exception as exc:
            raise self._fail(exc, bucket, key) from None

    def fetch_many(
        self, bucket: str, items: Sequence[tuple[ObjectInfo, Path]]
    ) -> Iterator[tuple[ObjectInfo, Path, ObjectInfo | BaseException]]:
        """Small objects from one thread over non-blocking connections, verified as :meth:`fetch` does."""
        http = self._ready()
        requests = ((item, item[0].key, _if_match(item[0]), str(item[1]), self._digest_for) for item in items)
        taken = self._batch_slots.take(len(items))  # no more connections than objects
        try:
            for get, outcome in http.get_many(bucket, requests, connections=max(1, taken)):
                info, dest = get.item
                result: ObjectInfo | BaseException
                if isinstance(outcome, BaseException):
                    result = outcome
                else:
                    try:
                        result = self._fetched(
                            bucket, info.key, outcome.headers, outcome.size, info.size, outcome.digest
                        )
                    except TransientError as exc:
                        result = exc
                yield info, dest, result
        except Exception as exc:
            raise self._fail(exc, bucket) from None
        finally:
            self._batch_slots.give(taken)

    def _digest_for(self, headers: Headers, etag: str | None = None, sha: str | None = None) -> Check | None:
        """How to check an object's content (:func:`_check_for`). ``etag`` is the object's, when the caller knows
        it better than ``headers`` do; ``sha`` its SHA-256 when it came from its tag."""
        etag = etag or _etag(headers.get("ETag"))
        return _check_for(headers, etag, self._md5_etag(etag, headers), sha)

    def _fetched(
        self,
        bucket: str,
        key: str,
        headers: Headers,
        size: int,
        expected_size: int,
        digest,
        sha: str | None = None,
    ) -> ObjectInfo:
        etag = _etag(headers.get("ETag"))
        expect_sha = sha or headers.get(f"x-amz-meta-{SHA256_META}")
        self._verify(bucket, key, size, expected_size, digest)
        return ObjectInfo(key, size, etag, checksum=f"sha256:{expect_sha}" if expect_sha else None)

    def _fetch_whole(self, http: SignedHttp, bucket: str, key: str, dest: Path, expected: ObjectInfo) -> ObjectInfo:
        response = http.request("GET", bucket, key, headers=_if_match(expected), stream=True)
        try:
            sha = self._tagged_sha(http, bucket, key, response.headers)
            digest = self._digest_for(response.headers, sha=sha)
            size = 0
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                for chunk in _chunks(response, expected.size):
                    pwrite_all(fd, chunk, size)
                    size += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
            finally:
                os.close(fd)
        finally:
            response.release_conn()
        return self._fetched(bucket, key, response.headers, size, expected.size, digest, sha)

    def _part_pool(self) -> ThreadPoolExecutor:
        # Made on the first large object: importing concurrent.futures (and logging with it) is a few
        # milliseconds that a mirror of small files, or a `syncd sync` of them, never needs.
        with self._lock:
            if self._parts is None:
                from concurrent.futures import ThreadPoolExecutor

                self._parts = ThreadPoolExecutor(self.options.part_workers, thread_name_prefix=f"s3-{self.name}-part")
            return self._parts

    def _fetch_parts(self, http: SignedHttp, bucket: str, key: str, dest: Path, expected: ObjectInfo) -> ObjectInfo:
        from concurrent import futures

        part = self.options.part_size
        ranges = [(start, min(start + part, expected.size) - 1) for start in range(0, expected.size, part)]
        headers_seen: list[Headers] = []
        write_lock = threading.Lock()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, expected.size)

            def one(span: tuple[int, int]) -> int:
                first, last = span
                response = http.request(
                    "GET",
                    bucket,
                    key,
                    stream=True,
                    headers={"Range": f"bytes={first}-{last}", "If-Match": f'"{expected.etag}"'},
                )
                try:
                    if first == 0:
                        headers_seen.append(response.headers)
                    offset = first + response.write_to(fd, first, write_lock)
                finally:
                    response.release_conn()
                if offset != last + 1:
                    raise TransientError(f"{bucket}/{key}: bytes {first}-{last} arrived incomplete")
                return offset - first

            pool = self._part_pool()
            parts = [pool.submit(one, span) for span in ranges]
            try:
                size = sum(future.result() for future in parts)
            finally:
                # One failed part ends the fetch, but parts already running still write into fd: wait
                # for them, or their bytes land in whatever file reuses the descriptor number next.
                for future in parts:
                    future.cancel()
                futures.wait(parts)
        finally:
            os.close(fd)
        headers = headers_seen[0] if headers_seen else Headers()
        expect_sha = self._tagged_sha(http, bucket, key, headers)
        if not expect_sha and not _SINGLE_PART_ETAG.match(expected.etag):
            # a multipart object of another tool's: a ranged answer carries no full-object checksum, a HEAD does
            headers = http.request("HEAD", bucket, key, headers=_if_match(expected)).headers
        digest = self._digest_for(headers, expected.etag, expect_sha)
        if digest is not None:  # a second pass, from the page cache: ranges arrive out of order
            with open(dest, "rb") as handle:
                hashlib.file_digest(handle, lambda: digest)  # type: ignore[arg-type,return-value]
        self._verify(bucket, key, size, expected.size, digest)
        return ObjectInfo(key, size, expected.etag, checksum=f"sha256:{expect_sha}" if expect_sha else None)

    @staticmethod
    def _md5_etag(etag: str, headers: Headers) -> bool:
        """A single-part ETag is the MD5 of the content, except under KMS/customer-key encryption."""
        return (
            bool(_SINGLE_PART_ETAG.match(etag))
            and headers.get("x-amz-server-side-encryption") != "aws:kms"
            and "x-amz-server-side-encryption-customer-algorithm" not in headers
        )

    def _verify(self, bucket: str, key: str, size: int, expected_size: int, digest: Check | None) -> None:
        if size != expected_size:
            raise TransientError(f"{bucket}/{key}: received {size} bytes, the object has {expected_size}")
        if digest is not None and digest.hexdigest() != digest.expected:
            raise TransientError(
                f"{bucket}/{key}: the content does not match its {digest.name} checksum; syncd fetches it again"
            )

    def same_content(self, info: ObjectInfo, local: Path) -> bool | None:
        """By the ETag: a single-part one is the content's MD5; a multipart one (``…-N``) is recomputed for syncd's
        part size, then for other tools' common ones, each tried only if it gives N parts."""
        try:
            if local.stat().st_size != info.size:
                return False
            if _SINGLE_PART_ETAG.match(info.etag):
                return _hash_file(local, "md5") == info.etag
            found = _MULTIPART_ETAG.match(info.etag)
            if not found:
                return None
            parts = int(found.group(1))
            for part_size in dict.fromkeys((self.options.part_size, *COMMON_PART_SIZES)):
                if -(-info.size // part_size) == parts and multipart_etag(local, part_size, parts) == info.etag:
                    return True
            return None
        except OSError:
            return False

    def close(self) -> None:
        if self._parts is not None:
            self._parts.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.close()
