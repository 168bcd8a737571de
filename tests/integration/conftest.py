"""Fixtures for tests against real S3 servers on loopback: one SeaweedFS and one moto per session.

The servers are started here, never assumed: under CI=true a skip would be a failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.config import RetryPolicy
from syncd.delivery.mirror import Mirror
from syncd.delivery.outbox import check_outbox_key
from syncd.fsutil import TMP_DIR
from syncd.state.store import Store
from syncd.storage.s3.storage import S3Storage, S3StorageOptions
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import S3Server

FAST_RETRY = RetryPolicy(initial=0.05, max=0.5)


def make_storage(server: S3Server, endpoint: str | None = None, **extra) -> S3Storage:
    options = server.storage_options(**extra)
    if endpoint:
        options["endpoint_url"] = endpoint
    return S3Storage("s3", S3StorageOptions.model_validate(options))


@pytest.fixture
def storage(seaweedfs):
    s = make_storage(seaweedfs)
    yield s
    s.close()


@pytest.fixture
def bucket(seaweedfs) -> str:
    return seaweedfs.new_bucket()


@pytest.fixture
def proxy_for():
    """``proxy_for(server)`` → a FaultProxy in front of it; all are stopped at the end."""
    started: list[FaultProxy] = []

    def factory(server: S3Server, listen: str = "127.0.0.1") -> FaultProxy:
        host, port = server.endpoint.rsplit("//", 1)[1].split(":")
        proxy = FaultProxy((host, int(port)), listen=listen).start()
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


def mirror_into(store: Store, storage, bucket: str, prefix: str, dest: Path, *, attempts: int = 4, **kwargs):
    """Run the mirror engine the way ``syncd sync`` does: ``bucket/prefix/rel`` → ``dest/rel``."""
    return Mirror(store, FAST_RETRY, attempts=attempts).run(
        storage, bucket, prefix, dest, tmp_dir=dest / TMP_DIR, strip=prefix, check_key=check_outbox_key, **kwargs
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (temp folder included, so leftovers show)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def bucket_contents(server: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = server.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            if not item["Key"].endswith("/"):
                out[item["Key"][len(prefix) :]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out
