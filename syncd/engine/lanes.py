"""Lanes: a few threads for steps that wait on nothing but this machine's disks, used one at a time.

Steps of jobs whose backend and storage are both on this machine are short (a few milliseconds) and
spend their waits in ``fsync``. Two threads running such steps side by side take turns at the
interpreter lock at every one of those waits, and the handovers cost more CPU than the overlap saves.
So the first lane takes every step, and lane *n* takes one only while each lane before it has been busy
with its current step for at least ``stall`` seconds: one long step (a large input copied) does not
hold the others up for longer than that.

The interface is the part of :class:`concurrent.futures.Executor` the engine uses: ``submit`` returns a
:class:`~concurrent.futures.Future`, and ``shutdown(cancel_futures=True)`` cancels the steps still queued.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Lanes:
    def __init__(self, lanes: int, stall: float, name: str = "syncd-lane"):
        if lanes < 1:
            raise ValueError("lanes must be at least 1")
        self.stall = stall
        self._name = name
        self._lock = threading.Lock()
        self._wakers = [threading.Condition(self._lock) for _ in range(lanes)]
        self._queue: deque[tuple[Future, Callable[[], Any]]] = deque()
        self._busy_since: list[float | None] = [None] * lanes  # monotonic start of each lane's step
        self._idle = [False] * lanes  # waiting for a queue that was empty (no timeout)
        self._threads: list[threading.Thread] = []
        self._shut = False

    def submit(self, step: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot submit a step after shutdown")
            self._queue.append((future, step))
            if not self._threads:
                self._start()
            for lane, idle in enumerate(self._idle):
                if idle:  # the first idle lane takes it, or times its turn (see _turn_in)
                    self._idle[lane] = False
                    self._wakers[lane].notify()
                    break
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shut = True
            dropped = list(self._queue) if cancel_futures else []
            if cancel_futures:
                self._queue.clear()
            for waker in self._wakers:
                waker.notify_all()
            threads = list(self._threads)
        for future, _ in dropped:
            future.cancel()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _start(self) -> None:
        for lane in range(len(self._wakers)):
            thread = threading.Thread(target=self._run, args=(lane,), name=f"{self._name}_{lane}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, lane: int) -> None:
        while True:
            with self._lock:
                taken = self._take(lane)
                if taken is None:
                    return
                self._busy_since[lane] = time.monotonic()
            future, step = taken
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        result = step()
                    except BaseException as exc:
                        future.set_exception(exc)
                    else:
                        future.set_result(result)
            finally:
                with self._lock:
                    self._busy_since[lane] = None
            del future, step, taken

    def _take(self, lane: int) -> tuple[Future, Callable[[], Any]] | None:
        """The next step for ``lane`` once it may take one (the lock held); None after shutdown."""
        while True:
            if self._shut and not self._queue:
                return None
            if self._queue:
                wait = self._turn_in(lane)
                if wait <= 0:
                    return self._queue.popleft()
                self._wakers[lane].wait(wait)  # woken on time: a lane before may be stalled by then
            else:
                self._idle[lane] = True
                self._wakers[lane].wait()
                self._idle[lane] = False

    def _turn_in(self, lane: int) -> float:
        """Seconds until ``lane`` may take a step: 0 for the first lane; for another, once every lane
        before it has been busy with one step for ``stall`` seconds (a lane before it that is free takes the
        step itself, so this one waits a whole ``stall`` and looks again)."""
        now = time.monotonic()
        wait = 0.0
        for since in self._busy_since[:lane]:
            wait = max(wait, self.stall if since is None else since + self.stall - now)
        return wait
