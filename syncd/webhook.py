"""Notifications on terminal states to a webhook URL fixed by the admin.

The state store records each notification in the same transaction as the
terminal transition (a trigger), so a crash never loses one; this module sends
what is due, with the engine's retry policy, and marks it sent. Delivery is at
least once: a receiver can de-duplicate on ``id`` + ``state``.
"""

from __future__ import annotations

import json
import time

import requests
from syncd.log import logger

from syncd import __version__
from syncd.config import RetryPolicy
from syncd.retry import backoff_delay
from syncd.store import Store


class WebhookSender:
    def __init__(self, url: str, store: Store, retry: RetryPolicy, timeout: float = 10.0,
                 result_record=lambda job: None):
        self.url = url
        self.store = store
        self.retry = retry
        self.timeout = timeout
        self.result_record = result_record
        self._session = requests.Session()

    def payload(self, job_id: str, state: str) -> dict:
        job = self.store.get(job_id)
        return {"event": "job.finished", "id": job.id, "name": job.name, "state": state, "inbox": job.inbox,
                "backend": job.backend, "remote_id": job.remote_id, "exit_code": job.exit_code,
                "error": job.error, "bucket": job.bucket, "folder": job.folder, "attempts": job.attempts,
                "result": self.result_record(job), "syncd_version": __version__}

    def send_due(self) -> int:
        """Send every due notification once; return how many were delivered."""
        sent = 0
        for row in self.store.due_notifications(time.time()):
            try:
                body = json.dumps(self.payload(row["job_id"], row["state"]), ensure_ascii=False)
                response = self._session.post(self.url, data=body.encode(), timeout=self.timeout,
                                              headers={"Content-Type": "application/json",
                                                       "User-Agent": f"syncd/{__version__}"})
                if 200 <= response.status_code < 300:
                    self.store.notification_sent(row["seq"])
                    sent += 1
                    continue
                error = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                error = type(exc).__name__
            delay = backoff_delay(self.retry, row["attempts"] + 1)
            logger.warning("webhook for job {} ({}) failed: {}; retrying in {:.0f}s", row["job_id"], row["state"],
                           error, delay)
            self.store.notification_failed(row["seq"], error, time.time() + delay)
        return sent

    def close(self) -> None:
        self._session.close()
