"""Notifications on terminal states to a webhook URL fixed by the admin.

The state store records each notification in the same transaction as the
terminal transition (a trigger), so a crash never loses one; this module sends
what is due, with the engine's retry policy, and marks it sent. Delivery is at
least once: a receiver can de-duplicate on ``id`` + ``state``.
"""

from __future__ import annotations

import sqlite3
import time

import requests

from syncd import __version__
from syncd.config import RetryPolicy
from syncd.log import logger
from syncd.retry import backoff_delay
from syncd.state.store import Store
from syncd.text import visible_json


class NotificationQueue:
    """The notifications table: recorded by a trigger with each terminal transition, sent afterwards."""

    def __init__(self, store: Store):
        self.store = store

    def due(self, now: float, limit: int = 100) -> list[sqlite3.Row]:
        return (
            self.store.reader()
            .execute(
                "SELECT * FROM notifications WHERE sent_at IS NULL AND next_at <= ? ORDER BY seq LIMIT ?", (now, limit)
            )
            .fetchall()
        )

    def sent(self, seq: int) -> None:
        with self.store.writing() as conn:
            conn.execute(
                "UPDATE notifications SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?", (time.time(), seq)
            )

    def failed(self, seq: int, error: str, next_at: float) -> None:
        with self.store.writing() as conn:
            conn.execute(
                "UPDATE notifications SET attempts = attempts + 1, last_error = ?, next_at = ? WHERE seq = ?",
                (error, next_at, seq),
            )


class WebhookSender:
    def __init__(
        self, url: str, store: Store, retry: RetryPolicy, timeout: float = 10.0, result_record=lambda job: None
    ):
        self.url = url
        self.store = store
        self.queue = NotificationQueue(store)
        self.retry = retry
        self.timeout = timeout
        self.result_record = result_record
        self._session = requests.Session()

    def payload(self, job_id: str, state: str) -> dict:
        job = self.store.get(job_id)
        return {
            "event": "job.finished",
            "id": job.id,
            "name": job.name,
            "state": state,
            "inbox": job.inbox,
            "backend": job.backend,
            "remote_id": job.remote_id,
            "exit_code": job.exit_code,
            "error": job.error,
            "bucket": job.bucket,
            "folder": job.folder,
            "attempts": job.attempts,
            "result": self.result_record(job),
            "syncd_version": __version__,
        }

    def send_due(self) -> int:
        """Send every due notification once; return how many were delivered."""
        sent = 0
        for row in self.queue.due(time.time()):
            try:
                body = visible_json(self.payload(row["job_id"], row["state"]))
                response = self._session.post(
                    self.url,
                    data=body.encode(),
                    timeout=self.timeout,
                    headers={"Content-Type": "application/json", "User-Agent": f"syncd/{__version__}"},
                )
                if 200 <= response.status_code < 300:
                    self.queue.sent(row["seq"])
                    sent += 1
                    continue
                error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                error = type(exc).__name__
            delay = backoff_delay(self.retry, row["attempts"] + 1)
            logger.warning(
                "webhook for job {} ({}) failed: {}; retrying in {:.0f}s", row["job_id"], row["state"], error, delay
            )
            self.queue.failed(row["seq"], error, time.time() + delay)
        return sent

    def close(self) -> None:
        self._session.close()
