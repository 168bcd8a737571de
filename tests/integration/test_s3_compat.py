"""The S3 storage does the same on three S3 implementations: SeaweedFS (Go), moto (Python) and s3rver (Node.js).
What one server lets pass (a sloppy signature, a key left unencoded) another refuses: each case runs on all
three, through both halves (the signed fast path, and boto3 for multipart uploads)."""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from tests.integration.conftest import make_storage

pytestmark = pytest.mark.s3

ODD_KEYS = [
    "plain.txt",
    "with space/and  two.txt",
    "ünïcödé/ß/日本.txt",
    "odd +=&%#~@!$'(),;[]{}^`.txt",
    "100%25 literal.txt",
    "deep/" + "/".join(f"d{i}" for i in range(20)) + "/leaf.txt",
]


@pytest.fixture(params=["seaweedfs", "moto_s3", "s3rver"])
def s3(request):
    """(storage, bucket) on one server; a new bucket per test."""
    server = request.getfixturevalue(request.param)
    storage = make_storage(server, part_size="5MiB", create_buckets=True)
    bucket = server.new_bucket("compat")
    yield storage, bucket
    storage.close()


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_odd_keys_go_up_list_and_come_back_byte_identical(s3, tmp_path):
    storage, bucket = s3
    sent = {key: f"content of {key}\n".encode() * 50 for key in ODD_KEYS}
    for n, (key, data) in enumerate(sent.items()):
        storage.put_file(bucket, f"k/{key}", write(tmp_path / f"src{n}", data))
    listed = {o.key: o for o in storage.list(bucket, "k/")}
    assert sorted(listed) == sorted(f"k/{key}" for key in sent)
    batch = [(listed[f"k/{key}"], tmp_path / f"many{n}") for n, key in enumerate(sent)]
    outcomes = {info.key: outcome for info, _, outcome in storage.fetch_many(bucket, batch)}
    assert not [o for o in outcomes.values() if isinstance(o, BaseException)], outcomes
    for n, (key, data) in enumerate(sent.items()):
        assert (tmp_path / f"many{n}").read_bytes() == data, key
        storage.fetch(bucket, f"k/{key}", tmp_path / "one", listed[f"k/{key}"])
        assert (tmp_path / "one").read_bytes() == data, key


def test_a_listing_by_prefix_shows_only_that_prefix(s3, tmp_path):
    storage, bucket = s3
    for key in ("a/1.txt", "a/2/3.txt", "ab/4.txt", "b/5.txt"):
        storage.put_file(bucket, key, write(tmp_path / "f", key.encode()))
    assert sorted(o.key for o in storage.list(bucket, "a/")) == ["a/1.txt", "a/2/3.txt"]
    assert [o.key for o in storage.list(bucket, "nothing/")] == []


def test_a_multipart_object_goes_up_and_comes_down_in_ranges_whole(s3, tmp_path):
    storage, bucket = s3
    data = os.urandom(12 << 20)
    put = storage.put_file(bucket, "big/blob.bin", write(tmp_path / "blob.bin", data))
    assert put.size == len(data)
    head = storage.head(bucket, "big/blob.bin")
    assert head is not None and head.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    storage.fetch(bucket, "big/blob.bin", tmp_path / "back.bin", head)
    assert (tmp_path / "back.bin").read_bytes() == data


def test_copy_presign_head_and_delete(s3, tmp_path):
    storage, bucket = s3
    storage.put_file(bucket, "c/source ü.txt", write(tmp_path / "s", b"copied\n"))
    assert storage.copy(bucket, "c/source ü.txt", bucket, "c/copy ü.txt").size == 7
    url = storage.presign(bucket, "c/copy ü.txt", method="GET", expires=300)
    assert requests.get(url, timeout=10).content == b"copied\n"
    upload = storage.presign(bucket, "c/by url.txt", method="PUT", expires=300)
    assert requests.put(upload, data=b"put by url\n", timeout=10).status_code == 200
    assert storage.head(bucket, "c/by url.txt").size == 11
    storage.delete(bucket, "c/copy ü.txt")
    storage.delete(bucket, "c/copy ü.txt")  # idempotent
    assert storage.head(bucket, "c/copy ü.txt") is None
