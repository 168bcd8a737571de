"""The daemon acts on events, not on ticks: a local job's end, a folder dropped with .ready, a journal that
is written only once a state has lasted."""

from __future__ import annotations

import os
import signal
import time

import pytest

from syncd.intake.observers import FolderEvents
from tests.support.harness import SyncdProcess, drop_job, make_config, runner_launchers, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def slow_polls(tmp_path):
    """A daemon whose polls are a minute apart: whatever happens sooner was heard, not polled for."""
    config = make_config(
        tmp_path / "site", settle="30s", rescan="60s", observer="native", extra={"poll": {"first": "60s", "max": "60s"}}
    )
    daemon = SyncdProcess(config).start()
    yield daemon
    daemon.stop()


def test_a_local_jobs_end_and_a_ready_folder_are_acted_on_at_once_not_at_the_next_poll_or_settle(slow_polls):
    names: list[str] = []
    events = FolderEvents(slow_polls.inbox, names.append, lambda: None, files=True)
    events.start()
    try:
        started = time.monotonic()
        drop_job(slow_polls.inbox, "quick", {"command": "echo hi > out.txt"}, {".ready": ""})
        result = slow_polls.result("quick", timeout=25)
        took = time.monotonic() - started
        assert result["state"] == "succeeded" and result["exit_code"] == 0
        assert (slow_polls.outbox / "results" / "quick" / "out.txt").read_text() == "hi\n"
        # The settle time and the first poll are 30 s and 60 s away; the result came well before either.
        assert took < 25, took
        # It ended within a second of its start, so its journal never fell due: no file was written
        # beside it in the users' folder only to be removed again.
        assert not any(name.endswith("quick.status.txt") for name in names), names
    finally:
        events.stop()
        events.join(5)


def test_a_job_that_lasts_has_its_journal_and_its_end_is_still_heard(slow_polls):
    journal = slow_polls.inbox / "long.status.txt"
    drop_job(slow_polls.inbox, "long", {"command": "sleep 3; echo done > out.txt"}, {".ready": ""})
    # Submitted (the first poll, which would say running, is a minute away).
    wait_for(lambda: journal.exists() and "state:      submitted" in journal.read_text(), what="its journal")
    result = slow_polls.result("long", timeout=25)
    assert result["state"] == "succeeded"
    wait_for(lambda: not journal.exists(), timeout=10, what="the journal to go once the job ended")


def test_a_launcher_killed_between_jobs_is_started_again_and_no_job_is_lost(slow_polls):
    drop_job(slow_polls.inbox, "first", {"command": "echo 1 > out.txt"}, {".ready": ""})
    assert slow_polls.result("first", timeout=25)["state"] == "succeeded"
    assert slow_polls.proc is not None
    launchers = runner_launchers(slow_polls.proc.pid)
    assert len(launchers) == 1, launchers
    os.kill(launchers[0], signal.SIGKILL)
    drop_job(slow_polls.inbox, "second", {"command": "echo 2 > out.txt"}, {".ready": ""})
    assert slow_polls.result("second", timeout=25)["state"] == "succeeded"
    assert (slow_polls.outbox / "results" / "second" / "out.txt").read_text() == "2\n"
    again = runner_launchers(slow_polls.proc.pid)
    assert len(again) == 1 and again != launchers, (launchers, again)
