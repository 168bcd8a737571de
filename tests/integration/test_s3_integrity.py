"""What the S3 storage checks a download against, on real servers (SeaweedFS and moto): syncd's own SHA-256, else
the full-object checksum the server keeps for an object another tool uploaded with one, else a single-part ETag's
MD5, else the size; and how it recognises a local file as an object's content without downloading it, multipart
ETags included."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest

from syncd.errors import TransientError
from tests.integration.conftest import make_storage
from tests.support.s3_front import S3Front

pytestmark = pytest.mark.s3


@pytest.fixture(params=["seaweedfs", "moto_s3"])
def server(request):
    return request.getfixturevalue(request.param)


def upload_with_crc32(client, bucket: str, key: str, parts: list[bytes]) -> None:
    """A multipart upload as another tool makes it: no metadata of syncd's, a full-object CRC32."""
    started = client.create_multipart_upload(
        Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32", ChecksumType="FULL_OBJECT"
    )
    done = []
    for number, data in enumerate(parts, 1):
        answer = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32",
        )
        done.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumCRC32": answer["ChecksumCRC32"]})
    whole = base64.b64encode(zlib.crc32(b"".join(parts)).to_bytes(4, "big")).decode()
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=started["UploadId"],
        MultipartUpload={"Parts": done},
        ChecksumCRC32=whole,
        ChecksumType="FULL_OBJECT",
    )


def flip_one_byte(method: str, path: str, body: bytes) -> bytes:
    """Damage every object body on the way, keeping its length (so only a checksum can tell)."""
    if method == "GET" and "list-type" not in path and len(body) > 100:
        return body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
    return body


@pytest.mark.parametrize("size", [(5 << 20) + 1000, 3000], ids=["ranged", "whole"])
def test_another_tools_object_is_checked_against_the_servers_full_object_crc32(server, tmp_path, size):
    bucket = server.new_bucket("crc")
    data = os.urandom(size)
    parts = [data[: 5 << 20], data[5 << 20 :]] if size > 5 << 20 else [data]  # parts but the last ≥ 5 MiB
    upload_with_crc32(server.client(), bucket, "other/tool.bin", parts)
    host, port = server.endpoint.rsplit("//", 1)[1].split(":")
    with S3Front((host, int(port)), alter=flip_one_byte) as damaging:
        storage = make_storage(server, endpoint=damaging.endpoint, part_size="5MiB")
        (listed,) = storage.list(bucket, "other/")
        assert listed.etag.endswith(f"-{len(parts)}"), "a multipart ETag: no MD5 to check against"
        with pytest.raises(TransientError, match="does not match its crc32 checksum"):
            storage.fetch(bucket, "other/tool.bin", tmp_path / "damaged", listed)
        storage.close()
    storage = make_storage(server, part_size="5MiB")
    storage.fetch(bucket, "other/tool.bin", tmp_path / "whole", listed)
    assert (tmp_path / "whole").read_bytes() == data
    ((_, _, outcome),) = storage.fetch_many(bucket, [(listed, tmp_path / "batch")])
    assert not isinstance(outcome, BaseException) and (tmp_path / "batch").read_bytes() == data
    storage.close()


def test_a_local_file_is_recognised_by_a_multipart_etag_of_syncd_or_of_another_tool(server, tmp_path):
    bucket = server.new_bucket("etag")
    storage = make_storage(server, part_size="5MiB")
    data = os.urandom(18 << 20)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    storage.put_file(bucket, "own.bin", local)  # syncd's own: parts of 5 MiB
    client = server.client()
    started = client.create_multipart_upload(Bucket=bucket, Key="cli.bin")  # as the AWS CLI: parts of 8 MiB
    parts = [data[i : i + (8 << 20)] for i in range(0, len(data), 8 << 20)]
    done = [
        {
            "PartNumber": n,
            "ETag": client.upload_part(
                Bucket=bucket, Key="cli.bin", UploadId=started["UploadId"], PartNumber=n, Body=p
            )["ETag"],
        }
        for n, p in enumerate(parts, 1)
    ]
    client.complete_multipart_upload(
        Bucket=bucket, Key="cli.bin", UploadId=started["UploadId"], MultipartUpload={"Parts": done}
    )
    listed = {o.key: o for o in storage.list(bucket, "")}
    assert listed["own.bin"].etag.endswith("-4") and listed["cli.bin"].etag.endswith("-3")
    assert storage.same_content(listed["own.bin"], local) is True
    assert storage.same_content(listed["cli.bin"], local) is True
    changed = tmp_path / "changed.bin"
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not storage.same_content(listed["own.bin"], changed), "one byte differs: download it"
    assert not storage.same_content(listed["cli.bin"], tmp_path / "local.bin.missing")
    storage.close()


def a_file(folder, size: int):
    """A file of ``size`` random bytes in ``folder``, and its content."""
    data = os.urandom(size)
    source = folder / "big.bin"
    source.write_bytes(data)
    return source, data


