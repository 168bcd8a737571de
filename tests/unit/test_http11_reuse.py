"""A pooled connection that the server (or a proxy) closes just as it is reused: an idempotent request is
sent again once on a new connection; any other request, and a failure of a new connection, are the caller's."""

from __future__ import annotations

import socket
import threading

import pytest

from syncd.storage.s3 import http11


class Server:
    """Answers the first request of its first connection and keeps it open until the next request arrives,
    then closes it unanswered; every later connection is answered (and its request recorded)."""

    def __init__(self, *, answer_first: bool = True, connections: int = 2):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request line)
        self.answer_first = answer_first
        self.connections = connections
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_request(connection: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return b""
            data += chunk
        return data.split(b"\r\n", 1)[0]

    def _run(self) -> None:
        with self.listener:
            for number in range(self.connections):
                try:
                    connection, _ = self.listener.accept()
                except OSError:
                    return
                with connection:
                    line = self._read_request(connection)
                    self.requests.append((number, line))
                    if number == 0 and not self.answer_first:
                        continue  # a new connection closed without an answer
                    connection.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(line)}\r\n\r\n".encode() + line)
                    if number == 0:
                        line = self._read_request(connection)  # the reuse arrives ...
                        self.requests.append((number, line))  # ... and is closed on, unanswered

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


def pool(port: int) -> http11.Pool:
    return http11.Pool("127.0.0.1", port, tls=None, connect_timeout=5, read_timeout=5, maxsize=4)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_on_a_connection_closed_as_it_was_reused_is_sent_again_on_a_new_one(method):
    server, client = Server(), None
    try:
        client = pool(server.port)
        assert client.request("GET", "/first", {}, None).data == b"GET /first HTTP/1.1"
        again = client.request(method, "/second", {}, b"body" if method == "PUT" else None)
        assert again.status == 200 and again.data == f"{method} /second HTTP/1.1".encode()
        second = f"{method} /second HTTP/1.1".encode()
        assert server.requests == [(0, b"GET /first HTTP/1.1"), (0, second), (1, second)]
    finally:
        if client is not None:
            client.close()
        server.close()


def test_a_request_that_may_not_be_done_twice_is_not_sent_again():
    server = Server(connections=1)
    client = pool(server.port)
    try:
        assert client.request("GET", "/first", {}, None).data == b"GET /first HTTP/1.1"
        with pytest.raises(http11.ProtocolError, match="without an answer"):
            client.request("POST", "/uploads", {}, b"")
        assert [number for number, _ in server.requests] == [0, 0], "sent once"
    finally:
        client.close()
        server.close()


def test_a_new_connection_closed_without_an_answer_is_the_callers_failure():
    server = Server(answer_first=False, connections=1)
    client = pool(server.port)
    try:
        with pytest.raises(http11.ProtocolError, match="without an answer"):
            client.request("GET", "/only", {}, None)
        assert server.requests == [(0, b"GET /only HTTP/1.1")], "not sent again"
    finally:
        client.close()
        server.close()
