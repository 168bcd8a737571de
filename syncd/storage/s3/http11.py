"""A small HTTP/1.1 client with keep-alive connection pools, for S3 object traffic.

Why not urllib3/http.client: per request they spend ~0.3 ms of CPU on URL parsing,
pool bookkeeping and e-mail-style header parsing, which doubles the cost of
fetching a small object. This client does only what S3 needs: one request at a
time per connection, Content-Length or chunked bodies, TLS, timeouts. It never
retries a request the server may have read: a pooled connection the server has closed is noticed
before reuse, and one it closes just as it is reused (before a byte of an answer) has the request sent
again once on a new connection, as every HTTP client does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

MAX_LINE = 65536
MAX_HEADERS = 200
READ_BUFFER = 256 * 1024  # per connection; also the copy size of file writes without splice
# A small buffer per writer stays in the CPU cache between the socket read and the file write;
# 1-4 MiB buffers per part worker measurably raised system time on 1 GiB downloads.
COPY_BUFFER = 256 * 1024
PIPE_SIZE = 1024 * 1024
# Bodies go into files at most this much per write. The kernel sizes a page-cache folio after the
# write that fills it; on virtual machines whose balloon hands freed memory back to the host (free
# page reporting, as on Firecracker), large folios come from memory the host must fault in again:
# filling 1 GiB in 1 MiB writes took 0.18 s of system time with recently used memory and 1.6–2.5 s
# without, in 16 KiB writes 0.4–0.5 s either way (bench/page_cache.py, BENCHMARKS.md).
FILE_WRITE_UNIT = 16 * 1024
SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
#: bodies at least this big are sent after the server's ``100 Continue`` (or after CONTINUE_WAIT seconds of silence)
EXPECT_CONTINUE_FROM = 1024 * 1024
CONTINUE_WAIT = 1.0
#: requests sent again when a reused connection ends before an answer (the server may have done them)
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class ProtocolError(ConnectionError):
    """The server's answer was not valid HTTP/1.1, or the connection ended mid-answer."""


class NoAnswer(ProtocolError):
    """The connection ended before a byte of an answer came."""


