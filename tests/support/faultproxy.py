"""A TCP proxy for HTTP traffic that counts requests and injects faults over a real socket.

It reads the client's request heads (method and path) to count what crosses it,
and can reset every n-th connection after it has carried some response bytes,
slow responses down, or answer every request itself with an error status (a
service that is up but failing: 503 SlowDown, 500 bursts). Used in front of a
loopback S3 server.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Faults:
    reset_every: int = 0  # reset every n-th new connection (0: never) …
    reset_after: int = 64 * 1024  # … once it has sent this many response bytes
    max_resets: int = 1_000_000  # stop injecting after this many
    delay_per_chunk: float = 0.0  # seconds to sleep per response chunk (throttling)
    answer: int = 0  # answer every request with this HTTP status instead of forwarding it (0: forward)
    retry_after: int = 1  # the Retry-After header sent with an answered 429/503
    close_after_answer: bool = False  # close at once after answering, never reading a request body (as AWS does)


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    faults: Faults = field(default_factory=Faults)
    requests: list[tuple[str, str]] = field(default_factory=list)
    resets: int = 0
    connections: int = 0
    listen: str = "127.0.0.1"  # or "::1", to reach a server over IPv6 loopback
    tls: ssl.SSLContext | None = None  # speak HTTPS to clients (a TLS front for a plain-HTTP server)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET6 if ":" in self.listen else socket.AF_INET)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.listen, 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        host = f"[{self.listen}]" if ":" in self.listen else self.listen
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept, daemon=True, name="faultproxy-accept")
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass

    def count(self, method: str | None = None, *, object_only: bool = False) -> int:
        """Requests seen; ``object_only`` leaves out bucket-level requests such as LIST."""
        with self._lock:
            seen = list(self.requests)
        return sum(
            1
            for m, path in seen
            if (method is None or m == method) and (not object_only or "/" in path.split("?", 1)[0].strip("/"))
        )

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- plumbing ---------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    client = self.tls.wrap_socket(client, server_side=True)
                except OSError:  # the client refused the certificate: that is its answer
                    _close(client)
                    continue
            with self._lock:
                self.connections += 1
                number = self.connections
                doomed = (
                    self.faults.reset_every
                    and number % self.faults.reset_every == 0
                    and self.resets < self.faults.max_resets
                )
            if self.faults.answer:
                threading.Thread(target=self._answer, args=(client,), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, bool(doomed)), daemon=True).start()

    def _requests_in(self, client: socket.socket):
        """Yield each raw chunk the client sends and, after it, the (method, path) of every request it completed.

        Request bodies are skipped by their Content-Length; every request seen is counted.
        """
        buffer = b""
        body_left = 0
        while chunk := client.recv(65536):
            yield chunk, None
            buffer += chunk
            while True:
                if body_left:
                    used = min(body_left, len(buffer))
                    body_left -= used
                    buffer = buffer[used:]
                    if body_left:
                        break
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                lines = head.split("\r\n")
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        body_left = int(value.strip() or 0)
                parts = lines[0].split(" ")
                if len(parts) >= 2:
                    with self._lock:
                        self.requests.append((parts[0], parts[1]))
                    yield None, (parts[0], parts[1])

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        """Client → server, noting each request's method and path."""
        try:
            for chunk, _ in self._requests_in(client):
                if chunk is not None:
                    server.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(server)

    def _answer(self, client: socket.socket) -> None:
        """Answer every request on this connection with ``faults.answer``, as S3 does (an XML error body)."""
        status = self.faults.answer
        code = {429: "SlowDown", 503: "SlowDown", 500: "InternalError", 403: "SignatureDoesNotMatch"}.get(
            status, "InternalError"
        )
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>"
        ).encode()
        head = (
            f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n"
            + (f"Retry-After: {self.faults.retry_after}\r\n" if status in (429, 503) else "")
            + "\r\n"
        ).encode()
        try:
            for _, request in self._requests_in(client):
                if request is not None:
                    if not self.faults.answer:
                        return  # healed: close, so the client's next connection is forwarded
                    client.sendall(head + (b"" if request[0] == "HEAD" else body))
                    if self.faults.close_after_answer:
                        _reset(client)
                        return
        except OSError:
            pass
        finally:
            _close(client)

    def _downstream(self, server: socket.socket, client: socket.socket, doomed: bool) -> None:
        sent = 0
        try:
            while chunk := server.recv(65536):
                if self.faults.delay_per_chunk:
                    time.sleep(self.faults.delay_per_chunk)
                if doomed and sent + len(chunk) > self.faults.reset_after:
                    client.sendall(chunk[: max(0, self.faults.reset_after - sent)])
                    with self._lock:
                        self.resets += 1
                    _reset(client)
                    _close(server)
                    return
                client.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            _close(client)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset by peer'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wake the other pump thread blocked in recv(): until it lets go, close() sends nothing.
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
