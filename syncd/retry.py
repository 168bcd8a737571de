"""The one retry policy: exponential backoff with full jitter, capped, Retry-After honoured."""

from __future__ import annotations

import random

from syncd.config import RetryPolicy


def backoff_delay(
    policy: RetryPolicy, failures: int, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the ``failures``-th consecutive transient failure (1-based)."""
    ceiling = min(policy.max, policy.initial * 2.0 ** min(max(0, failures - 1), 60))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max))
    return delay


def budget_spent(policy: RetryPolicy, failing_since: float | None, now: float) -> bool:
    return failing_since is not None and now - failing_since >= policy.budget
