"""The watcher keeps detecting through a dead observer and an inbox that disappears and returns."""

from __future__ import annotations

import os

from syncd.config import InboxConfig
from syncd.intake.watch import InboxWatcher
from tests.support.harness import make_job, wait_for


def _watcher(tmp_path, claimed, observer="native"):
    (tmp_path / "inbox").mkdir(exist_ok=True)
    inbox = InboxConfig.model_validate(
        {
            "name": "t",
            "path": "inbox",
            "outbox": "outbox",
            "failed": "failed",
            "backend": "local",
            "storage": "local",
            "bucket": "results",
            "settle": 0,
            "observer": observer,
            "poll_interval": 0.1,
        },
        context={"base_dir": tmp_path},
    )

    def on_settled(inbox, path):
        claimed.append(path.name)
        os.rename(path, tmp_path / f"taken-{path.name}")
        return True

    return InboxWatcher(inbox, on_settled)


def test_check_restarts_a_dead_observer_and_events_flow_again(tmp_path):
    claimed: list[str] = []
    watcher = _watcher(tmp_path, claimed)
    watcher.start()
    try:
        watcher._observer.stop()  # the observer thread dies (as on an inotify error)
        watcher._observer.join(5)
        assert not watcher._observer.is_alive()
        watcher.check()
        assert watcher.restarts == 1 and watcher._observer.is_alive()
        make_job(tmp_path / "inbox", "after-restart", {"command": "true"})
        # Found through the restarted observer's events (no rescan is called here).
        wait_for(lambda: watcher.check() or claimed, timeout=10, what="the job to be handed over")
        assert claimed == ["after-restart"]
    finally:
        watcher.stop()


def test_check_pauses_while_the_inbox_is_gone_and_resumes_without_losing_jobs(tmp_path):
    claimed: list[str] = []
    watcher = _watcher(tmp_path, claimed, observer="polling")
    watcher.start()
    try:
        inbox, away = tmp_path / "inbox", tmp_path / "inbox-unmounted"
        os.rename(inbox, away)  # the share disappears
        watcher.check()
        watcher.check()
        assert claimed == [] and watcher._observer is None
        make_job(away, "arrived-meanwhile", {"command": "true"})
        os.rename(away, inbox)  # the share comes back, with a job that arrived meanwhile
        wait_for(lambda: watcher.check() or claimed, timeout=10, what="the job after the inbox returned")
        assert claimed == ["arrived-meanwhile"]
        assert watcher._observer is not None and watcher._observer.is_alive()
    finally:
        watcher.stop()
