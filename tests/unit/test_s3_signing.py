"""The S3 fast path addresses and signs a request exactly as botocore does, for keys and queries that are easy to get
wrong: each request botocore would send is caught before it leaves, and the fast path's path and Authorization
header for the same operation must equal botocore's."""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from syncd.errors import PermanentError
from syncd.storage.s3 import wire
from syncd.storage.s3.storage import S3Storage, S3StorageOptions

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


def botocore_sends(operation: str, endpoint: str | None = ENDPOINT, region: str = REGION, s3=None, **params):
    """The request botocore would send for ``operation`` (never sent); path-style, payload unsigned unless ``s3``
    (botocore's s3 config) says otherwise."""
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(
            s3=s3 if s3 is not None else {"addressing_style": "path", "payload_signing_enabled": False},
            retries={"max_attempts": 0},
        ),
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


def storage_target(monkeypatch, bucket: str, env: dict[str, str] | None = None, **options) -> tuple[str, str]:
    """(host, path) of ``bucket/k`` as an S3 storage with these options addresses it (no request is sent)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    section = {"type": "s3", "access_key_id": ACCESS, "secret_access_key": SECRET, **options}
    storage = S3Storage("s3", S3StorageOptions.model_validate(section))
    return storage._connect().endpoint.target(bucket, "k")


def botocore_target(bucket: str, region: str, endpoint: str | None, style: str | None) -> tuple[str, str]:
    sent = botocore_sends(
        "get_object", endpoint, region, {"addressing_style": style} if style else {}, Bucket=bucket, Key="k"
    )
    url = urlsplit(sent.url)
    return url.netloc, url.path


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-2", "cn-north-1", "cn-northwest-1", "us-gov-west-1"])
@pytest.mark.parametrize("bucket", ["plain-bucket", "dotted.bucket.name", "Upper_Case"])
def test_aws_endpoints_and_addressing_match_botocore_in_every_partition(monkeypatch, region, bucket):
    ours = storage_target(monkeypatch, bucket, region=region)
    assert ours == botocore_target(bucket, region, None, None)


@pytest.mark.parametrize(
    "endpoint, bucket, style",
    [
        ("http://127.0.0.1:9000", "plain", "virtual"),  # an IP address has no bucket subdomains
        ("https://minio.lab:9000", "dotted.b", "virtual"),  # a dotted name would break TLS: path-style
        ("https://minio.lab:9000", "plain", "virtual"),
        ("https://minio.lab:9000", "plain", "path"),
    ],
)
def test_a_configured_endpoint_is_addressed_as_botocore_addresses_it(monkeypatch, endpoint, bucket, style):
    ours = storage_target(monkeypatch, bucket, endpoint_url=endpoint, addressing_style=style, region="eu-west-2")
    assert ours == botocore_target(bucket, "eu-west-2", endpoint, style)


def test_the_endpoint_in_the_environment_is_the_one_both_halves_use(monkeypatch):
    env = {"AWS_ENDPOINT_URL_S3": "http://env.example:1234/"}
    assert storage_target(monkeypatch, "plain", env, region="eu-west-2") == ("env.example:1234", "/plain/k")
    env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
    host, _ = storage_target(monkeypatch, "plain", env, region="eu-west-2")
    assert host == "plain.s3.eu-west-2.amazonaws.com"
    configured = storage_target(monkeypatch, "plain", env, endpoint_url="http://cfg.example", region="eu-west-2")
    assert configured == ("cfg.example", "/plain/k"), "the config wins over the environment"


def test_the_boto3_half_signs_with_the_credentials_the_chain_keeps_fresh(tmp_path, monkeypatch):
    """Credentials from a profile's credential_process that expire within minutes are fetched again for each
    signature, by the fast path and by boto3 alike: a key rotated meanwhile is the one boto3 signs with."""
    counter = tmp_path / "issued"
    process = tmp_path / "issue.py"
    process.write_text(
        "import datetime, json, pathlib\n"
        f"counter = pathlib.Path({str(counter)!r})\n"
        "n = int(counter.read_text() if counter.exists() else 0) + 1\n"
        "counter.write_text(str(n))\n"
        "ends = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': f'AKROTATED{n:04d}', 'SecretAccessKey': 's',\n"
        "                  'SessionToken': 't', 'Expiration': ends.isoformat()}))\n"
    )
    config = tmp_path / "config"
    config.write_text(f"[profile rotating]\ncredential_process = {sys.executable} {process}\nregion = eu-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    section = {"type": "s3", "endpoint_url": "http://127.0.0.1:9", "profile": "rotating"}
    storage = S3Storage("s3", S3StorageOptions.model_validate(section))
    client = storage._boto()
    for _ in range(2):
        storage._ready().credentials.get_frozen_credentials()  # the fast path signs: the key is issued again
        url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "k"})
        issued = int(counter.read_text())
        assert f"AKROTATED{issued:04d}" in url, (issued, url)
    assert issued >= 2


@pytest.mark.parametrize(
    "bucket, fragment",
    [
        ("arn:aws:s3:eu-west-2:123456789012:accesspoint/lab", "an ARN"),
        ("lab-data--euw2-az1--x-s3", "S3 Express One Zone directory bucket"),
    ],
)
def test_access_points_and_directory_buckets_are_refused_with_what_to_use(bucket, fragment):
    section = {"type": "s3", "access_key_id": ACCESS, "secret_access_key": SECRET, "region": "eu-west-2"}
    storage = S3Storage("s3", S3StorageOptions.model_validate(section))
    with pytest.raises(PermanentError, match=fragment):
        list(storage.list(bucket, ""))
