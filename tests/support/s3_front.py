"""A front for a real S3 server that passes each request on byte for byte (its Host and signature unchanged) and can
act as AWS does for a bucket in another region (``home``: a request signed for any other region gets
``301 PermanentRedirect`` with ``x-amz-bucket-region``), damage the bodies of answers (``alter``), or answer
``501 NotImplemented`` as a server without some feature does (``refuse``)."""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_SCOPE_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request")


class S3Front:
    def __init__(
        self,
        upstream: tuple[str, int],
        home: str | None = None,
        alter: Callable[[str, str, bytes], bytes] | None = None,  # (method, path, body) → the body sent on
        refuse: Callable[[str, str], bool] | None = None,  # (method, path) → answer 501 NotImplemented
    ):
        self.home = home
        self.alter = alter
        self.refuse = refuse
        self.refused: list[str] = []  # "METHOD path" of each request it refused
        self.redirected: list[str] = []  # the region of each request it redirected
        self.passed: list[str] = []
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                found = _SCOPE_REGION.search(self.headers.get("Authorization", ""))
                region = found.group(1) if found else ""
                if router.home is not None and region != router.home:
                    router.redirected.append(region)
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code><Message>The "
                        f"bucket you are attempting to access must be addressed using the specified endpoint."
                        f"</Message><Region>{router.home}</Region></Error>"
                    ).encode()
                    self.send_response(301)
                    self.send_header("x-amz-bucket-region", router.home)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if router.refuse is not None and router.refuse(self.command, self.path):
                    router.refused.append(f"{self.command} {self.path}")
                    payload = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code></Error>"
                    self.send_response(501)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                router.passed.append(region)
                connection = http.client.HTTPConnection(*upstream, timeout=30)
                connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() != "expect":
                        connection.putheader(name, value)
                connection.endheaders(body)
                answer = connection.getresponse()
                data = answer.read()
                if router.alter is not None and self.command != "HEAD":
                    data = router.alter(self.command, self.path, data)
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                # a HEAD answer has no body but tells the object's length
                self.send_header(
                    "Content-Length",
                    answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3Front:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
