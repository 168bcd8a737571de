"""kill -9 aimed at every phase of a job, many times in one run: each job still runs exactly once.

Each daemon life is started with one crash point (``SYNCD_CRASH_AT``, see ``syncd/crashpoints.py``)
and killed by it; new jobs are dropped every life, so older ones are caught in later phases. The
settle phase is hit from outside (killed while a folder is settling). At the end one clean daemon
finishes everything and the test checks the promises with counts.
"""

from __future__ import annotations

import signal
import sqlite3
import time

import pytest

from syncd.crashpoints import ENV
from tests.support.harness import SyncdProcess, drop_job, read_result, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Every transition a successful job makes, and every side effect whose new state is not saved yet.
POINTS = [
    "claimed-unrecorded", "after:claimed", "after:staging", "staged-unrecorded", "after:staged",
    "after:submitting", "submitted-unrecorded", "after:submitted", "after:running", "after:collecting",
    "delivered-unrecorded", "after:succeeded", "archived-unrecorded",
]


def _drop(inbox, name, ledger):
    # The job appends to the ledger itself: a second run of any job shows up as a second line.
    command = f"echo {name} >> {ledger}; sleep 1; echo {name} > out.txt; head -c 300000 /dev/urandom > big.bin"
    drop_job(inbox, name, {"command": command}, {"in.txt": f"input of {name}\n"})


def test_kill_9_at_every_phase_then_restart_runs_every_job_exactly_once(config_factory):
    site = config_factory(settle="0.5s", max_parallel=4)
    root = site.parent
    ledger = root / "ledger.txt"
    names: list[str] = []
    kills: dict[str, int] = {}

    def drop_two():
        for _ in range(2):
            name = f"job-{len(names):02d}"
            names.append(name)
            _drop(root / "inbox", name, ledger)

    for point in POINTS:
        drop_two()
        daemon = SyncdProcess(site, env={ENV: point}).start(wait=False)
        try:
            daemon.proc.wait(timeout=60)
        except Exception:
            daemon.kill9()
            raise AssertionError(f"crash point {point} was never reached:\n{daemon.log()}")
        daemon._log.close()
        assert daemon.proc.returncode == -signal.SIGKILL, daemon.log()
        assert f"crash point {point} reached" in daemon.log()
        kills[point] = kills.get(point, 0) + 1

    # The settle phase, from outside: a folder is half-way through its settle wait.
    daemon = SyncdProcess(site).start()
    drop_two()
    time.sleep(0.2)
    daemon.kill9()
    kills["settle (external)"] = 1

    daemon = SyncdProcess(site).start()
    try:
        results = {name: daemon.result(name, timeout=120) for name in names}
        wait_for(lambda: [p.name for p in (root / "inbox").iterdir()] == [".syncd"], timeout=30,
                 what="every claimed folder archived")
    finally:
        assert daemon.stop() == 0

    assert len(kills) == len(POINTS) + 1, kills
    runs = ledger.read_text().split()
    assert sorted(runs) == sorted(names), f"each job runs exactly once; ran: {sorted(runs)}"
    outbox = root / "outbox" / "results"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(names), "no job delivered twice or to a 2nd folder"
    for name, result in results.items():
        assert result["state"] == "succeeded", result
        folder = outbox / name
        assert (folder / "out.txt").read_text() == f"{name}\n"
        assert (folder / "big.bin").stat().st_size == 300000
        assert read_result(folder)["id"] == result["id"]
        done = root / "inbox" / ".syncd" / "done" / result["id"]
        assert (done / "in.txt").read_text() == f"input of {name}\n", "the user's files are kept"
    assert not list((root / "outbox" / ".syncd-tmp").glob("*")), "no partial file left behind"
    with sqlite3.connect(root / ".state" / "syncd.db") as db:
        states = db.execute("SELECT name, state, finished, attempts FROM jobs").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(states) == sorted((n, "succeeded", 1, 1) for n in names)
