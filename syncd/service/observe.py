"""Observability: Prometheus metrics and the loopback HTTP endpoint.

``/healthz`` says the process is alive and its main loop is ticking; ``/readyz``
that every backend and storage answered its last probe; ``/metrics`` is the
Prometheus text format; ``/jobs`` is the JSON that ``syncd status --json`` prints;
``/`` and the paths below it are the status page (:mod:`syncd.service.web`). With an
``http.auth_file`` every path but the two probes asks for its credentials.
Each daemon has its own registry (no module-level state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from syncd.service.web.app import Response, StatusPage, parse_request
from syncd.state.store import Store
from syncd.text import visible_json

MAX_FORM = 16 * 1024
HTTP_WORKERS = 8
REQUEST_TIMEOUT = 10.0
OPEN_PATHS = ("/healthz", "/readyz")  # probes answer without credentials: they carry no job data

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StoreCollector:
    """Gauges read from the state store at scrape time: jobs by state, paused backends."""

    def __init__(self, store: Store, watcher_restarts: Callable[[], dict[str, int]]):
        self.store = store
        self.watcher_restarts = watcher_restarts

    def collect(self):
        jobs = GaugeMetricFamily("syncd_jobs", "Jobs by state", labels=["state"])
        for state, count in self.store.count_by_state().items():
            jobs.add_metric([state], count)
        yield jobs
        queued = GaugeMetricFamily("syncd_queue_depth", "Jobs staged and waiting for a slot", labels=["backend"])
        for backend, count in self.store.staged_by_backend().items():
            queued.add_metric([backend], count)
        yield queued
        paused = GaugeMetricFamily(
            "syncd_backend_paused", "1 while a backend is paused (refused credentials)", labels=["backend"]
        )
        for backend in self.store.backend_pauses():
            paused.add_metric([backend], 1)
        yield paused
        restarts = GaugeMetricFamily("syncd_watcher_restarts", "Observer restarts per inbox", labels=["inbox"])
        for inbox, count in self.watcher_restarts().items():
            restarts.add_metric([inbox], count)
        yield restarts


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.transitions = Counter("syncd_transitions", "Job state transitions", ["to"], registry=self.registry)
        self.submit_seconds = Histogram(
            "syncd_submit_seconds", "Time to submit a job", ["backend"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.poll_seconds = Histogram(
            "syncd_poll_seconds",
            "Time of one batched status poll",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_delivered = Counter(
            "syncd_bytes_delivered", "Bytes mirrored into outboxes", ["inbox"], registry=self.registry
        )
        self.retries = Counter(
            "syncd_retries", "Transient failures that were retried", ["backend", "step"], registry=self.registry
        )
        self.circuit_open = Gauge(
            "syncd_circuit_open",
            "1 while syncd has stopped calling a service that does not answer (one probe per interval)",
            ["service"],
            registry=self.registry,
        )
        self.errors = Counter("syncd_errors", "Errors by kind", ["backend", "kind"], registry=self.registry)

    def watch_store(self, store: Store, watcher_restarts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_StoreCollector(store, watcher_restarts))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _PooledHTTPServer(HTTPServer):
    """Requests are handled by a fixed pool of threads, not a new thread each. The state store keeps one
    database connection per thread: with a thread per request, a status page polled a few times a second
    opened (and kept) a connection per poll until the daemon ran out of file descriptors."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int):
        super().__init__(address, handler)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="syncd-http")

    def process_request(self, request, client_address) -> None:
        self._pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        pass  # a client that went away mid-answer is not the daemon's problem

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class HttpEndpoint:
    """A small threaded HTTP server; handlers get their data from callables of the daemon."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Metrics,
        alive: Callable[[], bool],
        ready: Callable[[], dict[str, str]],
        jobs: Callable[[], list[dict]],
        page: StatusPage | None = None,
    ):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = REQUEST_TIMEOUT  # a client that sends nothing does not hold a worker for long

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def _reply(self, response: Response) -> None:
                self._send(response.code, response.body, response.content_type, response.headers)

            def _allowed(self, path: str) -> bool:
                if (
                    path in OPEN_PATHS
                    or endpoint.page is None
                    or endpoint.page.authorised(self.headers["Authorization"])
                ):
                    return True
                self._reply(endpoint.page.unauthorised())
                return False

            def _page(self, method: str, body: bytes = b"") -> bool:
                if endpoint.page is None:
                    return False
                headers = {k: self.headers[k] for k in ("authorization", "origin", "host")}
                response = endpoint.page.handle(parse_request(method, self.path, headers, body))
                if response is None:
                    return False
                self._reply(response)
                return True

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                try:
                    if not self._allowed(path):
                        return
                    if path == "/healthz":
                        ok = endpoint.alive()
                        self._send(200 if ok else 503, b"ok\n" if ok else b"main loop stalled\n", "text/plain")
                    elif path == "/readyz":
                        problems = endpoint.ready()
                        body = visible_json({"ready": not problems, "problems": problems}).encode()
                        self._send(200 if not problems else 503, body, "application/json")
                    elif path == "/metrics":
                        self._send(200, endpoint.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
                    elif path == "/jobs":
                        self._send(200, visible_json(endpoint.jobs()).encode(), "application/json")
                    elif not self._page("GET"):
                        self._send(404, b"not found: try / /healthz /readyz /metrics /jobs\n", "text/plain")
                except Exception as exc:  # a scrape must never take the daemon down
                    self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

            def do_POST(self):
                try:
                    if not self._allowed(self.path.split("?", 1)[0]):
                        return
                    length = int(self.headers["Content-Length"] or 0)
                    if length > MAX_FORM:
                        self._send(413, b"form too large\n", "text/plain")
                        return
                    if not self._page("POST", self.rfile.read(length)):
                        self._send(404, b"not found\n", "text/plain")
                except Exception as exc:  # a bad request must never take the daemon down
                    self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

        self.metrics, self.alive, self.ready, self.jobs, self.page = metrics, alive, ready, jobs, page
        self.server = _PooledHTTPServer((host, port), Handler, HTTP_WORKERS)
        self.address = self.server.server_address
        self._thread = threading.Thread(target=self.server.serve_forever, name="syncd-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
