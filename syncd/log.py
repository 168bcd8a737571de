"""``logger``: loguru's logger, imported (and, if asked, configured) on its first use.

Importing loguru costs ~50 ms of CPU, most of it asyncio. The daemon logs from the start and
pays it at once; a ``syncd sync`` that has nothing to warn about never needs loguru at all, so it
hands its logging setup to :meth:`DeferredLogger.setup_on_first_use` instead of running it.
Every module logs through this object; handlers and levels are loguru's as configured by
:mod:`syncd.service.logsetup`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class DeferredLogger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._setup: Callable[[], None] | None = None
        self._logger: Any = None

    def setup_on_first_use(self, setup: Callable[[], None]) -> None:
        """Run ``setup`` (which configures loguru) just before the first line is logged; now if one was."""
        with self._lock:
            if self._logger is None:
                self._setup = setup
                return
        setup()

    def _real(self) -> Any:
        with self._lock:  # mirror threads may log their first lines at the same time: set up once
            if self._logger is None:
                from loguru import logger

                setup, self._setup = self._setup, None
                if setup is not None:
                    setup()
                self._logger = logger
            return self._logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger if self._logger is not None else self._real(), name)


logger = DeferredLogger()
