"""Where an S3 storage's requests go, decided once for both halves (the fast path and boto3), by botocore's rules.

An ``endpoint_url`` in the config wins; else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` from the environment
(as boto3 reads them, unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is true); else AWS itself, whose host name
ends with the DNS suffix of the region's partition (``amazonaws.com.cn`` for China, ``c2s.ic.gov`` for ISO)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from syncd.errors import PermanentError

#: a bucket name that can be a DNS label of its own: virtual-hosted style works for it (and over TLS the
#: wildcard certificate covers it); any other (dots, capitals, underscores) goes path-style, as botocore sends it
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def configured(config_url: str | None, env: Mapping[str, str]) -> str | None:
    """The endpoint the config or the environment names, without a trailing slash; None for AWS itself."""
    if config_url:
        return config_url.rstrip("/")
    if env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    found = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    return found.rstrip("/") if found else None


def aws(region: str) -> str:
    """AWS's S3 endpoint for ``region`` (us-east-1 answers on the global name, as botocore addresses it)."""
    if region == "us-east-1":
        return "https://s3.amazonaws.com"
    return f"https://s3.{region}.{dns_suffix(region)}"


def dns_suffix(region: str) -> str:
    import botocore.loaders

    partitions = botocore.loaders.create_loader().load_data("endpoints")["partitions"]
    for partition in partitions:
        if region in partition.get("regions", {}):
            return partition["dnsSuffix"]
    for partition in partitions:
        if re.match(partition.get("regionRegex", "$^"), region):
            return partition["dnsSuffix"]
    return "amazonaws.com"


def virtual_hosted(bucket: str, host_is_ip: bool) -> bool:
    """Whether ``bucket`` can be addressed as ``bucket.host``: a DNS-label name on a host name (not an IP)."""
    return not host_is_ip and bool(_DNS_BUCKET.match(bucket))


def is_ip(base: str) -> bool:
    """Whether the host of ``base`` is an IP address (no bucket subdomains there)."""
    try:
        ipaddress.ip_address(urlsplit(base).hostname or "")
    except ValueError:
        return False
    return True


def check_bucket(bucket: str) -> None:
    """Refuse what the fast path cannot address: access point and Outposts ARNs, S3 Express directory buckets
    (their own endpoints and session authentication)."""
    if bucket.startswith("arn:"):
        raise PermanentError(
            f"bucket '{bucket}' is an ARN (an access point or Outposts bucket), which syncd does not support; "
            f"give the bucket's name instead"
        )
    if bucket.endswith("--x-s3"):
        raise PermanentError(
            f"bucket '{bucket}' is an S3 Express One Zone directory bucket, which syncd does not support; "
            f"use a general purpose bucket"
        )