class ProxyError(ConnectionError):
    """The forward proxy could not be reached, or refused to open a tunnel to the server."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Proxy:
    """A forward proxy (``HTTP_PROXY``/``HTTPS_PROXY``): TLS traffic goes through a CONNECT tunnel, plain HTTP
    requests are sent to it with absolute URLs."""

    host: str
    port: int
    authorization: str | None = None  # a Proxy-Authorization value, from user:password in the proxy's URL

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


def open_socket(
    host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float, proxy: Proxy | None
) -> socket.socket:
    """A connected socket to ``host:port`` (through ``proxy`` if given), TLS wrapped when ``tls``."""
    try:
        sock = socket.create_connection((proxy.host, proxy.port) if proxy else (host, port), timeout=connect_timeout)
    except OSError as exc:
        if proxy is None:
            raise
        raise ProxyError(f"cannot connect to the proxy {proxy.name} ({exc})") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            if proxy is not None:
                _tunnel(sock, host, port, proxy)
            sock = tls.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    return sock


def _tunnel(sock: socket.socket, host: str, port: int, proxy: Proxy) -> None:
    authority = _authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    answer = b""
    while b"\r\n\r\n" not in answer:  # the proxy sends nothing after its head until the TLS handshake starts
        chunk = sock.recv(4096)
        if not chunk or len(answer) > MAX_LINE:
            raise ProxyError(f"the proxy {proxy.name} closed the tunnel to {authority} before answering")
        answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    if status != 200:
        raise ProxyError(f"the proxy {proxy.name} refused a tunnel to {authority}: {status_line[:120]!r}", status)


class Headers(dict):
    """Response headers by lower-case name (repeated headers joined with ', ')."""

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)

    def add(self, line: str) -> None:
        """Add one ``Name: value`` header line."""
        name, _, value = line.partition(":")
        key, value = name.strip().lower(), value.strip()
        self[key] = f"{self[key]}, {value}" if key in self else value


class Response:
    def __init__(self, connection: Connection, pool: Pool, status: int, headers: Headers, method: str):
        self.status = status
        self.headers = headers
        self._connection: Connection | None = connection
        self._pool = pool
        self.body = b""  # filled by callers that read the whole body at once
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._chunk_left = 0
        self._done = False
        length = headers.get("content-length")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._left: int | None = 0
        elif self._chunked:
            self._left = None
        elif length is not None:
            self._left = int(length)
        else:
            self._left = None  # until the server closes the connection
            connection.reusable = False
        if self._left == 0:
            self._finish()

    @property
    def data(self) -> bytes:
        return self.read()

    def read(self, amount: int | None = None) -> bytes:
        if amount is None:
            parts = []
            while chunk := self.read(1024 * 1024):
                parts.append(chunk)
            return b"".join(parts)
        buffer = bytearray(amount)
        count = self.readinto(memoryview(buffer))
        return bytes(buffer[:count])

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` with the next body bytes; 0 at the end of the body."""
        if self._done or self._connection is None:
            return 0
        reader = self._connection.reader
        if self._chunked:
            if self._chunk_left == 0:
                self._chunk_left = self._next_chunk_size(reader)
                if self._chunk_left == 0:
                    self._finish()
                    return 0
            view = buffer[: self._chunk_left]
        elif self._left is not None:
            view = buffer[: self._left]
        else:
            view = buffer
        count = reader.readinto(view)
        if not count:
            if self._left is None and not self._chunked:
                self._finish()
                return 0
            self._connection.close()
            raise ProtocolError("the connection ended before the whole body arrived")
        if self._chunked:
            self._chunk_left -= count
            if self._chunk_left == 0:
                reader.readline(MAX_LINE)  # the CRLF after each chunk
        elif self._left is not None:
            self._left -= count
            if self._left == 0:
                self._finish()
        return count

    def write_to(self, fd: int, offset: int, lock: threading.Lock | None = None) -> int:
        """Write the rest of the body into file ``fd`` from ``offset`` on; return the number of bytes.

        On Linux a plain-TCP body of known length moves socket → pipe → file with ``splice(2)``
        (no copy through Python); TLS, chunked bodies and other systems copy through a buffer.
        Threads writing parts of one file share ``lock``: the kernel serialises writes to a file
        anyway, and its waiters spin on the CPU while ours sleep.
        """
        guard = lock or contextlib.nullcontext()
        connection = self._connection
        if (
            SPLICE
            and connection is not None
            and not self._chunked
            and self._left is not None
            and not isinstance(connection.sock, ssl.SSLSocket)
        ):
            return self._splice_to(connection, fd, offset, guard)
        buffer = memoryview(bytearray(COPY_BUFFER))
        start = offset
        while count := self.readinto(buffer):
            with guard:
                pwrite_all(fd, buffer[:count], offset)
            offset += count
        return offset - start

    def _splice_to(self, connection: Connection, fd: int, offset: int, lock) -> int:
        start = offset
        try:
            # Body bytes that arrived with the headers sit in the reader's buffer: write them first.
            # read1(n) returns min(n, buffered) bytes, or with nothing buffered does one read; as the
            # buffer never holds more than READ_BUFFER bytes, it is empty afterwards.
            if self._left:
                head = connection.reader.read1(min(self._left, READ_BUFFER))
                if not head:
                    raise ProtocolError("the connection ended before the whole body arrived")
                with lock:
                    pwrite_all(fd, memoryview(head), offset)
                offset += len(head)
                self._left -= len(head)
            if self._left:
                offset += _splice_socket(connection.sock, fd, offset, self._left, lock)
                self._left = 0
        except BaseException:
            connection.close()
            self._connection = None
            self._done = True
            raise
        self._finish()
        return offset - start

    @staticmethod
    def _next_chunk_size(reader) -> int:
        line = reader.readline(MAX_LINE)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
        return size

    def _finish(self) -> None:
        self._done = True
        if self._connection is not None:
            self._pool.put(self._connection)
            self._connection = None

    def release_conn(self) -> None:
        """Give the connection back when the body was read to the end, else close it."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data[:FILE_WRITE_UNIT], offset)
        data = data[written:]
        offset += written


def _copy_from_pipe(pipe: int, fd: int, count: int, offset: int) -> int:
    data = os.read(pipe, count)
    pwrite_all(fd, memoryview(data), offset)
    return len(data)


def _splice_socket(sock: socket.socket, fd: int, offset: int, count: int, lock) -> int:
    """Move exactly ``count`` bytes from ``sock`` into ``fd`` at ``offset`` through a pipe; return ``count``.

    The socket is non-blocking underneath (it has a timeout), so an empty receive queue is waited
    for here, with the socket's own timeout.
    """
    timeout = sock.gettimeout()
    source = sock.fileno()
    pipe_out, pipe_in = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(pipe_in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a smaller pipe (over the user's pipe quota) only means more calls
        left = count
        while left:
            try:
                moved = os.splice(source, pipe_in, min(left, PIPE_SIZE), flags=os.SPLICE_F_MOVE)
            except BlockingIOError:
                readable, _, _ = select.select([source], [], [], timeout)
                if not readable:
                    raise TimeoutError(f"no data for {timeout:g}s in the middle of a response body") from None
                continue
            if moved == 0:
                raise ProtocolError("the connection ended before the whole body arrived")
            left -= moved
            with lock:
                while moved:
                    try:
                        written = os.splice(
                            pipe_out, fd, min(moved, FILE_WRITE_UNIT), offset_dst=offset, flags=os.SPLICE_F_MOVE
                        )
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        written = _copy_from_pipe(pipe_out, fd, moved, offset)  # a filesystem without splice
                    moved -= written
                    offset += written
        return count
    finally:
        os.close(pipe_out)
        os.close(pipe_in)


class Connection:
    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        proxy: Proxy | None = None,
    ):
        sock = open_socket(host, port, tls, connect_timeout, proxy)
        sock.settimeout(read_timeout)
        self.sock = sock
        # A binary makefile with a buffer size is a BufferedReader; typeshed types any size but -1, 0, 1 as IOBase.
        self.reader = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BUFFER))
        self.reusable = True

    def dropped(self) -> bool:
        """True when the server closed (or wrote to) an idle connection: it must not be reused."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        self.reusable = False
        try:
            self.reader.close()
            self.sock.close()
        except OSError:
            pass


