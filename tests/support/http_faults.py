"""An HTTP reverse proxy on loopback that injects faults into the next requests.

Queue a fault with :meth:`FaultProxy.inject`; each queued fault applies to one
request, then traffic flows through to the upstream server unchanged.
Faults: ``("status", code)`` answers that code (with a Retry-After for 429/503);
``"reset"`` forwards the request, then sends half of the upstream answer and
resets the connection; ``"hang"`` never answers; ``"garbage"`` answers 200 with
a body that is not JSON; ``"truncated"`` cuts a JSON body short.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    """``server_ssl`` makes the proxy speak HTTPS to its clients; ``upstream_ssl`` makes it speak HTTPS upstream
    (e.g. with a client certificate the upstream requires)."""

    def __init__(
        self, upstream: str, server_ssl: ssl.SSLContext | None = None, upstream_ssl: ssl.SSLContext | None = None
    ):
        target = urlsplit(upstream)
        self.upstream_host, self.upstream_port = target.hostname, target.port
        self.faults: list = []
        self.requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "hang":
                    time.sleep(30)
                    return
                if isinstance(fault, tuple) and fault[0] == "status":
                    payload = b'{"message": "injected fault"}'
                    self.send_response(fault[1])
                    if fault[1] in (429, 503):
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn: http.client.HTTPConnection = (
                    http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                    if upstream_ssl is None
                    else http.client.HTTPSConnection(
                        proxy.upstream_host, proxy.upstream_port, timeout=60, context=upstream_ssl
                    )
                )
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                upstream = conn.getresponse()
                data = upstream.read()
                conn.close()
                if fault == "garbage":
                    data = b"<html>proxy error</html>"
                elif fault == "truncated":
                    data = data[: max(1, len(data) // 2)]
                self.send_response(upstream.status)
                for key, value in upstream.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data) if fault != "reset" else len(data) * 2))
                self.end_headers()
                if fault == "reset":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if server_ssl is not None:
            self.server.socket = server_ssl.wrap_socket(self.server.socket, server_side=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def inject(self, fault, times: int = 1) -> None:
        with self.lock:
            self.faults.extend([fault] * times)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
