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

from syncd.text import shown

_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class EscapedError(Exception):
    """Stands in for an exception whose text holds control or invisible characters (a user's file name):
    its traceback is kept, its text shown escaped, so it can't forge log lines either."""


def _subject(record) -> None:
    """Make every line one line a person can trust: the message and the job's name (user text: folder
    names, file names, problems) with control characters, bidi overrides and invisible characters
    escaped (:func:`syncd.text.shown`), in the text, JSON and journal formats alike."""
    extra = record["extra"]
    record["message"] = shown(record["message"])
    if "job_id" in extra:
        name = extra.get("job_name")
        if name is not None:
            extra["job_name"] = name = shown(name)
        extra["subject"] = f"[{name} {shown(extra['job_id'])}] " if name else f"[{shown(extra['job_id'])}] "
    else:
        extra["subject"] = ""
    extra["priority"] = _PRIORITY.get(record["level"].name, 6)
    exception = record["exception"]
    if exception is not None and exception.value is not None:
        try:
            text = str(exception.value)
        except Exception:  # an exception whose str() fails: loguru says so itself
            return
        if shown(text) != text:
            safe = EscapedError(f"{exception.type.__name__}: {shown(text)}")
            record["exception"] = exception._replace(type=EscapedError, value=safe)


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
        logger.add(
            sys.stderr,
            level=level,
            format="<{extra[priority]}>{extra[subject]}{message}",
            colorize=False,
            backtrace=False,
            diagnose=False,
        )
    else:
        # diagnose=False: tracebacks must not print variable values (they may hold secrets)
        logger.add(
            sys.stderr,
            level=level,
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
            format="<green>{time:YYYY-MM-DD HH:mm:ss}</green> <level>{level: <7}</level> "
            "<cyan>{extra[subject]}</cyan>{message}",
        )
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
