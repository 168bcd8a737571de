"""The circuit breaker: a dead service costs one probe per interval, and the first answer closes it."""

from __future__ import annotations

import threading

import pytest

from syncd.config import RetryPolicy
from syncd.engine.breaker import CircuitBreaker, Guarded, ServiceUnavailable
from syncd.errors import AuthError, PermanentError, TransientError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Service:
    """Counts calls; fails them with ``error`` while it is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: BaseException | None = None

    def submit(self, value: int) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return value * 2

    def check(self) -> str:
        return "local"


def guarded(threshold=3, initial=10.0, max_wait=40.0):
    clock, service, changes = Clock(), Service(), []
    breaker = CircuitBreaker(
        "backend test", RetryPolicy(initial=initial, max=max_wait), threshold, clock, on_change=changes.append
    )
    return Guarded(service, breaker, frozenset({"submit"})), service, clock, changes


def test_breaker_opens_after_threshold_failures_in_a_row_and_stops_calling():
    proxy, service, clock, changes = guarded()
    service.error = TransientError("connection refused")
    for _ in range(3):
        with pytest.raises(TransientError, match="connection refused"):
            proxy.submit(1)
    assert [c.state for c in changes] == ["open"]
    assert changes[0].reason == "connection refused" and changes[0].since == clock.now
    for _ in range(50):
        with pytest.raises(ServiceUnavailable, match="backend test is not answering .*connection refused") as info:
            proxy.submit(1)
        assert 0 < info.value.retry_after <= 10.0
    assert service.calls == 3, "while the circuit is open no call reaches the service"


def test_breaker_lets_one_probe_through_per_interval_and_backs_off_when_it_fails():
    proxy, service, clock, changes = guarded(threshold=1, initial=10.0, max_wait=40.0)
    service.error = TransientError("timed out")
    with pytest.raises(TransientError):
        proxy.submit(1)
    for _ in range(8):
        clock.now = changes[-1].next_probe
        with pytest.raises(TransientError, match="timed out"):
            proxy.submit(1)  # the probe reaches the service and fails
        with pytest.raises(ServiceUnavailable):
            proxy.submit(1)  # the next call does not
    assert service.calls == 1 + 8
    waits = [later.next_probe - earlier.next_probe for earlier, later in zip(changes, changes[1:], strict=False)]
    assert all(w > 0 for w in waits) and max(waits) <= 40.0
    assert waits[-1] >= 20.0, f"the interval grows to the policy's max: {waits}"
    assert {c.since for c in changes} == {changes[0].since}, "'since' is when the service first stopped answering"


def test_breaker_closes_on_the_first_answer_and_calls_flow_again():
    proxy, service, clock, changes = guarded(threshold=2)
    service.error = TransientError("503")
    for _ in range(2):
        with pytest.raises(TransientError):
            proxy.submit(1)
    service.error = None
    clock.now = changes[-1].next_probe + 0.1
    assert proxy.submit(21) == 42
    assert changes[-1].state == "closed" and proxy.breaker.status.state == "closed"
    assert [proxy.submit(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert service.calls == 2 + 1 + 5


@pytest.mark.parametrize("answer", [PermanentError("404 no such bucket"), AuthError("401 token expired")])
def test_breaker_a_refusal_is_an_answer_and_closes_the_circuit(answer):
    proxy, service, clock, changes = guarded(threshold=1)
    service.error = TransientError("reset")
    with pytest.raises(TransientError):
        proxy.submit(1)
    clock.now = changes[-1].next_probe
    service.error = answer
    with pytest.raises(type(answer)):
        proxy.submit(1)
    assert changes[-1].state == "closed"


def test_breaker_failures_must_be_in_a_row_and_local_errors_are_neutral():
    proxy, service, clock, changes = guarded(threshold=3)
    for error in [
        TransientError("a"),
        TransientError("b"),
        None,
        TransientError("c"),
        OSError("disk"),
        TransientError("d"),
    ]:
        service.error = error
        try:
            proxy.submit(1)
        except (TransientError, OSError):
            pass
    assert changes == [], "a success in between resets the count; a local OSError says nothing about the service"
    service.error = TransientError("e")
    with pytest.raises(TransientError):
        proxy.submit(1)
    assert [c.state for c in changes] == ["open"]


def test_breaker_a_probe_that_ends_in_a_local_error_lets_the_next_call_probe():
    proxy, service, clock, changes = guarded(threshold=1)
    service.error = TransientError("refused")
    with pytest.raises(TransientError):
        proxy.submit(1)
    clock.now = changes[-1].next_probe
    service.error = OSError("no space left on device")
    with pytest.raises(OSError):
        proxy.submit(1)
    service.error = None
    assert proxy.submit(2) == 4, "the probe slot is released, not lost"
    assert changes[-1].state == "closed"


def test_breaker_only_one_concurrent_call_probes():
    proxy, service, clock, changes = guarded(threshold=1)
    service.error = TransientError("refused")
    with pytest.raises(TransientError):
        proxy.submit(1)
    clock.now = changes[-1].next_probe
    release, entered = threading.Event(), threading.Event()
    original = service.submit

    def slow_submit(value):
        entered.set()
        release.wait(5)
        return original(value)

    service.error = None
    service.submit = slow_submit
    results = []
    probe = threading.Thread(target=lambda: results.append(proxy.submit(5)))
    probe.start()
    assert entered.wait(5)
    for _ in range(10):
        with pytest.raises(ServiceUnavailable):
            proxy.submit(1)
    release.set()
    probe.join(5)
    assert results == [10] and service.calls == 2
    assert proxy.submit(3) == 6


def test_breaker_passes_local_methods_and_attributes_through():
    proxy, service, clock, changes = guarded(threshold=1)
    service.error = TransientError("refused")
    with pytest.raises(TransientError):
        proxy.submit(1)
    assert proxy.check() == "local", "methods not named go straight to the target, open circuit or not"
    assert proxy.unwrapped is service and proxy.calls == 1


def test_breaker_threshold_zero_never_opens():
    proxy, service, clock, changes = guarded(threshold=0)
    service.error = TransientError("refused")
    for _ in range(20):
        with pytest.raises(TransientError, match="refused"):
            proxy.submit(1)
    assert service.calls == 20 and changes == []


def test_breaker_sees_failures_of_a_listing_while_it_is_consumed():
    clock, changes = Clock(), []
    breaker = CircuitBreaker("storage s3", RetryPolicy(initial=10.0, max=40.0), 2, clock, on_change=changes.append)

    class Lister:
        down = True

        def list(self, prefix):
            yield f"{prefix}a"
            if self.down:
                raise TransientError("reset while listing")
            yield f"{prefix}b"

    lister = Lister()
    proxy = Guarded(lister, breaker, frozenset({"list"}))
    for _ in range(2):
        with pytest.raises(TransientError):
            list(proxy.list("p/"))
    assert [c.state for c in changes] == ["open"]
    with pytest.raises(ServiceUnavailable):
        proxy.list("p/")
    clock.now = changes[-1].next_probe
    lister.down = False
    assert list(proxy.list("p/")) == ["p/a", "p/b"]
    assert changes[-1].state == "closed"
