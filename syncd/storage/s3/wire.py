"""Lean signed S3 requests: LIST, HEAD, GET, PUT and DELETE without botocore's per-call machinery.

Creating a boto3 client costs ~0.25 s and each call ~2 ms of CPU (parameter
validation, endpoint rules, event hooks, response parsing, dateutil). Mirroring
thousands of small objects is bound by exactly that, so these requests go over
keep-alive pools of :mod:`syncd.storage.s3.http11` with a SigV4 signature computed here (the derived signing key
is cached per day). Credentials still come from botocore's chain when the
config does not give keys. Bucket creation and multipart uploads use boto3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from syncd.errors import PermanentError, TransientError
from syncd.storage.s3 import endpoints
from syncd.storage.s3.errors import REGION_CODES, classify_status, code_from_body, region_from
from syncd.storage.s3.http11 import Headers, Pool, Proxy, Response, tls_context
from syncd.storage.s3.http11_many import Fetched, Get, ManyGets

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


class FrozenCredentials(Protocol):
    # Read-only: botocore's are a namedtuple, syncd's StaticCredentials a frozen dataclass.
    @property
    def access_key(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def token(self) -> str | None: ...


class CredentialSource(Protocol):
    def get_frozen_credentials(self) -> FrozenCredentials: ...


@dataclass(frozen=True)
class Endpoint:
    base: str  # scheme://host[:port]
    region: str
    virtual_hosted: bool
    aws: bool = False  # AWS itself: the host name follows the region

    def in_region(self, region: str) -> Endpoint:
        """The same endpoint for a bucket in ``region`` (on AWS, another host; elsewhere, another signature)."""
        return replace(self, region=region, base=endpoints.aws(region) if self.aws else self.base)

    @cached_property
    def _host_is_ip(self) -> bool:  # once per endpoint, not per request
        return endpoints.is_ip(self.base)

    def target(self, bucket: str, key: str) -> tuple[str, str]:
        """(host, canonical path) of an object or, with key '', of the bucket. A path in the endpoint (a server
        behind a prefix) comes first, as botocore puts it."""
        parts = urlsplit(self.base)
        prefix = parts.path.rstrip("/")
        quoted = quote(key, safe="/~")
        if self.virtual_hosted and endpoints.virtual_hosted(bucket, self._host_is_ip):
            return f"{bucket}.{parts.netloc}", f"{prefix}/{quoted}"
        return parts.netloc, f"{prefix}/{bucket}/{quoted}" if key else f"{prefix}/{bucket}"


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    etag: str
    modified: float | None


class SigV4:
    """AWS Signature Version 4 for S3 with the payload unsigned (bodies are checked by Content-MD5)."""

    def __init__(self, credentials: CredentialSource, region: str):
        self._credentials = credentials
        self._region = region
        self._lock = threading.Lock()
        self._key_cache: dict[str, tuple[str, str, bytes]] = {}  # region → (day, secret, derived key)

    def _signing_key(self, day: str, secret: str, region: str) -> bytes:
        with self._lock:
            cached = self._key_cache.get(region)
            if cached and cached[0] == day and cached[1] == secret:
                return cached[2]
            key = ("AWS4" + secret).encode()
            for part in (day, region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._key_cache[region] = (day, secret, key)
            return key

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Mapping[str, str],
        headers: dict[str, str],
        region: str | None = None,
    ) -> None:
        creds = self._credentials.get_frozen_credentials()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        headers.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": UNSIGNED_PAYLOAD})
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        lowered = sorted((k.lower(), " ".join(str(v).split())) for k, v in headers.items())
        signed = ";".join(k for k, _ in lowered)
        canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
        canonical = "\n".join(
            [method, path, canonical_query, "".join(f"{k}:{v}\n" for k, v in lowered), signed, UNSIGNED_PAYLOAD]
        )
        region = region or self._region
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._signing_key(day, creds.secret_key, region), to_sign.encode(), "sha256").hex()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )


class SignedHttp:
    """Signed S3 requests over keep-alive connection pools (one per host). Thread-safe; never retries."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: CredentialSource,
        *,
        max_connections: int,
        verify: bool,
        ca_bundle: str | None,
        connect_timeout: float,
        read_timeout: float,
    ):
        self.endpoint = endpoint
        self.credentials = credentials
        self._scheme = urlsplit(endpoint.base).scheme
        self._signer = SigV4(credentials, endpoint.region)
        self._tls = tls_context(verify, ca_bundle) if self._scheme == "https" else None
        self._timeouts = (connect_timeout, read_timeout)
        self._max_connections = max_connections
        self._pools: dict[str, Pool] = {}
        self._lock = threading.Lock()
        self._bucket_regions: dict[str, str] = {}  # buckets the server said are in another region than configured

    def _pool_for(self, host: str) -> Pool:
        with self._lock:
            pool = self._pools.get(host)
            if pool is None:
                address = urlsplit(f"//{host}")  # an IPv6 literal comes bracketed: [::1]:9000
                pool = Pool(
                    address.hostname or host,
                    address.port or (443 if self._tls else 80),
                    tls=self._tls,
                    connect_timeout=self._timeouts[0],
                    read_timeout=self._timeouts[1],
                    maxsize=self._max_connections,
                    proxy=proxy_for(self._scheme, host),
                )
                self._pools[host] = pool
            return pool

    def request(
        self,
        method: str,
        bucket: str,
        key: str = "",
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        stream: bool = False,
        missing_ok: bool = False,
    ) -> Response:
        """Send one signed request; raise the classified error for any status ≥ 300.

        With ``missing_ok`` a 404 is returned to the caller instead (HEAD of a missing object).
        Unless ``stream``, the body is read at once (``response.body``); a streamed response
        must be read to the end or given back with ``release_conn()``.
        """
        for redirected in (False, True):
            endpoint = self.endpoint_for(bucket)
            host, path = endpoint.target(bucket, key)
            all_headers = dict(headers or {})
            if body is not None:
                all_headers["Content-Length"] = str(len(body))
            self._signer.sign(method, host, path, dict(query or {}), all_headers, endpoint.region)
            target = path
            if query:
                target += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items())
            response = self._pool_for(host).request(method, target, all_headers, body)
            if response.status < 300 or (missing_ok and response.status == 404):
                break
            data = response.read()
            code = code_from_body(data)
            region = region_from(data, response.headers.get("x-amz-bucket-region"))
            if not redirected and region and region != endpoint.region and code in ("", *REGION_CODES):
                with self._lock:
                    self._bucket_regions[bucket] = region  # then once more, in the bucket's region
                continue
            raise classify_status(
                response.status,
                code,
                f"{bucket}/{key}" if key else bucket,
                endpoint.base,
                response.headers.get("Retry-After"),
                region,
            )
        if not stream:
            response.body = response.read()
        return response

    def endpoint_for(self, bucket: str) -> Endpoint:
        """The endpoint of ``bucket``: the configured one, or its region's if the server redirected there."""
        endpoints.check_bucket(bucket)
        with self._lock:
            region = self._bucket_regions.get(bucket)
        return self.endpoint if region is None else self.endpoint.in_region(region)

    def get_many(
        self,
        bucket: str,
        requests: Iterable[tuple[Any, str, dict[str, str], str, Callable[[Headers], Any]]],
        *,
        connections: int,
    ) -> Iterator[tuple[Get, Fetched | BaseException]]:
        """GET objects of ``bucket`` into files from this one thread (:mod:`~syncd.storage.s3.http11_many`).

        Each request is ``(item, key, headers, file path, digest chooser)``; each is signed when sent.
        """
        endpoint = self.endpoint_for(bucket)
        host, _ = endpoint.target(bucket, "")
        pool = self._pool_for(host)

        def signed(path: str, extra: dict[str, str]) -> Callable[[], dict[str, str]]:
            def headers() -> dict[str, str]:
                all_headers = dict(extra)
                self._signer.sign("GET", host, path, {}, all_headers, endpoint.region)
                return all_headers

            return headers

        def gets() -> Iterator[Get]:
            for item, key, extra, dest, digest in requests:
                path = endpoint.target(bucket, key)[1]
                yield Get(item, path, signed(path, extra), dest, digest)

        many = ManyGets(
            pool.host,
            pool.port,
            tls=self._tls,
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
            connections=connections,
            proxy=pool.proxy,
            target_prefix=pool.target_prefix,
        )
        return many.run(gets())

    def list_objects(self, bucket: str, prefix: str) -> Iterator[Listed]:
        """ListObjectsV2, every page; keys come URL-encoded (form style, as botocore decodes them) so any byte survives the XML."""
        token: str | None = None
        while True:
            query = list_query(prefix, token)
            listed, token = parse_list_page(self.request("GET", bucket, query=query).body, bucket)
            yield from listed
            if not token:
                return

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """The forward proxy for ``scheme://host``, chosen exactly as boto3 chooses it for the other half: the
    environment's ``HTTP_PROXY`` or ``HTTPS_PROXY`` by scheme, unless ``NO_PROXY`` names the host (host names and
    domain suffixes; like boto3, not address blocks)."""
    if not (os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")):
        return None  # the common case, without importing botocore's helpers
    from botocore.utils import get_environ_proxies

    found = get_environ_proxies(f"{scheme}://{host}/").get(scheme)
    if not found:
        return None
    parts = urlsplit(found if "://" in found else f"http://{found}")
    if parts.scheme != "http":
        raise PermanentError(
            f"the proxy {parts.scheme}://{parts.hostname}:{parts.port} for {scheme}:// is not an http:// proxy; "
            f"syncd reaches S3 through http:// proxies only (HTTPS through their CONNECT tunnel)"
        )
    authorization = None
    if parts.username:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(pair).decode()
    return Proxy(parts.hostname or "", parts.port or 80, authorization)


def list_query(prefix: str, token: str | None) -> dict[str, str]:
    """The query of one ListObjectsV2 page."""
    query = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": "1000"}
    if token:
        query["continuation-token"] = token
    return query


def _local(tag: str) -> str:
    """An element's name without its namespace: servers answer in AWS's, in another (Google Cloud Storage's
    XML API) or in none, and every one of them means the same listing."""
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def parse_list_page(body: bytes, bucket: str) -> tuple[list[Listed], str | None]:
    """One ListObjectsV2 page: its objects and the token of the next page (None on the last).

    A body that is not a ``ListBucketResult`` is an error, never an empty bucket: read as empty, it would
    make ``syncd sync --delete`` and a mirror with ``delete`` remove local files.
    """
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise TransientError(f"listing bucket {bucket}: the answer is not XML ({exc}); syncd tries again") from None
    if _local(root.tag) != "ListBucketResult":
        raise TransientError(
            f"listing bucket {bucket}: the server answered <{_local(root.tag)}>, not a "
            f"ListBucketResult; is endpoint_url an S3 server? syncd tries again and never "
            f"takes this for an empty bucket"
        )
    # Keys were asked for URL-encoded; a server that ignores encoding-type sends them as they are.
    encoded = (_child(root, "EncodingType") or "").lower() == "url"
    listed = []
    for item in root:
        if _local(item.tag) != "Contents":
            continue
        key = _child(item, "Key") or ""
        listed.append(
            Listed(
                key=unquote_plus(key) if encoded else key,
                size=int(_child(item, "Size") or 0),
                etag=(_child(item, "ETag") or "").strip('"'),
                modified=_timestamp(_child(item, "LastModified")),
            )
        )
    token = _child(root, "NextContinuationToken")
    truncated = (_child(root, "IsTruncated") or "").lower() == "true"
    if truncated and not token:
        raise TransientError(
            f"listing bucket {bucket}: the server says the listing goes on but gives no "
            f"continuation token; syncd tries again rather than act on part of it"
        )
    return listed, token if truncated else None


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
