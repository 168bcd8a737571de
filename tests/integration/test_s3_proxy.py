"""The S3 storage through a real forward proxy (tinyproxy): both halves (the fast path and boto3's multipart
uploads) follow HTTP_PROXY, HTTPS_PROXY and NO_PROXY as boto3 does, HTTPS through a CONNECT tunnel; a proxy that
is down or refuses is named as the proxy, never as a wrong endpoint_url."""

from __future__ import annotations

import os

import pytest

from syncd.errors import AuthError, TransientError
from syncd.storage.s3.wire import proxy_for
from tests.integration.conftest import make_storage
from tests.support.faultproxy import FaultProxy
from tests.support.s3server import free_port
from tests.support.tls import self_signed

pytestmark = pytest.mark.s3
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy_from_outside(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def round_trip(storage, bucket: str, tmp_path) -> None:
    """A small object (fast path), a multipart one (boto3), a listing, and both fetched back (the small one in a
    batch of many connections, the large one in ranged parts)."""
    small, large = b"through the proxy\n", os.urandom(11 << 20)
    storage.put_file(bucket, "px/small.txt", write(tmp_path / "small.txt", small))
    assert storage.put_file(bucket, "px/large.bin", write(tmp_path / "large.bin", large)).etag.endswith("-3")
    listed = {o.key: o for o in storage.list(bucket, "px/")}
    assert sorted(listed) == ["px/large.bin", "px/small.txt"]
    ((_, _, outcome),) = storage.fetch_many(bucket, [(listed["px/small.txt"], tmp_path / "small.back")])
    assert not isinstance(outcome, BaseException), outcome
    assert (tmp_path / "small.back").read_bytes() == small
    storage.fetch(bucket, "px/large.bin", tmp_path / "large.back", listed["px/large.bin"])
    assert (tmp_path / "large.back").read_bytes() == large


def test_plain_http_goes_through_http_proxy_both_halves(seaweedfs, bucket, forward_proxy, monkeypatch, tmp_path):
    monkeypatch.setenv("HTTP_PROXY", forward_proxy.url)
    before = forward_proxy.lines(f"GET {seaweedfs.endpoint}/"), forward_proxy.lines(f"PUT {seaweedfs.endpoint}/")
    storage = make_storage(seaweedfs, part_size="5MiB")
    round_trip(storage, bucket, tmp_path)
    storage.close()
    gets = forward_proxy.lines(f"GET {seaweedfs.endpoint}/") - before[0]
    puts = forward_proxy.lines(f"PUT {seaweedfs.endpoint}/") - before[1]
    assert gets >= 3 and puts >= 4, (gets, puts)  # list + two fetches; one small PUT + three parts


def test_https_goes_through_the_proxys_connect_tunnel(seaweedfs, bucket, forward_proxy, monkeypatch, tmp_path):
    server_context, _ = self_signed(tmp_path)
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    front = FaultProxy((host, int(port)), tls=server_context).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", forward_proxy.url)
        before = forward_proxy.lines(f"CONNECT 127.0.0.1:{front.port}")
        storage = make_storage(
            seaweedfs, endpoint=front.endpoint, part_size="5MiB", ca_bundle=str(tmp_path / "cert.pem")
        )
        round_trip(storage, bucket, tmp_path)
        storage.close()
        assert forward_proxy.lines(f"CONNECT 127.0.0.1:{front.port}") > before
    finally:
        front.stop()


def test_no_proxy_sends_a_host_direct_even_with_a_dead_proxy_set(seaweedfs, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    storage = make_storage(seaweedfs, part_size="5MiB")
    round_trip(storage, bucket, tmp_path)
    storage.close()


def test_a_proxy_that_is_down_is_named_as_the_proxy(seaweedfs, bucket, monkeypatch, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HTTP_PROXY", dead)
    storage = make_storage(seaweedfs)
    with pytest.raises(TransientError) as failed:
        list(storage.list(bucket, ""))
    message = str(failed.value)
    assert "proxy 127.0.0.1" in message and "HTTP_PROXY" in message and "endpoint_url" not in message, message
    storage.close()


def test_a_proxy_that_wants_credentials_is_an_auth_error_naming_the_proxy(seaweedfs, bucket, monkeypatch, tmp_path):
    refusing = FaultProxy(("127.0.0.1", 9))
    refusing.faults.answer = 407
    refusing.start()
    server_context, _ = self_signed(tmp_path)
    host, port = seaweedfs.endpoint.rsplit("//", 1)[1].split(":")
    front = FaultProxy((host, int(port)), tls=server_context).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", refusing.endpoint)
        storage = make_storage(seaweedfs, endpoint=front.endpoint, ca_bundle=str(tmp_path / "cert.pem"))
        with pytest.raises(AuthError, match="the proxy wants credentials"):
            list(storage.list(bucket, ""))
        storage.close()
    finally:
        front.stop()
        refusing.stop()


def test_proxy_choice_follows_the_environment_as_requests_reads_it(monkeypatch):
    assert proxy_for("https", "s3.example:443") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.lab:3128")
    chosen = proxy_for("https", "s3.example:443")
    assert chosen is not None and (chosen.host, chosen.port) == ("proxy.lab", 3128)
    assert chosen.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert proxy_for("http", "s3.example:80") is None, "HTTPS_PROXY is for https only"
    monkeypatch.setenv("NO_PROXY", ".example,10.1.2.3")
    assert proxy_for("https", "s3.example:443") is None and proxy_for("https", "10.1.2.3:9000") is None
    assert proxy_for("https", "s3.other:443") is not None
