"""User text where people read it (issue 16, class 2): one line, nothing invisible, no forged log lines,
in every log format, ERROR.txt, webhooks and JSON for people and programs."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

from syncd.text import shown, visible_json

FORGE = "evil\n2026-01-01 00:00:00 INFO    [payroll 20260101-000000-aaaaaa] succeeded: results in /outbox"
BIDI = "report\u202etxt.exe"
HIDDEN = "a\u200bb\ufeffc\u2066d\u2028e\x9b31m\x1b[2J\r\t"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("plain name", "plain name"),
        ("données ✓ 日本", "données ✓ 日本"),
        (FORGE, FORGE.replace("\n", "\\n")),
        (BIDI, "report\\u202etxt.exe"),
        (HIDDEN, "a\\u200bb\\ufeffc\\u2066d\\u2028e\\x9b31m\\x1b[2J\\r\\t"),
        ("bad\udcffname", "bad\\xffname"),
        ("tag\U000e0041", "tag\\U000e0041"),
    ],
)
def test_shown_writes_controls_and_invisible_characters_as_escapes(text, expected):
    assert shown(text) == expected
    assert shown(text).isprintable()


def test_visible_json_is_the_same_data_for_a_parser_and_visible_to_a_person():
    data = {"name": BIDI, "error": HIDDEN, "file": "bad\udcffname", "emoji": "👍", "tag": "x\U000e0041"}
    text = visible_json(data, indent=2)
    assert json.loads(text) == data
    assert text.isascii() is False and "👍" in text, "ordinary characters stay readable"
    assert "\u202e" not in text and "\u200b" not in text and "\\u202e" in text
    text.encode("utf-8")  # lone surrogates are escaped too


def _logged(fmt: str, monkeypatch, emit) -> str:
    from syncd.service import logsetup

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logsetup.setup_logging("INFO", fmt)
    try:
        emit()
    finally:
        logsetup.logger.remove()
    return stream.getvalue()


def _emit():
    from loguru import logger

    job = logger.bind(job_id="20260101-000000-bbbbbb", job_name=FORGE + BIDI)
    job.warning("rejected: directory name {!s}: {}", FORGE, HIDDEN)
    try:
        raise OSError(f"cannot open {FORGE}")
    except OSError:
        job.opt(exception=True).error("unexpected error in a job step")


@pytest.mark.parametrize("fmt", ["text", "journal", "json"])
def test_no_user_string_forges_a_log_line_or_hides_characters_in_any_format(monkeypatch, fmt):
    out = _logged(fmt, monkeypatch, _emit)
    assert "\u202e" not in out and "\u200b" not in out and "\x1b[2J" not in out and "\x9b" not in out
    lines = out.splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert len(records) == 2
        assert all("\n" not in r["record"]["message"] for r in records)
        assert records[0]["record"]["extra"]["job_name"].startswith("evil\\n2026")
        return
    start = {
        "text": re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) "),
        "journal": re.compile(r"^<\d>\["),
    }[fmt]
    heads = [line for line in lines if start.match(line)]
    assert len(heads) == 2, lines
    assert not any(line.startswith("2026-01-01 00:00:00 INFO") for line in lines), "a forged line"
    tail = [line for line in lines if not start.match(line)]  # the traceback of the second record
    assert all("[payroll" not in line.split("OSError")[0] or "\\n" in line for line in tail), tail


def test_a_webhook_body_shows_a_hostile_name_escaped_and_parses_back_to_it(store, monkeypatch):
    from syncd.config import RetryPolicy
    from syncd.service.webhook import WebhookSender

    job = store.create_job(
        id="20260101-000000-cccccc",
        name=BIDI + "\n",
        dir_name="d",
        inbox="default",
        backend="local",
        storage="local",
        bucket="results",
        spool_path="/x",
    )
    store.update(job.id, state="failed")  # a terminal state: the store's trigger queues the notification
    sent = []

    class Answer:
        status_code = 204

    sender = WebhookSender("http://hook.invalid/", store, RetryPolicy())
    monkeypatch.setattr(sender._session, "post", lambda url, data, **kw: sent.append(data) or Answer())
    assert sender.send_due() == 1
    body = sent[0].decode()
    assert "\u202e" not in body and "\\u202e" in body and json.loads(body)["name"] == BIDI + "\n"
