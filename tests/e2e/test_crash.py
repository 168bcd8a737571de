"""kill -9 the daemon again and again while jobs flow: every job runs exactly once and ends with one result."""

from __future__ import annotations

import json
import random
import sqlite3
import time

import pytest

from tests.support.harness import SyncdProcess, drop_job, read_result, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

JOBS = 16
KILLS = 6


def test_run_survives_repeated_kill_9_with_every_job_run_exactly_once(config_factory):
    site = config_factory(settle="0.2s", max_parallel=3)
    root = site.parent
    ledger = root / "ledger.txt"
    rng = random.Random(20261121)
    names = [f"crash-{i:02d}" for i in range(JOBS)]
    pending = list(names)
    kills = 0
    daemon = SyncdProcess(site).start()
    while kills < KILLS:
        for _ in range(rng.randint(1, 4)):
            if pending:
                name = pending.pop(0)
                # The side effect is appended by the job itself: a second run would show up twice.
                command = f"echo {name} >> {ledger}; sleep {rng.uniform(0.05, 0.6):.2f}; echo {name} > out.txt"
                drop_job(daemon.inbox, name, {"command": command})
        time.sleep(rng.uniform(0.2, 1.5))
        daemon.kill9()
        kills += 1
        daemon = SyncdProcess(site).start()
    for name in pending:
        drop_job(daemon.inbox, name, {"command": f"echo {name} >> {ledger}; echo {name} > out.txt"})
    try:
        results = {name: daemon.result(name, timeout=90) for name in names}
    finally:
        assert daemon.stop() == 0

    runs = ledger.read_text().split()
    assert sorted(runs) == sorted(names), f"each job must run exactly once; ran: {sorted(runs)}"
    outbox = root / "outbox" / "results"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(names), "no job delivered twice or to a second folder"
    for name, result in results.items():
        assert result["state"] == "succeeded", result
        assert (outbox / name / "out.txt").read_text() == f"{name}\n"
        assert read_result(outbox / name)["id"] == result["id"]
    assert not list((root / "outbox" / ".syncd-tmp").glob("*")), "no partial file left behind"
    assert [p.name for p in (root / "inbox").iterdir()] == [".syncd"]
    with sqlite3.connect(root / ".state" / "syncd.db") as db:
        states = db.execute("SELECT name, state, finished FROM jobs").fetchall()
    assert sorted(states) == sorted((n, "succeeded", 1) for n in names)
