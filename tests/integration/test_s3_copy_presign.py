"""S3Storage.copy (server-side: CopyObject, or UploadPartCopy parts) and S3Storage.presign (SigV4
presigned URLs), against real servers on loopback: SeaweedFS, and moto for the multipart copy too."""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests

from syncd.errors import PermanentError, TransientError
from syncd.storage.s3.storage import S3Storage, S3StorageOptions
from tests.integration.conftest import make_storage

pytestmark = pytest.mark.s3

ODD_KEYS = ["job/with space/ünï cødé ✓.txt", "job/odd +=&%#~@!$'(),;[]{}^`.txt"]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def with_signature(url: str, change) -> str:
    """``url`` with its X-Amz-Signature passed through ``change``."""
    parts = urlsplit(url)
    query = [(name, change(value) if name == "X-Amz-Signature" else value) for name, value in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def flip_last(hex_text: str) -> str:
    return hex_text[:-1] + ("0" if hex_text[-1] != "0" else "1")


# -- presign ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["job/in.bin", *ODD_KEYS])
def test_presigned_put_then_presigned_get_round_trip(storage, bucket, seaweedfs, tmp_path, key):
    data = os.urandom(70_000)
    put_url = storage.presign(bucket, key, "PUT", 300)
    assert put_url.startswith(f"{seaweedfs.endpoint}/{bucket}/")
    assert "X-Amz-Signature=" in put_url and seaweedfs.secret_key not in put_url
    answer = requests.put(put_url, data=data, timeout=30)
    assert answer.status_code == 200, answer.text
    head = storage.head(bucket, key)
    assert head is not None and head.size == len(data)
    got = requests.get(storage.presign(bucket, key), timeout=30)  # GET, one hour by default
    assert got.status_code == 200 and got.content == data
    storage.fetch(bucket, key, tmp_path / "fetched", head)  # the object is an ordinary one
    assert (tmp_path / "fetched").read_bytes() == data


def test_a_tampered_presigned_url_is_refused(storage, bucket, tmp_path):
    storage.put_file(bucket, "job/secret.txt", write(tmp_path / "s", b"only with the signature"))
    get_url = storage.presign(bucket, "job/secret.txt", "GET", 300)
    assert requests.get(get_url, timeout=30).status_code == 200
    assert requests.get(with_signature(get_url, flip_last), timeout=30).status_code == 403
    other_key = get_url.replace("/job/secret.txt?", "/job/other.txt?")  # a signature is for one key
    assert requests.get(other_key, timeout=30).status_code == 403
    put_url = storage.presign(bucket, "job/new.txt", "PUT", 300)
    assert requests.put(with_signature(put_url, flip_last), data=b"forged", timeout=30).status_code == 403
    assert storage.head(bucket, "job/new.txt") is None


def test_a_presigned_url_expires(storage, bucket, tmp_path):
    storage.put_file(bucket, "k", write(tmp_path / "s", b"soon gone"))
    url = storage.presign(bucket, "k", "get", 1)
    assert "X-Amz-Expires=1&" in url
    time.sleep(2.2)
    assert requests.get(url, timeout=30).status_code == 403


@pytest.mark.parametrize("expires", [0, -5, 604_801, 10**9, math.nan])
def test_presign_refuses_a_lifetime_outside_seven_days(storage, bucket, expires):
    with pytest.raises(PermanentError, match=r"at most 7 days \(604800 s\)"):
        storage.presign(bucket, "k", "GET", expires)


def test_presign_accepts_exactly_seven_days(storage, bucket):
    assert "X-Amz-Expires=604800&" in storage.presign(bucket, "k", "PUT", 604_800)


@pytest.mark.parametrize("method", ["DELETE", "POST", "HEAD", ""])
def test_presign_refuses_methods_other_than_get_and_put(storage, bucket, method):
    with pytest.raises(PermanentError, match="for GET or PUT"):
        storage.presign(bucket, "k", method)


def test_presign_signs_locally_without_reaching_the_server():
    offline = S3Storage(
        "offline",
        S3StorageOptions.model_validate(
            {
                "type": "s3",
                "endpoint_url": "http://127.0.0.1:9",
                "region": "eu-west-3",
                "access_key_id": "AKEXAMPLE",
                "secret_access_key": "not-in-the-url",
                "addressing_style": "path",
            }
        ),
    )
    url = offline.presign("b", "a key", "GET", 60)
    assert url.startswith("http://127.0.0.1:9/b/a%20key?")
    assert "eu-west-3" in url and "AKEXAMPLE" in url and "not-in-the-url" not in url


# -- copy -------------------------------------------------------------------------------


def no_transfer(storage: S3Storage, monkeypatch) -> None:
    """Fail the test if a copy moves the bytes through this process."""

    def refuse(*args, **kwargs):
        raise AssertionError("the copy went through the client, not the server")

    for name in ("get_file", "fetch", "fetch_many", "put_file"):
        monkeypatch.setattr(storage, name, refuse)


@pytest.mark.parametrize(
    "src_key, dst_key",
    [("job/a.bin", "copies/a.bin"), (ODD_KEYS[0], ODD_KEYS[1]), (ODD_KEYS[1], "copies/ünï cødé with space ✓.bin")],
)
def test_copy_on_the_server(storage, bucket, seaweedfs, tmp_path, monkeypatch, src_key, dst_key):
    data = os.urandom(200_000)
    put = storage.put_file(bucket, src_key, write(tmp_path / "src", data))
    other = seaweedfs.new_bucket()
    no_transfer(storage, monkeypatch)
    info = storage.copy(bucket, src_key, other, dst_key)
    assert info == storage.head(other, dst_key)
    assert info.size == len(data) and info.checksum == put.checksum  # the sha256 metadata came along
    client = seaweedfs.client()
    assert client.get_object(Bucket=other, Key=dst_key)["Body"].read() == data
    assert client.get_object(Bucket=bucket, Key=src_key)["Body"].read() == data  # the source stays


def test_copy_of_a_missing_source_is_permanent_and_names_the_key(storage, bucket):
    with pytest.raises(PermanentError, match=f"{bucket}/job/absent file.txt does not exist"):
        storage.copy(bucket, "job/absent file.txt", bucket, "dst.txt")
    assert storage.head(bucket, "dst.txt") is None


def test_copy_into_a_missing_bucket_names_it(moto_s3, tmp_path):
    """On moto, which answers NoSuchBucket as AWS does (SeaweedFS answers 500 InternalError: retried)."""
    storage = make_storage(moto_s3)
    bucket = moto_s3.new_bucket()
    storage.put_file(bucket, "k", write(tmp_path / "src", b"x"))
    with pytest.raises(PermanentError, match="bucket 'no-such-bucket-here' does not exist"):
        storage.copy(bucket, "k", "no-such-bucket-here", "k")


@pytest.mark.parametrize("server", ["seaweedfs", "moto_s3"])
def test_copy_over_the_threshold_goes_in_upload_part_copy_parts(request, tmp_path, monkeypatch, server):
    """A tiny copy_part_threshold forces the multipart path (both servers implement UploadPartCopy)."""
    s3 = request.getfixturevalue(server)
    storage = make_storage(s3, copy_part_threshold="1MiB", copy_part_size="5MiB")
    bucket = s3.new_bucket()
    data = os.urandom(12 * 1024 * 1024 + 123)
    put = storage.put_file(bucket, "job/big ü.bin", write(tmp_path / "big", data))
    client = s3.client()
    calls = []
    real = storage._boto().upload_part_copy
    monkeypatch.setattr(storage._boto(), "upload_part_copy", lambda **kw: calls.append(kw) or real(**kw))
    no_transfer(storage, monkeypatch)
    info = storage.copy(bucket, "job/big ü.bin", bucket, "copy/big é.bin")
    assert sorted(call["CopySourceRange"] for call in calls) == sorted(
        ["bytes=0-5242879", "bytes=5242880-10485759", f"bytes=10485760-{len(data) - 1}"]
    )
    assert info.size == len(data) and info.etag.endswith("-3")
    assert info.checksum == put.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
    assert client.get_object(Bucket=bucket, Key="copy/big é.bin")["Body"].read() == data
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    storage.close()


def test_a_failed_part_aborts_the_multipart_copy(seaweedfs, tmp_path, monkeypatch):
    storage = make_storage(seaweedfs, copy_part_threshold="1MiB", copy_part_size="5MiB")
    bucket = seaweedfs.new_bucket()
    storage.put_file(bucket, "src.bin", write(tmp_path / "big", os.urandom(11 * 1024 * 1024)))
    client = storage._boto()
    real = client.upload_part_copy

    def second_part_fails(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(**kwargs)

    monkeypatch.setattr(client, "upload_part_copy", second_part_fails)
    with pytest.raises(TransientError, match=f"{bucket}/dst.bin"):
        storage.copy(bucket, "src.bin", bucket, "dst.bin")
    assert storage.head(bucket, "dst.bin") is None
    assert seaweedfs.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    storage.close()


def test_a_copy_of_the_wrong_size_is_transient(storage, bucket, tmp_path, monkeypatch):
    storage.put_file(bucket, "src.bin", write(tmp_path / "a", b"the whole content"))
    storage.put_file(bucket, "short.bin", write(tmp_path / "b", b"short"))
    client = storage._boto()
    real = client.copy_object

    def copies_something_else(**kwargs):  # a server that answers 200 but leaves another object
        return real(Bucket=kwargs["Bucket"], Key=kwargs["Key"], CopySource={"Bucket": bucket, "Key": "short.bin"})

    monkeypatch.setattr(client, "copy_object", copies_something_else)
    with pytest.raises(TransientError, match="the copy has 5 bytes, the source 17"):
        storage.copy(bucket, "src.bin", bucket, "dst.bin")


def test_a_source_that_changed_since_its_head_is_not_copied(storage, bucket, tmp_path, monkeypatch):
    storage.put_file(bucket, "src.bin", write(tmp_path / "a", b"version one"))
    real_head = storage.head
    stale = real_head(bucket, "src.bin")
    storage.put_file(bucket, "src.bin", write(tmp_path / "b", b"version two, longer"))
    monkeypatch.setattr(storage, "head", lambda b, k: stale if k == "src.bin" else real_head(b, k))
    with pytest.raises(TransientError, match="412"):
        storage.copy(bucket, "src.bin", bucket, "dst.bin")
    assert real_head(bucket, "dst.bin") is None
