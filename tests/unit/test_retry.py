"""syncd.retry: capped exponential backoff with jitter, Retry-After, the failure budget."""

from __future__ import annotations

import random

import pytest

from syncd.config import RetryPolicy
from syncd.retry import backoff_delay, budget_spent

POLICY = RetryPolicy(initial=2.0, max=300.0, budget=3600.0)


def samples(policy: RetryPolicy, failures: int, n: int = 200, retry_after: float | None = None) -> list[float]:
    rng = random.Random(failures)
    return [backoff_delay(policy, failures, retry_after, rng=rng) for _ in range(n)]


@pytest.mark.parametrize("failures, ceiling", [(1, 2.0), (2, 4.0), (3, 8.0), (5, 32.0), (8, 256.0)])
def test_backoff_delay_jitter_within_half_ceiling_and_ceiling(failures, ceiling):
    values = samples(POLICY, failures)
    assert all(ceiling / 2 <= v <= ceiling for v in values)
    assert max(values) - min(values) > ceiling / 10  # it is actually jittered


def test_backoff_delay_grows_with_failures():
    means = [sum(samples(POLICY, f)) / 200 for f in range(1, 9)]
    assert all(later > 1.8 * earlier for earlier, later in zip(means, means[1:], strict=False))


@pytest.mark.parametrize("failures", [9, 10, 20, 60])
def test_backoff_delay_capped_at_max(failures):
    assert all(150.0 <= v <= 300.0 for v in samples(POLICY, failures))


def test_backoff_delay_many_failures_still_capped():
    # A small max with a long budget means thousands of consecutive failures: still just max.
    policy = RetryPolicy(initial=1.0, max=5.0, budget=86400.0 * 7)
    for failures in (1100, 20_000, 120_000):
        assert 2.5 <= backoff_delay(policy, failures, rng=random.Random(1)) <= 5.0


def test_backoff_delay_zero_failures_treated_as_first():
    assert all(1.0 <= v <= 2.0 for v in samples(POLICY, 0))


def test_backoff_delay_honours_retry_after():
    assert all(v == 120.0 for v in samples(POLICY, 1, retry_after=120.0))


def test_backoff_delay_retry_after_capped_at_max():
    assert all(v == 300.0 for v in samples(POLICY, 1, retry_after=10_000.0))


def test_backoff_delay_short_retry_after_does_not_shorten_backoff():
    assert all(128.0 <= v <= 256.0 for v in samples(POLICY, 8, retry_after=1.0))


def test_backoff_delay_uses_global_random_without_rng():
    values = {backoff_delay(POLICY, 4) for _ in range(50)}
    assert all(8.0 <= v <= 16.0 for v in values)
    assert len(values) > 1


def test_budget_spent():
    assert budget_spent(POLICY, None, 1e9) is False
    assert budget_spent(POLICY, 1000.0, 1000.0) is False
    assert budget_spent(POLICY, 1000.0, 1000.0 + 3599.9) is False
    assert budget_spent(POLICY, 1000.0, 1000.0 + 3600.0) is True
    assert budget_spent(POLICY, 1000.0, 1000.0 + 99999.0) is True
