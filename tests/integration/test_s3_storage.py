"""syncd.storage.s3.storage against a real SeaweedFS: round trips, integrity, and clear, classified errors."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from syncd.errors import AuthError, PermanentError, TransientError
from syncd.storage.s3 import wire
from syncd.storage.s3.storage import S3Storage, S3StorageOptions
from tests.integration.conftest import make_storage
from tests.support.faultproxy import FaultProxy
from tests.support.s3_front import S3Front
from tests.support.s3server import free_port
from tests.support.tls import self_signed

pytestmark = pytest.mark.s3


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "key, data",
    [
        ("job/empty.txt", b""),
        ("job/one-byte", b"x"),
        ("job/données ✓/résumé final.txt", "çà et là".encode()),
        ("job/with space/and  two.txt", b"spaces"),
        ("job/odd +=&%#~@!$'(),;[]{}^`.txt", b"every character the signature must encode right"),
        ("job/" + "/".join(f"d{i}" for i in range(30)) + "/deep.bin", os.urandom(1000)),
    ],
)
def test_put_file_then_fetch_is_byte_identical(storage, bucket, tmp_path, key, data):
    source = write(tmp_path / "src", data)
    put = storage.put_file(bucket, key, source)
    assert put.size == len(data)
    assert put.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    listed = {o.key: o for o in storage.list(bucket, "job/")}
    assert listed[key].size == len(data) and listed[key].etag == put.etag
    got = storage.fetch(bucket, key, tmp_path / "dest", listed[key])
    assert (tmp_path / "dest").read_bytes() == data
    assert got.etag == put.etag


def test_large_object_goes_up_in_parts_and_down_in_ranges(seaweedfs, bucket, tmp_path):
    storage = make_storage(seaweedfs, part_size="8MiB", part_workers=4)
    data = os.urandom(100 * 1024 * 1024)
    source = write(tmp_path / "big.bin", data)
    put = storage.put_file(bucket, "job/big.bin", source)
    assert put.etag.endswith("-13")  # multipart: 100 MiB in 8 MiB parts
    head = storage.head(bucket, "job/big.bin")
    assert head.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    got = storage.fetch(bucket, "job/big.bin", tmp_path / "dest.bin", head)
    assert got.size == len(data)
    assert (tmp_path / "dest.bin").read_bytes() == data
    storage.close()


def test_fetch_refuses_an_object_that_changed_since_listing(storage, bucket, tmp_path, seaweedfs):
    storage.put_file(bucket, "k", write(tmp_path / "a", b"version one"))
    listed = next(iter(storage.list(bucket, "k")))
    seaweedfs.client().put_object(Bucket=bucket, Key="k", Body=b"version two")
    with pytest.raises(TransientError):
        storage.fetch(bucket, "k", tmp_path / "dest", listed)


def test_fetch_detects_content_that_does_not_match_its_sha256(storage, bucket, tmp_path, seaweedfs):
    seaweedfs.client().put_object(Bucket=bucket, Key="k", Body=b"payload", Metadata={"sha256": "0" * 64})
    with pytest.raises(TransientError, match="checksum"):
        storage.fetch(bucket, "k", tmp_path / "dest")


def test_directory_marker_round_trip(storage, bucket, tmp_path):
    storage.put_file(bucket, "job/empty-dir/", tmp_path)
    assert [o.key for o in storage.list(bucket, "job/")] == ["job/empty-dir/"]


def test_head_missing_object_is_none_and_delete_is_idempotent(storage, bucket, tmp_path):
    assert storage.head(bucket, "nope") is None
    storage.put_file(bucket, "x", write(tmp_path / "x", b"x"))
    storage.delete(bucket, "x")
    storage.delete(bucket, "x")
    assert storage.head(bucket, "x") is None


def test_missing_bucket_is_permanent_and_named(storage):
    with pytest.raises(PermanentError, match="no-such-bucket-here") as info:
        list(storage.list("no-such-bucket-here", ""))
    assert not isinstance(info.value, AuthError)
    with pytest.raises(PermanentError, match="create_buckets"):
        storage.ensure_bucket("no-such-bucket-here")


def test_ensure_bucket_creates_when_allowed(seaweedfs):
    storage = make_storage(seaweedfs, create_buckets=True)
    name = f"made-{os.getpid()}"
    storage.ensure_bucket(name)
    storage.ensure_bucket(name)
    assert list(storage.list(name, "")) == []


def test_wrong_credentials_are_an_auth_error_without_the_secret(seaweedfs, bucket, tmp_path):
    secret = "not-the-right-secret-4242"
    storage = S3Storage("s3", S3StorageOptions.model_validate(seaweedfs.storage_options(secret_access_key=secret)))
    for action in (
        lambda: list(storage.list(bucket, "")),
        lambda: storage.put_file(bucket, "k", write(tmp_path / "k", b"k")),
        lambda: storage.fetch(bucket, "k", tmp_path / "dest"),
    ):
        with pytest.raises(AuthError) as info:
            action()
        assert secret not in str(info.value) and "credentials" in str(info.value)
    assert secret not in repr(storage.options) and secret not in str(storage.options.model_dump())


def test_unreachable_endpoint_is_transient_and_names_it(seaweedfs, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"
    storage = make_storage(seaweedfs, endpoint=endpoint, connect_timeout="1s")
    with pytest.raises(TransientError, match=endpoint.replace(".", r"\.")):
        list(storage.list("b", ""))
    with pytest.raises(TransientError, match="endpoint_url"):
        storage.put_file("b", "k", write(tmp_path / "k", b"k"))


def test_options_reference_env_variables_for_keys(tmp_path, seaweedfs):
    from syncd import plugins
    from syncd.config import load_config

    config = tmp_path / "syncd.yaml"
    config.write_text(
        "storages:\n  s3:\n    type: s3\n    endpoint_url: " + seaweedfs.endpoint + "\n"
        "    access_key_id: ${TEST_S3_KEY}\n    secret_access_key: ${TEST_S3_SECRET}\n"
        "backends:\n  local: {type: local}\n"
        "inboxes:\n  - {name: a, path: in, outbox: out, failed: failed, backend: local, storage: s3, bucket: b}\n"
    )
    loaded = load_config(
        config, plugins.options_model, env={"TEST_S3_KEY": seaweedfs.access_key, "TEST_S3_SECRET": seaweedfs.secret_key}
    )
    options = loaded.storage_options["s3"]
    assert options.secret_access_key.get_secret_value() == seaweedfs.secret_key
    assert seaweedfs.secret_key not in repr(loaded)


def test_an_ipv6_literal_endpoint_carries_small_and_multipart_objects_both_ways(seaweedfs, bucket, proxy_for, tmp_path):
    proxy = proxy_for(seaweedfs, listen="::1")
    assert proxy.endpoint.startswith("http://[::1]:")
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint, part_size="5MiB")
    small, large = b"small over IPv6\n", os.urandom(12 * 1024 * 1024)
    storage.put_file(bucket, "v6/small.txt", write(tmp_path / "small.txt", small))
    put = storage.put_file(bucket, "v6/large.bin", write(tmp_path / "large.bin", large))
    assert put.etag.endswith("-3"), "the multipart half (boto3) went over IPv6 too"
    listed = {o.key: o for o in storage.list(bucket, "v6/")}
    assert sorted(listed) == ["v6/large.bin", "v6/small.txt"]
    for key, data in (("v6/small.txt", small), ("v6/large.bin", large)):
        storage.fetch(bucket, key, tmp_path / "back", listed[key])
        assert (tmp_path / "back").read_bytes() == data
    assert proxy.count("GET") >= 2 and proxy.count("PUT") >= 2
    storage.close()


def test_a_skewed_clock_is_reported_as_the_clock_not_the_credentials(storage, bucket, monkeypatch):
    """SeaweedFS, like AWS, answers a request signed an hour off with 403 RequestTimeTooSkewed."""
    real = time.gmtime
    monkeypatch.setattr(wire.time, "gmtime", lambda *args: real(time.time() - 3600))
    with pytest.raises(TransientError) as refused:
        list(storage.list(bucket, ""))
    assert "fix the clock" in str(refused.value) and "access_key_id" not in str(refused.value)
    monkeypatch.setattr(wire.time, "gmtime", real)
    assert list(storage.list(bucket, "")) == [], "with the clock right again, the same storage works"


@pytest.fixture
def tls_front(seaweedfs, tmp_path):
    """SeaweedFS behind HTTPS with a private certificate: (endpoint, the CA's PEM file)."""
    server_context, _ = self_signed(tmp_path)
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    proxy = FaultProxy((host, int(port)), tls=server_context).start()
    yield proxy.endpoint, tmp_path / "cert.pem"
    proxy.stop()


@pytest.mark.parametrize("given", ["AWS_CA_BUNDLE", "ca_bundle"])
def test_a_private_ca_is_trusted_by_both_halves_or_by_neither(
    seaweedfs, bucket, tls_front, tmp_path, monkeypatch, given
):
    endpoint, ca = tls_front
    small, large = write(tmp_path / "small.txt", b"over TLS\n"), write(tmp_path / "large.bin", os.urandom(11 << 20))
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    untrusting = make_storage(seaweedfs, endpoint=endpoint, part_size="5MiB")
    for source in (small, large):  # the fast path, then boto3's multipart upload
        with pytest.raises(PermanentError, match="is not trusted"):
            untrusting.put_file(bucket, f"tls/{source.name}", source)
    untrusting.close()
    if given == "AWS_CA_BUNDLE":
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))
        trusting = make_storage(seaweedfs, endpoint=endpoint, part_size="5MiB")
    else:
        trusting = make_storage(seaweedfs, endpoint=endpoint, part_size="5MiB", ca_bundle=str(ca))
    assert trusting.put_file(bucket, "tls/small.txt", small).size == small.stat().st_size
    assert trusting.put_file(bucket, "tls/large.bin", large).etag.endswith("-3")
    assert sorted(o.key for o in trusting.list(bucket, "tls/")) == ["tls/large.bin", "tls/small.txt"]
    trusting.close()