def test_a_multipart_upload_carries_its_sha256_as_a_tag_and_a_download_checks_it(server, tmp_path):
    bucket = server.new_bucket("tag")
    source, data = a_file(tmp_path, (12 << 20) + 333)
    storage = make_storage(server, part_size="5MiB")
    put = storage.put_file(bucket, "job/big.bin", source)
    sha = hashlib.sha256(data).hexdigest()
    assert put.etag.endswith("-3") and put.checksum == f"sha256:{sha}"
    client = server.client()  # the official SDK reads what syncd left: metadata says where, the tag holds it
    assert client.head_object(Bucket=bucket, Key="job/big.bin")["Metadata"] == {"sha256-in": "tagging"}
    assert client.get_object_tagging(Bucket=bucket, Key="job/big.bin")["TagSet"] == [{"Key": "sha256", "Value": sha}]
    whole = make_storage(server, part_size="64MiB")  # one stream, hashed as it arrives
    for reader, name in ((storage, "ranged"), (whole, "whole")):
        head = reader.head(bucket, "job/big.bin")
        assert head is not None and head.checksum == f"sha256:{sha}"
        got = reader.fetch(bucket, "job/big.bin", tmp_path / name, head)
        assert got.checksum == f"sha256:{sha}" and (tmp_path / name).read_bytes() == data
    client.put_object_tagging(
        Bucket=bucket, Key="job/big.bin", Tagging={"TagSet": [{"Key": "sha256", "Value": "0" * 64}]}
    )
    for reader, name in ((storage, "ranged"), (whole, "whole")):
        with pytest.raises(TransientError, match="does not match its sha256 checksum"):
            reader.fetch(bucket, "job/big.bin", tmp_path / f"{name}-2")
    host, port = server.endpoint.rsplit("//", 1)[1].split(":")
    with S3Front((host, int(port)), refuse=lambda method, path: method == "GET" and "tagging" in path) as no_tags:
        reader = make_storage(server, endpoint=no_tags.endpoint, part_size="5MiB")  # may not read tags
        got = reader.fetch(bucket, "job/big.bin", tmp_path / "untold")
        assert got.checksum is None and (tmp_path / "untold").read_bytes() == data and no_tags.refused
        reader.close()
    client.delete_object_tagging(Bucket=bucket, Key="job/big.bin")  # as after a crash before the tag was set
    for reader, name in ((storage, "ranged"), (whole, "whole")):
        got = reader.fetch(bucket, "job/big.bin", tmp_path / f"{name}-3")
        assert got.checksum is None and (tmp_path / f"{name}-3").read_bytes() == data
    storage.close()
    whole.close()


def test_a_copy_of_a_tagged_object_keeps_its_sha256(seaweedfs, tmp_path):
    bucket = seaweedfs.new_bucket("tagcopy")
    source, data = a_file(tmp_path, (11 << 20) + 5)
    sha = f"sha256:{hashlib.sha256(data).hexdigest()}"
    storage = make_storage(seaweedfs, part_size="5MiB")
    storage.put_file(bucket, "a.bin", source)
    assert storage.copy(bucket, "a.bin", bucket, "whole.bin").checksum == sha  # one CopyObject
    in_parts = make_storage(seaweedfs, part_size="5MiB", copy_part_threshold="6MiB", copy_part_size="5MiB")
    assert in_parts.copy(bucket, "a.bin", bucket, "parts.bin").checksum == sha  # UploadPartCopy parts
    for key in ("whole.bin", "parts.bin"):
        assert storage.fetch(bucket, key, tmp_path / key).checksum == sha
        assert (tmp_path / key).read_bytes() == data
    storage.close()
    in_parts.close()


def test_a_server_that_refuses_tags_gets_the_sha256_in_metadata_instead(seaweedfs, tmp_path):
    bucket = seaweedfs.new_bucket("notag")
    source, data = a_file(tmp_path, (10 << 20) + 7)
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    with S3Front((host, int(port)), refuse=lambda method, path: "tagging" in path) as untagged:
        storage = make_storage(seaweedfs, endpoint=untagged.endpoint, part_size="5MiB")
        for key in ("first.bin", "second.bin"):
            put = storage.put_file(bucket, key, source)
            assert put.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
            metadata = seaweedfs.client().head_object(Bucket=bucket, Key=key)["Metadata"]
            assert metadata == {"sha256": hashlib.sha256(data).hexdigest()}
            assert storage.fetch(bucket, key, tmp_path / key).checksum == put.checksum
        assert untagged.refused == [f"PUT /{bucket}/first.bin?tagging"], "refused once, then never asked again"
        storage.close()


def test_an_upload_in_parts_does_not_read_back_the_tag_it_has_just_set(seaweedfs, tmp_path):
    bucket = seaweedfs.new_bucket("noreadback")
    source, data = a_file(tmp_path, (10 << 20) + 3)
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    with S3Front((host, int(port)), refuse=lambda method, path: method == "GET" and "tagging" in path) as front:
        storage = make_storage(seaweedfs, endpoint=front.endpoint, part_size="5MiB")
        put = storage.put_file(bucket, "big.bin", source)
        assert put.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert front.refused == [], "the digest it has just computed is not asked for again"
        storage.close()
    tags = seaweedfs.client().get_object_tagging(Bucket=bucket, Key="big.bin")["TagSet"]
    assert tags == [{"Key": "sha256", "Value": hashlib.sha256(data).hexdigest()}]


def test_a_file_that_changes_while_its_parts_go_up_is_sent_again(seaweedfs, tmp_path, monkeypatch):
    bucket = seaweedfs.new_bucket("changing")
    source, _ = a_file(tmp_path, 11 << 20)
    storage = make_storage(seaweedfs, part_size="5MiB")
    client = storage._boto()
    real_upload = client.upload_file

    def upload_then_append(*args, **kwargs):
        real_upload(*args, **kwargs)
        with open(source, "ab") as more:  # the writer was still at work
            more.write(b"tail")

    monkeypatch.setattr(client, "upload_file", upload_then_append)
    with pytest.raises(TransientError, match="changed while it was being sent"):
        storage.put_file(bucket, "big.bin", source)
    monkeypatch.undo()
    put = storage.put_file(bucket, "big.bin", source)
    assert put.checksum == f"sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"
    assert storage.fetch(bucket, "big.bin", tmp_path / "back").size == source.stat().st_size
    storage.close()
