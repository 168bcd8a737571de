"""Route every log line (syncd's, and stdlib loggers of apscheduler/watchdog) through loguru.

Text on a terminal, syslog priorities without timestamps under journald
(``JOURNAL_STREAM`` set), JSON lines on request. Lines about a job carry its
name and id.
"""

from __future__ import annotations

import logging
import os
import sys

from loguru import logger

_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _subject(record) -> None:
    extra = record["extra"]
    if "job_id" in extra:
        name = extra.get("job_name")
        extra["subject"] = f"[{name} {extra['job_id']}] " if name else f"[{extra['job_id']}] "
    else:
        extra["subject"] = ""
    extra["priority"] = _PRIORITY.get(record["level"].name, 6)


class _InterceptHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level: str | int
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        if record.name == "apscheduler.scheduler" and "maximum number of running instances" in record.getMessage():
            level = "DEBUG"  # a timer that fires while its last run is still going is skipped on purpose
        logger.opt(depth=6, exception=record.exc_info).log(level, "{}: {}", record.name, record.getMessage())


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    logger.remove()
    logger.configure(patcher=_subject)
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    elif fmt == "journal" or (fmt == "auto" and os.environ.get("JOURNAL_STREAM") and not sys.stderr.isatty()):
        logger.add(sys.stderr, level=level, format="<{extra[priority]}>{extra[subject]}{message}", colorize=False,
                   backtrace=False, diagnose=False)
    else:
        # diagnose=False: tracebacks must not print variable values (they may hold secrets)
        logger.add(sys.stderr, level=level, colorize=sys.stderr.isatty(), backtrace=False, diagnose=False,
                   format="<green>{time:YYYY-MM-DD HH:mm:ss}</green> <level>{level: <7}</level> "
                          "<cyan>{extra[subject]}</cyan>{message}")
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
