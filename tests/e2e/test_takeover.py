"""Two hosts, one share: daemons on one inbox take over the jobs of a daemon that died or was stopped."""

from __future__ import annotations

import signal
import time

from tests.support.cluster import assert_exactly_once, daemons, delivered, drop_counted, share_records
from tests.support.harness import wait_for


def test_a_daemon_killed_for_good_has_its_jobs_finished_by_the_other_exactly_once(tmp_path):
    root = tmp_path / "share"
    procs = daemons(root, ["a", "b"])
    names = [f"job-{n:03d}" for n in range(30)]
    for proc in procs.values():
        proc.start()
    try:
        for name in names:
            drop_counted(root, name, seconds=1.0)
        wait_for(lambda: "claimed job directory" in procs["a"].log(), timeout=30, what="a to claim jobs")
        time.sleep(1.0)  # some of a's jobs are running, others wait for a slot
        procs["a"].kill9()
        wait_for(lambda: len(delivered(root)) == len(names), timeout=120, what="every job delivered")
        wait_for(lambda: not share_records(root), timeout=30, what="every handoff record gone")
    finally:
        for proc in procs.values():
            proc.stop()
    results = assert_exactly_once(root, names)
    adopted = [r for r in results.values() if r.get("adopted_from")]
    assert adopted, "a's unfinished jobs were finished by b"
    assert all(r["adopted_from"].endswith("(a.1)") for r in adopted), adopted
    assert "taking its jobs over" in procs["b"].log()


def test_a_daemon_stopped_past_its_lease_hands_its_jobs_over_and_keeps_out_of_them(tmp_path):
    root = tmp_path / "share"
    procs = daemons(root, ["a", "b"])
    names = [f"job-{n:03d}" for n in range(30)]
    for proc in procs.values():
        proc.start()
    try:
        for name in names:
            drop_counted(root, name, seconds=1.0)
        wait_for(lambda: "claimed job directory" in procs["a"].log(), timeout=30, what="a to claim jobs")
        time.sleep(0.5)
        procs["a"].proc.send_signal(signal.SIGSTOP)
        wait_for(lambda: "taking its jobs over" in procs["b"].log(), timeout=30, what="b to take a's lease over")
        time.sleep(2.0)  # b has begun with a's jobs
        procs["a"].proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "took over its" in procs["a"].log(), timeout=30, what="a to notice it was fenced")
        more = [f"late-{n:03d}" for n in range(10)]
        for name in more:
            drop_counted(root, name, seconds=0.2)
        names += more
        wait_for(lambda: len(delivered(root)) == len(names), timeout=120, what="every job delivered")
        wait_for(lambda: not share_records(root), timeout=30, what="every handoff record gone")
    finally:
        for proc in procs.values():
            proc.stop()
    results = assert_exactly_once(root, names)
    assert any(r.get("adopted_from") for r in results.values())
    assert any(r["id"] and "late" in r["job"] for r in results.values())
