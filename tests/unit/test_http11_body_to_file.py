"""Response bodies written straight into a file at an offset: splice(2) on Linux, a copy elsewhere.

A one-shot HTTP server on a loopback socket sends the head and the start of the body in one
write, so the client's reader holds body bytes after parsing the head: they must land first.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
import time

import pytest

from syncd.storage.s3 import http11
from tests.support.tls import self_signed

BODY = os.urandom(3 * 1024 * 1024 + 12345)  # several pipe-fulls, not a multiple of any buffer


def serve_once(
    body: bytes, *, send: int | None = None, stall: float = 0.0, tls: ssl.SSLContext | None = None
) -> tuple[int, threading.Thread]:
    """Answer one GET with ``body`` (Content-Length says all of it); send only ``send`` bytes, then close."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def run() -> None:
        connection, _ = listener.accept()
        if tls is not None:
            try:
                connection = tls.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError):
                connection.close()  # a client that refused the certificate
                listener.close()
                return
        with connection, listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            payload = body if send is None else body[:send]
            try:
                connection.sendall(head + payload[:100_000])  # head and body start in one segment
                if stall:
                    time.sleep(stall)
                connection.sendall(payload[100_000:])
                if send is not None:
                    connection.shutdown(socket.SHUT_RDWR)
                else:
                    connection.recv(1)  # keep the connection open until the client is done
            except OSError:
                pass  # the client hung up (a test of a timeout)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def pool(port: int, read_timeout: float = 10.0, tls: ssl.SSLContext | None = None) -> http11.Pool:
    return http11.Pool("127.0.0.1", port, tls=tls, connect_timeout=5, read_timeout=read_timeout, maxsize=4)


@pytest.fixture(params=[True, False], ids=["splice", "copy"])
def splice(request, monkeypatch) -> bool:
    if request.param and not http11.SPLICE:
        pytest.skip("splice(2) exists only on Linux")
    monkeypatch.setattr(http11, "SPLICE", request.param)
    return request.param


def test_body_lands_byte_for_byte_at_the_offset_with_buffered_bytes_first(splice, tmp_path):
    port, server = serve_once(BODY)
    target = tmp_path / "file"
    offset = 4096
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * offset, 0)
        connections = pool(port)
        response = connections.request("GET", "/object", {"Host": "test"}, None)
        assert response.write_to(fd, offset) == len(BODY)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"x" * offset + BODY
    assert len(connections._idle) == 1, "a body read to its end gives the connection back for reuse"
    connections.close()
    server.join(5)


def test_body_cut_short_raises_and_the_connection_is_not_reused(splice, tmp_path):
    port, server = serve_once(BODY, send=2 * 1024 * 1024)
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    connections = pool(port)
    try:
        response = connections.request("GET", "/object", {"Host": "test"}, None)
        with pytest.raises(http11.ProtocolError, match="ended before the whole body"):
            response.write_to(fd, 0)
        response.release_conn()
    finally:
        os.close(fd)
    assert connections._idle == []
    server.join(5)


def test_stalled_body_times_out(splice, tmp_path):
    port, server = serve_once(BODY, stall=1.5)
    fd = os.open(tmp_path / "file", os.O_RDWR | os.O_CREAT, 0o600)
    connections = pool(port, read_timeout=0.3)
    try:
        response = connections.request("GET", "/object", {"Host": "test"}, None)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            response.write_to(fd, 0)
        response.release_conn()
        assert time.monotonic() - started < 1.2
    finally:
        os.close(fd)
    assert connections._idle == []
    server.join(5)


def written_to_file(connections, fd: int, target) -> bytes:
    """GET /object, write its body into ``fd`` (closed afterwards) and return what the file holds."""
    try:
        response = connections.request("GET", "/object", {"Host": "test"}, None)
        assert response.write_to(fd, 0) == len(BODY)
    finally:
        os.close(fd)
    return target.read_bytes()


def test_bodies_go_into_the_file_in_small_writes(splice, monkeypatch, tmp_path):
    # Large writes get large page-cache folios, which on a VM whose balloon returned the memory
    # cost several times the system time (BENCHMARKS.md, item 18): no write may exceed the unit.
    target = tmp_path / "file"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    sizes: list[int] = []
    real_pwrite, real_splice = os.pwrite, getattr(os, "splice", None)

    def pwrite(descriptor, data, offset):
        if descriptor == fd:
            sizes.append(len(data))
        return real_pwrite(descriptor, data, offset)

    def splice(source, destination, count, *args, **kwargs):
        if destination == fd:
            sizes.append(count)
        return real_splice(source, destination, count, *args, **kwargs)

    monkeypatch.setattr(os, "pwrite", pwrite)
    if real_splice is not None:
        monkeypatch.setattr(os, "splice", splice)
    port, server = serve_once(BODY)
    assert written_to_file(pool(port), fd, target) == BODY
    server.join(5)
    assert sizes and max(sizes) <= http11.FILE_WRITE_UNIT, max(sizes, default=0)


def test_a_filesystem_without_splice_gets_the_bytes_through_a_copy(monkeypatch, tmp_path):
    if not http11.SPLICE:
        pytest.skip("splice(2) exists only on Linux")
    real_splice = os.splice
    target = tmp_path / "file"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)

    def splice(source, destination, count, *args, **kwargs):
        if destination == fd:  # as a filesystem without splice support answers
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_splice(source, destination, count, *args, **kwargs)

    monkeypatch.setattr(os, "splice", splice)
    port, server = serve_once(BODY)
    assert written_to_file(pool(port), fd, target) == BODY
    server.join(5)


def test_a_body_over_tls_is_copied_whole_into_the_file(tmp_path):
    # splice(2) cannot read through TLS: the body goes through the copy buffer, several TLS records long.
    server_tls, client_tls = self_signed(tmp_path)
    port, server = serve_once(BODY, tls=server_tls)
    target = tmp_path / "file"
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    assert written_to_file(pool(port, tls=client_tls), fd, target) == BODY
    server.join(5)


def test_a_server_with_a_certificate_nobody_vouches_for_is_refused(tmp_path):
    server_tls, _ = self_signed(tmp_path)
    port, server = serve_once(BODY, tls=server_tls)
    with pytest.raises(ssl.SSLCertVerificationError):
        pool(port, tls=http11.tls_context(True, None)).request("GET", "/object", {"Host": "test"}, None)
    server.join(5)
