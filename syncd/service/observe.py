"""Observability: Prometheus metrics and the loopback HTTP endpoint.

``/healthz`` says the process is alive and its main loop is ticking; ``/readyz``
that every backend and storage answered its last probe; ``/metrics`` is the
Prometheus text format; ``/jobs`` is the JSON that ``syncd status --json`` prints.
Each daemon has its own registry (no module-level state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from syncd.state.store import Store
from syncd.text import visible_json

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
    ):
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                try:
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
                    else:
                        self._send(404, b"not found: try /healthz /readyz /metrics /jobs\n", "text/plain")
                except Exception as exc:  # a scrape must never take the daemon down
                    self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain")

        self.metrics, self.alive, self.ready, self.jobs = metrics, alive, ready, jobs
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.address = self.server.server_address
        self._thread = threading.Thread(target=self.server.serve_forever, name="syncd-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