class Pool:
    """Keep-alive connections to one host. Thread-safe."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        maxsize: int,
        proxy: Proxy | None = None,
    ):
        self.host, self.port, self.tls, self.proxy = host, port, tls, proxy
        # through a proxy, plain HTTP requests name the whole URL (TLS ones go through a tunnel as they are)
        self.target_prefix = f"http://{_authority(host, port)}" if proxy is not None and tls is None else ""
        self.connect_timeout, self.read_timeout, self.maxsize = connect_timeout, read_timeout, maxsize
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def _get(self) -> tuple[Connection, bool]:
        """A connection, and whether it served an earlier request."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new(), False
            if not connection.dropped():
                return connection, True
            connection.close()

    def _new(self) -> Connection:
        return Connection(self.host, self.port, self.tls, self.connect_timeout, self.read_timeout, self.proxy)

    def put(self, connection: Connection) -> None:
        if not connection.reusable:
            connection.close()
            return
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(connection)
                return
        connection.close()

    def request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> Response:
        connection, reused = self._get()
        try:
            return self._send(connection, method, target, headers, body)
        except (NoAnswer, ConnectionResetError, BrokenPipeError):
            if not reused or method not in IDEMPOTENT:
                raise
        # The server (or a proxy) closed the idle connection as it was taken: the close was on its way as
        # the request went out. Once more, on a new connection: a request that may be done twice.
        return self._send(self._new(), method, target, headers, body)

    def _send(
        self, connection: Connection, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> Response:
        try:
            head = [f"{method} {self.target_prefix}{target} HTTP/1.1"]
            head += [f"{name}: {value}" for name, value in headers.items()]
            if self.target_prefix and self.proxy is not None and self.proxy.authorization:
                head.append(f"Proxy-Authorization: {self.proxy.authorization}")
            if body is not None and not any(k.lower() == "content-length" for k in headers):
                head.append(f"Content-Length: {len(body)}")
            # A server that refuses a large upload (credentials, a policy) answers before the body and may close at
            # once: asking first lets its answer be read, instead of a reset while the body was still going out.
            expect = body is not None and len(body) >= EXPECT_CONTINUE_FROM
            if expect:
                head.append("Expect: 100-continue")
            payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
            if body and not expect:
                payload += body
            connection.sock.sendall(payload)
            if expect and body is not None:
                answered, _, _ = select.select([connection.sock], [], [], CONTINUE_WAIT)
                if answered:
                    response = self._read_head(connection, method, interim=True)
                    if response.status != 100:
                        connection.reusable = False  # the body was never sent: nothing else may follow here
                        return response
                connection.sock.sendall(body)  # a server that ignores Expect gets the body after the wait
            return self._read_head(connection, method)
        except BaseException:
            connection.close()
            raise

    def _read_head(self, connection: Connection, method: str, interim: bool = False) -> Response:
        """The next answer's head; an interim ``100 Continue`` is returned only when ``interim``."""
        reader = connection.reader
        while True:
            line = reader.readline(MAX_LINE)
            if not line:
                raise NoAnswer(f"{self.host}:{self.port} closed the connection without an answer")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ProtocolError(f"{self.host}:{self.port} answered with {line[:60]!r}, not HTTP/1.1")
            status = int(parts[1])
            headers = Headers()
            for _ in range(MAX_HEADERS):
                line = reader.readline(MAX_LINE)
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise ProtocolError("the connection ended inside the response headers")
                headers.add(line.decode("latin-1"))
            else:
                raise ProtocolError("too many response headers")
            if status == 100:
                if interim:
                    return Response(connection, self, status, headers, method)
                continue  # an interim answer; the real one follows
            if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
                connection.reusable = False
            return Response(connection, self, status, headers, method)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(verify: bool, ca_bundle: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_bundle)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
