"""kill -9 the daemon again and again while jobs flow: every job runs exactly once and ends with one result."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest

from tests.support.chaos import assert_each_ran_once
from tests.support.harness import SyncdProcess, drop_job

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

    assert_each_ran_once(root, names, results, ledger)
    assert [p.name for p in (root / "inbox").iterdir()] == [".syncd"]
    with sqlite3.connect(root / ".state" / "syncd.db") as db:
        states = db.execute("SELECT name, state, finished FROM jobs").fetchall()
    assert sorted(states) == sorted((n, "succeeded", 1) for n in names)
