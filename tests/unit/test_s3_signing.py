"""The S3 fast path addresses and signs a request exactly as botocore does, for keys and queries that are easy to get
wrong: each request botocore would send is caught before it leaves, and the fast path's path and Authorization
header for the same operation must equal botocore's."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from syncd.storage.s3 import wire

ODD_KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+equals=amp&.txt",
    "100%25 and %.txt",
    "ünïcödé/ß/日本.txt",
    "emoji 😀.bin",
    "dir//double//slash",
    "./dot/../dotdot/.",
    "hash#and?question",
    "tab\there and\nnewline",
    "control\x01\x1fbytes",
    "~tilde-_.safe",
    "semi;colon,comma:colon@at!bang*star'quote(paren)",
    "trailing/",
    '[brackets]{braces}|pipe\\back^caret`grave"dq<lt>gt',
]
ENDPOINT = "https://s3.example.test:9000"
REGION = "eu-west-2"
ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class Caught(Exception):
    def __init__(self, request):
        self.request = request


def botocore_sends(operation: str, endpoint: str = ENDPOINT, **params):
    """The request botocore would send for ``operation`` (never sent)."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(s3={"addressing_style": "path", "payload_signing_enabled": False}, retries={"max_attempts": 0}),
    )

    def catch(request, **kwargs):
        raise Caught(request)

    client.meta.events.register("before-send.s3.*", catch)
    with pytest.raises(Caught) as caught:
        getattr(client, operation)(**params)
    return caught.value.request


class Credentials:
    def get_frozen_credentials(self):
        from botocore.credentials import ReadOnlyCredentials

        return ReadOnlyCredentials(ACCESS, SECRET, None)


def fast_path_authorization(
    monkeypatch, sent, method: str, path: str, query: dict[str, str], endpoint: str = ENDPOINT
) -> str:
    """The fast path's Authorization header for the same request, signed at botocore's instant with the same
    extra headers botocore signed."""
    stamp = (
        sent.headers["X-Amz-Date"].decode()
        if isinstance(sent.headers["X-Amz-Date"], bytes)
        else sent.headers["X-Amz-Date"]
    )
    monkeypatch.setattr(wire.time, "gmtime", lambda *args: time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    signed = str(sent.headers["Authorization"]).split("SignedHeaders=")[1].split(",")[0].split(";")
    own = {"host", "x-amz-date", "x-amz-content-sha256"}
    headers = {name: _text(sent.headers[name]) for name in signed if name not in own}
    wire.SigV4(Credentials(), REGION).sign(method, urlsplit(endpoint).netloc, path, query, headers)
    return headers["Authorization"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_an_object_is_addressed_and_signed_as_botocore_does(monkeypatch, key):
    sent = botocore_sends("get_object", Bucket="bucket-1", Key=key)
    assert _text(sent.headers["X-Amz-Content-SHA256"]) == wire.UNSIGNED_PAYLOAD
    host, path = wire.Endpoint(ENDPOINT, REGION, virtual_hosted=False).target("bucket-1", key)
    assert (host, path) == (urlsplit(sent.url).netloc, urlsplit(sent.url).path)
    assert fast_path_authorization(monkeypatch, sent, "GET", path, {}) == _text(sent.headers["Authorization"])


@pytest.mark.parametrize("prefix", ["", *ODD_KEYS])
def test_a_listing_page_is_queried_and_signed_as_botocore_does(monkeypatch, prefix):
    token = "1/ab+c=d&e f%"
    sent = botocore_sends(
        "list_objects_v2", Bucket="bucket-1", Prefix=prefix, ContinuationToken=token, EncodingType="url", MaxKeys=1000
    )
    query = wire.list_query(prefix, token)
    authorization = fast_path_authorization(monkeypatch, sent, "GET", "/bucket-1", query)
    assert authorization == _text(sent.headers["Authorization"])


@pytest.mark.parametrize(
    "endpoint",
    ["http://[::1]:9000", "http://127.0.0.1:9000/prefix/s3", "https://s3.example.test/pre/", "http://[fd00::5]/p"],
)
def test_an_ipv6_literal_or_a_path_in_the_endpoint_is_kept_as_botocore_keeps_it(monkeypatch, endpoint):
    base = endpoint.rstrip("/")  # as the storage keeps endpoint_url
    sent = botocore_sends("get_object", base, Bucket="bucket-1", Key="a b/c")
    host, path = wire.Endpoint(base, REGION, virtual_hosted=False).target("bucket-1", "a b/c")
    assert (host, path) == (urlsplit(sent.url).netloc, urlsplit(sent.url).path)
    signed = fast_path_authorization(monkeypatch, sent, "GET", path, {}, base)
    assert signed == _text(sent.headers["Authorization"])
