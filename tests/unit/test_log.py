"""The deferred logger: loguru is set up once, just before the first line, even from many threads."""

from __future__ import annotations

import sys
import threading

from loguru import logger as loguru_logger

from syncd.log import DeferredLogger


def test_setup_runs_once_before_the_first_line_from_racing_threads():
    lines: list[str] = []
    setups: list[int] = []
    handlers: list[int] = []

    def setup() -> None:
        setups.append(1)
        handlers.append(loguru_logger.add(lambda message: lines.append(message.record["message"]), level="WARNING"))

    deferred = DeferredLogger()
    deferred.setup_on_first_use(setup)
    assert setups == [], "nothing logged yet: nothing set up"
    start = threading.Barrier(8)

    def log(number: int) -> None:
        start.wait()
        deferred.warning("line {}", number)

    threads = [threading.Thread(target=log, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for handler in handlers:
            loguru_logger.remove(handler)
    assert setups == [1]
    assert sorted(lines) == sorted(f"line {n}" for n in range(8)), "every line reached the handler set up for it"


def test_setup_after_first_use_runs_at_once():
    deferred = DeferredLogger()
    deferred.debug("first")
    ran: list[int] = []
    deferred.setup_on_first_use(lambda: ran.append(1))
    assert ran == [1]


def test_skipped_timer_runs_are_not_warnings_but_other_library_warnings_are(capsys):
    import logging

    from syncd.service.logsetup import setup_logging

    setup_logging("INFO", "text")
    try:
        logging.getLogger("apscheduler.scheduler").warning(
            'Execution of job "Daemon._guard" skipped: maximum number of running instances reached (1)'
        )
        logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed by 0:00:05")
        logging.getLogger("watchdog.observers.inotify").warning("Inotify queue overflowed")
    finally:
        loguru_logger.remove()
        loguru_logger.add(sys.stderr)  # loguru's default, as the other tests expect
        logging.basicConfig(handlers=[logging.StreamHandler()], level=logging.WARNING, force=True)
    err = capsys.readouterr().err
    assert "maximum number of running instances" not in err
    assert "was missed by" in err and "Inotify queue overflowed" in err
