"""Hear the moment a process ends, also one that is not our child: a pidfd per process, one thread for all.

A local job's runner is detached from the daemon (it must outlive a daemon crash), so the daemon
cannot wait for it; but a pidfd (Linux 5.3 and later) becomes readable when its process exits, whoever
its parent is. This is a hint that a status changed, never the status itself: where pidfds are not
available, nothing is heard and the regular polls find every end.
"""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Callable

from syncd.log import logger


class ExitWatcher:
    """Calls ``on_exit(key)`` from its own thread once the process watched under ``key`` has ended."""

    def __init__(self, on_exit: Callable[[str], None], name: str = "syncd-exits"):
        self._on_exit = on_exit
        self._name = name
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int]] = []  # (key, pidfd) handed to the thread
        self._watched: set[str] = set()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    def watching(self, key: str) -> bool:
        with self._lock:
            return key in self._watched

    def add(self, key: str, pid: int, still_the_process: Callable[[], bool]) -> bool:
        """Watch ``pid`` under ``key``. ``still_the_process`` is asked once the pidfd is open, to rule out a
        pid that was reused after the process ended. False when this system has no pidfds."""
        with self._lock:
            if self._closed:
                return False
            if key in self._watched:
                return True
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._on_exit(key)  # it has ended already
            return True
        except (AttributeError, OSError) as exc:
            logger.debug("cannot watch process {} for its end ({}); its end is found by polling", pid, exc)
            return False
        if not still_the_process():
            os.close(pidfd)
            self._on_exit(key)
            return True
        with self._lock:
            if self._closed or key in self._watched:
                os.close(pidfd)
                return not self._closed
            self._start()
            self._watched.add(key)
            self._pending.append((key, pidfd))
        os.write(self._wake_w, b"x")
        return True

    def _start(self) -> None:
        """Start the thread on first use (called with the lock held)."""
        if self._thread is not None:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        while True:
            for selected, _events in selector.select():
                if selected.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    with self._lock:
                        if self._closed:
                            return
                        pending, self._pending = self._pending, []
                    for key, pidfd in pending:
                        selector.register(pidfd, selectors.EVENT_READ, key)
                    continue
                selector.unregister(selected.fd)
                os.close(selected.fd)
                with self._lock:  # before the call: a poll it causes must find the key no longer watched
                    self._watched.discard(selected.data)
                try:
                    self._on_exit(selected.data)
                except Exception:
                    logger.opt(exception=True).error("handling the end of {} failed", selected.data)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        os.write(self._wake_w, b"x")
        thread.join(timeout=5)
        assert self._selector is not None
        for selected in list(self._selector.get_map().values()):
            os.close(selected.fd)
        self._selector.close()
        os.close(self._wake_w)
        with self._lock:
            for _key, pidfd in self._pending:
                os.close(pidfd)
            self._pending.clear()
            self._watched.clear()
