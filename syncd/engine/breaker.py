"""A circuit breaker per remote service, so a dead service costs one probe per interval, not one call per job.

Closed: calls go through; ``threshold`` transport failures in a row (``TransientError``
raised by the service's methods) open the circuit. Open: calls fail at once with
:class:`ServiceUnavailable`, which says when the next probe is due, without touching
the service. When that time comes, exactly one call goes through as the probe; if it
succeeds the circuit closes, if it fails it opens again for a longer interval (the
retry policy's backoff, capped at its ``max``).

Any answer from the service counts as success, including a refusal (``PermanentError``,
``AuthError``): the service is up, the request was wrong. Other exceptions (local
``OSError``, bugs) say nothing about the service and are neutral.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from syncd.config import RetryPolicy
from syncd.errors import SyncdError, TransientError
from syncd.retry import backoff_delay

CLOSED, OPEN, PROBING = "closed", "open", "probing"


class ServiceUnavailable(TransientError):
    """Refused without calling: the service's circuit is open."""


@dataclass(frozen=True)
class CircuitState:
    service: str
    state: str
    since: float | None  # when the circuit opened (None while closed)
    next_probe: float | None
    reason: str | None


class CircuitBreaker:
    def __init__(
        self,
        service: str,
        policy: RetryPolicy,
        threshold: int,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[CircuitState], None] | None = None,
    ):
        self.service = service
        self.policy = policy
        self.threshold = threshold
        self.clock = clock
        self.on_change = on_change
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0  # consecutive transport failures while closed
        self._openings = 0  # consecutive failed probes, for the backoff
        self._since: float | None = None
        self._next_probe = 0.0
        self._reason: str | None = None

    @property
    def status(self) -> CircuitState:
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> CircuitState:
        return CircuitState(
            self.service, self._state, self._since, None if self._state == CLOSED else self._next_probe, self._reason
        )

    def before_call(self) -> bool:
        """Raise :class:`ServiceUnavailable` unless this call may go through; True if it is the probe."""
        with self._lock:
            if self._state == CLOSED or self.threshold <= 0:
                return False
            now = self.clock()
            if self._state == OPEN and now >= self._next_probe:
                self._state = PROBING
                return True
            wait = max(0.0, self._next_probe - now)
        raise ServiceUnavailable(
            f"{self.service} is not answering ({self._reason}); syncd stopped calling it and probes it "
            f"again in {wait:.0f}s",
            retry_after=wait,
        )

    def succeeded(self) -> None:
        with self._lock:
            was_open = self._state != CLOSED
            self._state, self._failures, self._openings = CLOSED, 0, 0
            self._since, self._reason = None, None
            change = self._snapshot() if was_open else None
        if change is not None and self.on_change is not None:
            self.on_change(change)

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            probing = self._state == PROBING
            if not probing and (self._state == OPEN or self._failures < self.threshold or self.threshold <= 0):
                return
            self._openings += 1
            now = self.clock()
            self._state = OPEN
            self._since = self._since or now
            self._next_probe = now + backoff_delay(self.policy, self._openings)
            self._reason = str(exc)
            change = self._snapshot()
        if self.on_change is not None:
            self.on_change(change)

    def released(self) -> None:
        """The probe ended with an answer that says nothing about the service: let the next call probe."""
        with self._lock:
            if self._state == PROBING:
                self._state = OPEN
                self._next_probe = self.clock()

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.before_call()
        with self._outcome():
            result = method(*args, **kwargs)
        if inspect.isgenerator(result):  # a listing talks to the service while it is consumed
            return self._consume(result)
        self.succeeded()
        return result

    def _consume(self, items: Iterator[Any]) -> Iterator[Any]:
        with self._outcome():
            yield from items
        self.succeeded()

    @contextlib.contextmanager
    def _outcome(self) -> Iterator[None]:
        """Record what an exception says about the service, and let it through."""
        try:
            yield
        except ServiceUnavailable:
            self.released()
            raise
        except TransientError as exc:
            self.failed(exc)
            raise
        except SyncdError:
            self.succeeded()  # the service answered, with a refusal
            raise
        except BaseException:
            self.released()
            raise


class Guarded:
    """Wraps a backend or storage: the named methods go through the breaker, everything else passes through."""

    def __init__(self, target: Any, breaker: CircuitBreaker, methods: frozenset[str]):
        self._target = target
        self._breaker = breaker
        self._methods = methods

    @property
    def breaker(self) -> CircuitBreaker:
        return self._breaker

    @property
    def unwrapped(self) -> Any:
        return self._target

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._target, name, value)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name in self._methods and callable(value):
            return functools.partial(self._breaker.call, value)
        return value