def test_a_large_upload_refused_before_its_body_reports_the_servers_answer(seaweedfs, bucket, proxy_for, tmp_path):
    """A server that refuses an upload answers after the head and closes, as AWS does: the fast path asks with
    ``Expect: 100-continue`` first, so the refusal is read (an auth error), not a reset retried blind."""
    proxy = proxy_for(seaweedfs)
    proxy.faults.answer, proxy.faults.close_after_answer = 403, True
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint, part_size="64MiB")
    source = write(tmp_path / "big.bin", os.urandom(16 << 20))
    with pytest.raises(AuthError, match="SignatureDoesNotMatch"):
        storage.put_file(bucket, "big.bin", source)
    proxy.faults.answer = 0
    assert storage.put_file(bucket, "big.bin", source).size == 16 << 20, "accepted once the server takes it"
    assert storage.head(bucket, "big.bin").size == 16 << 20
    storage.close()


@pytest.mark.parametrize("server", ["seaweedfs", "moto_s3"])
def test_uploads_that_wait_for_100_continue_arrive_whole_on_every_server(server, request, tmp_path):
    s3 = request.getfixturevalue(server)
    storage = make_storage(s3, part_size="64MiB", create_buckets=True)
    bucket = s3.new_bucket()
    data = os.urandom(3 << 20)
    put = storage.put_file(bucket, "expect/3mib.bin", write(tmp_path / "3mib.bin", data))
    assert put.size == len(data)
    storage.fetch(bucket, "expect/3mib.bin", tmp_path / "back.bin", storage.head(bucket, "expect/3mib.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    storage.close()


def test_a_bucket_in_another_region_is_followed_there_once_and_remembered(seaweedfs, bucket, tmp_path):
    """A server that redirects (301 PermanentRedirect, x-amz-bucket-region) a request signed for the configured
    region: the fast path asks again in the bucket's region, and keeps using it for that bucket."""
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    with S3Front((host, int(port)), home="eu-west-3") as router:
        storage = make_storage(seaweedfs, endpoint=router.endpoint, region="us-east-1", part_size="5MiB")
        storage.put_file(bucket, "r/small.txt", write(tmp_path / "small.txt", b"in eu-west-3\n"))
        assert router.redirected == ["us-east-1"]
        large = write(tmp_path / "large.bin", os.urandom(11 << 20))
        assert storage.put_file(bucket, "r/large.bin", large).etag.endswith("-3"), "boto3 follows its redirect too"
        listed = {o.key: o for o in storage.list(bucket, "r/")}
        assert sorted(listed) == ["r/large.bin", "r/small.txt"]
        storage.fetch(bucket, "r/small.txt", tmp_path / "back", listed["r/small.txt"])
        ((_, _, outcome),) = storage.fetch_many(bucket, [(listed["r/small.txt"], tmp_path / "many")])
        assert not isinstance(outcome, BaseException), outcome
        assert (tmp_path / "back").read_bytes() == (tmp_path / "many").read_bytes() == b"in eu-west-3\n"
        assert router.redirected == ["us-east-1"] * 2, "once per half, then the bucket's region is remembered"
        assert set(router.passed) == {"eu-west-3"} and len(router.passed) >= 4
        storage.close()
