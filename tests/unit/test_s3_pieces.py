"""Small pure pieces of the S3 storage and the sync command: error classes, addressing, remote specs."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import threading
import time
import zlib

import pytest

from syncd.errors import AuthError, PermanentError, TransientError
from syncd.storage.base import ObjectInfo, inputs_prefix
from syncd.storage.s3.errors import classify, classify_status, code_from_body, region_from
from syncd.storage.s3.http11 import Headers
from syncd.storage.s3.storage import (
    S3Storage,
    S3StorageOptions,
    StaticCredentials,
    _Slots,
)
from syncd.storage.s3.wire import Endpoint, parse_list_page
from tests.support.harness import wait_for


@pytest.mark.parametrize(
    "status, code, kind, fragment",
    [
        (403, "InvalidAccessKeyId", AuthError, "refused the credentials"),
        (403, "SignatureDoesNotMatch", AuthError, "access_key_id"),
        (404, "NoSuchBucket", PermanentError, "bucket 'b' does not exist"),
        (404, "NoSuchKey", PermanentError, "does not exist"),
        (503, "SlowDown", TransientError, "answered 503 SlowDown"),
        (500, "InternalError", TransientError, "answered 500 InternalError"),
        (412, "PreconditionFailed", TransientError, "answered 412 PreconditionFailed"),
        (400, "InvalidArgument", PermanentError, "refused the request"),
        (501, "NotImplemented", PermanentError, "does not implement this request"),
    ],
)
def test_classify_status_names_the_object_and_the_fix(status, code, kind, fragment):
    error = classify_status(status, code, "b/k", "http://127.0.0.1:9000")
    assert type(error) is kind
    assert fragment in str(error) and ("b/k" in str(error) or "'b'" in str(error))


@pytest.mark.parametrize(
    "status, code, region, kind, fragments",
    [
        (403, "RequestTimeTooSkewed", None, TransientError, ["fix the clock", "RequestTimeTooSkewed"]),
        (301, "PermanentRedirect", "eu-west-1", PermanentError, ["is in region eu-west-1", "set region: eu-west-1"]),
        (307, "", "ap-south-1", PermanentError, ["is in region ap-south-1", "set region: ap-south-1"]),
        (400, "AuthorizationHeaderMalformed", "us-west-2", PermanentError, ["set region: us-west-2"]),
        (400, "AuthorizationHeaderMalformed", None, PermanentError, ["in another region", "set region"]),
    ],
)
def test_the_s3_code_decides_before_the_status_clock_and_region_are_not_credentials(
    status, code, region, kind, fragments
):
    error = classify_status(status, code, "b/k", "https://s3.example", region=region)
    assert type(error) is kind, error
    assert all(f in str(error) for f in fragments) and "access_key_id" not in str(error), str(error)


def test_the_region_comes_from_the_header_else_the_error_body():
    body = b"<Error><Code>AuthorizationHeaderMalformed</Code><Region>eu-central-1</Region></Error>"
    assert region_from(body, None) == "eu-central-1"
    assert region_from(body, "us-east-2") == "us-east-2"
    assert region_from(b"<Error><Code>AccessDenied</Code></Error>", None) is None


def test_classify_status_keeps_retry_after():
    assert classify_status(503, "SlowDown", "b/k", "e", "7").retry_after == 7.0


def test_code_from_body_reads_the_xml_code():
    assert code_from_body(b"<Error><Code>NoSuchKey</Code><Message>x</Message></Error>") == "NoSuchKey"
    assert code_from_body(b"") == ""


def test_classify_full_disk_is_transient_with_the_fix():
    error = classify(OSError(errno.ENOSPC, "No space left on device"), "writing /outbox/x", "e")
    assert isinstance(error, TransientError) and "free space on that filesystem" in str(error)


def test_classify_connection_reset_is_transient():
    assert isinstance(classify(ConnectionResetError(errno.ECONNRESET, "reset"), "b/k", "e"), TransientError)


def test_endpoint_addressing_styles():
    path = Endpoint("http://127.0.0.1:8333", "us-east-1", virtual_hosted=False)
    assert path.target("b", "a b/ü+x.txt") == ("127.0.0.1:8333", "/b/a%20b/%C3%BC%2Bx.txt")
    assert path.target("b", "") == ("127.0.0.1:8333", "/b")
    virtual = Endpoint("https://s3.eu-west-1.amazonaws.com", "eu-west-1", virtual_hosted=True)
    assert virtual.target("bkt", "k") == ("bkt.s3.eu-west-1.amazonaws.com", "/k")
    assert virtual.target("dotted.bkt", "k") == ("s3.eu-west-1.amazonaws.com", "/dotted.bkt/k"), "TLS-safe"


def test_static_credentials_never_print_the_secret():
    creds = StaticCredentials("AKIDEXAMPLE", "very-secret-value", "token-value")
    assert "very-secret-value" not in repr(creds) and "token-value" not in repr(creds)


def test_inputs_prefix_sits_apart_from_results():
    assert inputs_prefix("lab/results", "20260101-000000-abc123") == "lab/results/_inputs/20260101-000000-abc123/"
    assert inputs_prefix("", "j") == "_inputs/j/"


def test_parse_remote_needs_a_configured_storage(tmp_path):
    from types import SimpleNamespace

    from syncd.delivery.sync import RemoteSpec, parse_remote

    config = SimpleNamespace(storages={"lab": {}})
    assert parse_remote("lab:bucket/some/prefix/", config) == RemoteSpec("lab", "bucket", "some/prefix/")
    assert parse_remote("lab:bucket", config) == RemoteSpec("lab", "bucket", "")
    assert parse_remote("./local:dir", config) is None
    assert parse_remote("/abs/path", config) is None
    with pytest.raises(ValueError, match="names no bucket"):
        parse_remote("lab:", config)
    with pytest.raises(PermanentError):
        parse_remote("lab:b/../x", config)


def test_s3_example_config_is_valid():
    from pathlib import Path

    from syncd import plugins
    from syncd.config import load_config

    example = Path(__file__).parents[2] / "examples" / "s3" / "syncd.yaml"
    config = load_config(example, plugins.options_model, env={"S3_ACCESS_KEY": "key", "S3_SECRET_KEY": "secret-value"})
    assert config.storage_options["lab-s3"].type == "s3"
    assert [m.name for m in config.mirrors] == ["instrument"]
    assert "secret-value" not in repr(config)


def test_batch_connection_budget_is_shared_and_never_blocks():
    slots = _Slots(8)
    assert slots.take(3) == 3  # no more than the batch has objects
    assert slots.take(100) == 5  # the rest
    assert slots.take(10) == 0  # none free: the caller runs on one connection of its own, without waiting
    slots.give(5)
    assert slots.take(100) == 5
    slots.give(0)
    slots.give(3)
    slots.give(5)
    assert slots.take(100) == 8


class _PartsHttp:
    """Answers ranged GETs: the part at offset 0 fails at once, the others write after a pause."""

    def __init__(self):
        self.fetch_returned = threading.Event()
        self.late_writes = 0
        self.writing = 0  # parts inside write_to right now
        self.lock = threading.Lock()

    def request(self, method, bucket, key, *, stream=False, headers=None):
        if headers["Range"].startswith("bytes=0-"):
            raise ConnectionResetError("reset by the test")
        return self

    headers = Headers()

    def write_to(self, fd, offset, lock):
        with self.lock:
            self.writing += 1
        try:
            time.sleep(0.3)
            if self.fetch_returned.is_set():
                self.late_writes += 1
            return os.pwrite(fd, b"x" * 4, offset)
        finally:
            with self.lock:
                self.writing -= 1

    def release_conn(self):
        pass

    def close(self):
        pass


def test_a_failed_part_ends_the_fetch_only_after_the_other_parts_stopped_writing(tmp_path):
    # A part still writing after fetch() raised would write into whatever file next got its
    # descriptor number: another object's temporary file, or the state database.
    options = S3StorageOptions(
        type="s3",
        endpoint_url="http://127.0.0.1:9",
        access_key_id="k",
        secret_access_key="s",
        part_size="5MiB",
        part_workers=3,
    )
    storage = S3Storage("s3", options)
    storage._ready()  # builds the part workers; no connection is made
    storage._http = http = _PartsHttp()
    with pytest.raises(TransientError, match="b/big"):
        storage.fetch("b", "big", tmp_path / "big.part", ObjectInfo("big", 15 * 1024 * 1024, "e-3"))
    http.fetch_returned.set()
    storage.close()  # no part starts from here on; one that was still writing is counted when it ends
    wait_for(lambda: http.writing == 0, timeout=10, what="the parts to stop writing")
    assert http.late_writes == 0


def test_the_content_check_follows_what_the_object_carries():
    storage = S3Storage("s3", S3StorageOptions(type="s3", endpoint_url="http://127.0.0.1:9"))
    md5_etag = '"0123456789abcdef0123456789abcdef"'

    def check(headers: dict[str, str], listed_etag: str | None = None) -> str | None:
        digest = storage._digest_for(Headers(headers), listed_etag)
        return digest.name if digest is not None else None

    assert check({"x-amz-meta-sha256": "ab" * 32, "etag": md5_etag}) == "sha256"  # syncd's own upload
    assert check({"etag": md5_etag}) == "md5"  # a single-part ETag is the MD5
    assert check({"etag": '"0123456789abcdef0123456789abcdef-4"'}) is None  # multipart: size only
    assert check({"etag": md5_etag, "x-amz-server-side-encryption": "aws:kms"}) is None
    assert check({"etag": md5_etag, "x-amz-server-side-encryption-customer-algorithm": "AES256"}) is None
    # A ranged part's headers may lack the ETag: the listed one decides.
    assert check({}, listed_etag="0123456789abcdef0123456789abcdef") == "md5"


LISTING = """<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult{ns}><Name>b</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
{encoding}<IsTruncated>{truncated}</IsTruncated>{token}
<Contents><Key>{key}</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified><ETag>"abc"</ETag><Size>3</Size></Contents>
<Contents><Key>two.txt</Key><LastModified>2026-01-02T03:04:05.000Z</LastModified><ETag>"def"</ETag><Size>5</Size></Contents>
</ListBucketResult>"""


def _page(
    ns: str = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"',
    *,
    key: str = "a%20b%2Bc.txt",
    encoding: str = "<EncodingType>url</EncodingType>",
    truncated: str = "false",
    token: str = "",
) -> bytes:
    return LISTING.format(ns=ns, key=key, encoding=encoding, truncated=truncated, token=token).encode()


@pytest.mark.parametrize(
    "ns",
    [
        ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"',
        ' xmlns="http://doc.s3.amazonaws.com/2006-03-01"',  # Google Cloud Storage's XML API
        "",
    ],
    ids=["aws", "gcs", "none"],
)
def test_a_listing_in_any_namespace_is_read_whole(ns):
    listed, token = parse_list_page(_page(ns), "b")
    assert [(o.key, o.size, o.etag) for o in listed] == [("a b+c.txt", 3, "abc"), ("two.txt", 5, "def")]
    assert token is None


def test_keys_are_decoded_only_when_the_server_says_it_encoded_them():
    listed, _ = parse_list_page(_page(key="100%+sure.txt", encoding=""), "b")
    assert listed[0].key == "100%+sure.txt", "a server that ignores encoding-type sends keys as they are"


@pytest.mark.parametrize(
    "body",
    [
        b"<Error><Code>AccessDenied</Code></Error>",
        b"<html><body>proxy</body></html>",
        b"<ListBucketResult><Contents><Key>cut",
        b"",
    ],
)
def test_an_answer_that_is_not_a_listing_is_an_error_never_an_empty_bucket(body):
    with pytest.raises(TransientError) as caught:
        parse_list_page(body, "b")
    assert "never takes this for an empty bucket" in str(caught.value) or "not XML" in str(caught.value)


def test_a_truncated_listing_without_a_continuation_token_is_an_error_not_the_end():
    with pytest.raises(TransientError, match="no continuation token"):
        parse_list_page(_page(truncated="true"), "b")
    _, token = parse_list_page(_page(truncated="true", token="<NextContinuationToken>t2</NextContinuationToken>"), "b")
    assert token == "t2"


def test_classify_status_without_an_s3_code_shows_the_status_alone_and_promises_nothing():
    error = classify_status(500, "", "b/k", "http://127.0.0.1:9000")
    assert isinstance(error, TransientError)
    assert str(error) == "b/k: the S3 server at http://127.0.0.1:9000 answered 500"
    assert "syncd retries" not in str(classify_status(503, "SlowDown", "b/k", "http://h"))  # true only while it does


def test_the_content_is_checked_against_the_best_checksum_the_headers_offer():
    from syncd.storage.s3.storage import _check_for

    data = b"the object's content"
    md5 = hashlib.md5(data).hexdigest()
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    sha = base64.b64encode(hashlib.sha256(data).digest()).decode()
    own = Headers({"x-amz-meta-sha256": hashlib.sha256(data).hexdigest(), "x-amz-checksum-crc32": crc})
    cases = [
        (own, md5, True, "sha256"),  # syncd's own SHA-256 first
        (Headers({"x-amz-checksum-crc32": crc, "x-amz-checksum-sha256": sha}), md5, True, "sha256"),
        (Headers({"x-amz-checksum-crc32": crc}), md5, True, "crc32"),  # the server's before the ETag's MD5
        (Headers({"x-amz-checksum-sha256": sha + "-3"}), md5, True, "md5"),  # composite: needs the part sizes
        (Headers({"x-amz-checksum-crc32c": "AAAAAA=="}), md5, True, "md5"),  # CRC32C: not checked
    ]
    for headers, etag, single_part, name in cases:
        check = _check_for(headers, etag, single_part)
        assert check is not None and check.name == name, (headers, check and check.name)
        check.update(data)
        assert check.hexdigest() == check.expected
    assert _check_for(Headers(), "abc-2", False) is None, "a multipart object with no checksum: by size"
    wrong = _check_for(Headers({"x-amz-checksum-crc32": crc}), md5, True)
    wrong.update(data + b"!")
    assert wrong.hexdigest() != wrong.expected
