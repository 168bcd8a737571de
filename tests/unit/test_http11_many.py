"""Many GETs from one thread (syncd.storage.s3.http11_many) against a scripted HTTP/1.1 server on loopback."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time

import pytest

from syncd.storage.s3.http11 import ProtocolError
from syncd.storage.s3.http11_many import Get, ManyGets
from tests.support.tls import self_signed

BODIES = {f"/o{i}": os.urandom(1 + i * 997) for i in range(40)}  # 1 byte … 38 KiB


class ScriptedServer:
    """Keep-alive HTTP/1.1 server: answers ``/oN`` with its body; ``behaviour`` overrides single paths."""

    def __init__(self, behaviour: dict[str, str] | None = None, tls: ssl.SSLContext | None = None):
        self.behaviour = behaviour or {}
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        if self.tls is not None:
            try:
                connection = self.tls.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError):
                connection.close()  # a client that refused the certificate
                return
        with connection:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = connection.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                with self.lock:
                    self.requests.append(path)
                body = BODIES.get(path, b"")
                how = self.behaviour.get(path, "ok")
                if how == "missing":
                    answer = b"<Error><Code>NoSuchKey</Code></Error>"
                    connection.sendall(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
                    )
                elif how == "chunked":
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                        % (len(body), body)
                    )
                elif how == "cut":
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[: len(body) // 2])
                    )
                    return
                elif how == "stall":
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
                    time.sleep(2)
                    return
                elif how == "close":
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    return
                else:  # head and body in separate writes, the body in two pieces
                    connection.sendall(
                        b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "%s"\r\n\r\n'
                        % (len(body), hashlib.md5(body).hexdigest().encode())
                    )
                    connection.sendall(body[: len(body) // 3])
                    connection.sendall(body[len(body) // 3 :])

    def close(self) -> None:
        self.listener.close()


def fetch_all(server: ScriptedServer, paths, tmp_path, *, connections=4, read_timeout=5.0, tls=None):
    many = ManyGets(
        "127.0.0.1", server.port, tls=tls, connect_timeout=2, read_timeout=read_timeout, connections=connections
    )
    gets = (
        Get(path, path, lambda: {"Host": "test"}, str(tmp_path / path.strip("/")), lambda headers: hashlib.md5())
        for path in paths
    )
    return {get.item: outcome for get, outcome in many.run(gets)}


def test_every_body_lands_in_its_file_over_a_few_reused_connections(tmp_path):
    server = ScriptedServer()
    outcomes = fetch_all(server, BODIES, tmp_path, connections=4)
    assert set(outcomes) == set(BODIES)
    for path, body in BODIES.items():
        fetched = outcomes[path]
        assert (tmp_path / path.strip("/")).read_bytes() == body
        assert fetched.size == len(body)
        assert fetched.digest.hexdigest() == hashlib.md5(body).hexdigest() == fetched.headers["etag"].strip('"')
    assert server.connections == 4, "40 requests over 4 keep-alive connections"
    server.close()


def test_an_answer_it_does_not_stream_fails_that_request_only(tmp_path):
    server = ScriptedServer({"/o3": "missing", "/o5": "chunked", "/o7": "cut"})
    outcomes = fetch_all(server, BODIES, tmp_path, connections=3)
    assert set(outcomes) == set(BODIES)
    for path in ("/o3", "/o5", "/o7"):
        assert isinstance(outcomes[path], ProtocolError), path
    for path, body in BODIES.items():
        if path not in ("/o3", "/o5", "/o7"):
            assert (tmp_path / path.strip("/")).read_bytes() == body
    assert server.connections > 3, "a failed request's connection is closed and replaced"
    server.close()


def test_connection_close_is_honoured(tmp_path):
    server = ScriptedServer({"/o1": "close", "/o2": "close"})
    outcomes = fetch_all(server, [f"/o{i}" for i in range(6)], tmp_path, connections=1)
    assert all(not isinstance(o, BaseException) for o in outcomes.values())
    assert server.connections == 3
    server.close()


def test_a_stalled_answer_times_out_and_the_rest_complete(tmp_path):
    server = ScriptedServer({"/o2": "stall"})
    started = time.monotonic()
    outcomes = fetch_all(server, [f"/o{i}" for i in range(8)], tmp_path, connections=2, read_timeout=0.4)
    assert isinstance(outcomes["/o2"], TimeoutError)
    assert time.monotonic() - started < 1.5
    assert all(not isinstance(outcomes[f"/o{i}"], BaseException) for i in range(8) if i != 2)
    server.close()


def test_no_server_raises_instead_of_yielding():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    many = ManyGets("127.0.0.1", port, tls=None, connect_timeout=1, read_timeout=1, connections=2)
    with pytest.raises(ConnectionRefusedError):
        list(many.run([Get("x", "/o1", dict, "/nonexistent/x")]))


def test_bodies_over_tls_arrive_whole_though_records_wait_inside_the_tls_layer(tmp_path):
    # Bodies up to 38 KiB span several TLS records: bytes decrypted but not yet read are invisible
    # to the selector, so the client must read on until the TLS layer is empty.
    server_tls, client_tls = self_signed(tmp_path)
    server = ScriptedServer(tls=server_tls)
    (tmp_path / "out").mkdir()
    outcomes = fetch_all(server, BODIES, tmp_path / "out", connections=3, tls=client_tls)
    for path, body in BODIES.items():
        assert not isinstance(outcomes[path], BaseException), outcomes[path]
        assert (tmp_path / "out" / path.strip("/")).read_bytes() == body
    assert server.connections == 3
    server.close()


def test_a_server_the_client_does_not_trust_is_refused(tmp_path):
    server_tls, _ = self_signed(tmp_path)
    server = ScriptedServer(tls=server_tls)
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch_all(server, ["/o1"], tmp_path, tls=ssl.create_default_context())
    server.close()
