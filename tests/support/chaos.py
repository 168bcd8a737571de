"""kill -9 at named crash points, one daemon life each, then one clean life that must finish everything."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

from syncd.engine.crashpoints import ENV
from tests.support.harness import SyncdProcess, drop_job, read_result, wait_for

BIG = 300_000  # bytes of random output per job: enough to make collection take a moment


def _drop(inbox: Path, name: str, ledger: Path) -> None:
    # The job appends to the ledger itself: a second run of any job shows up as a second line.
    command = f"echo {name} >> {ledger}; sleep 1; echo {name} > out.txt; head -c {BIG} /dev/urandom > big.bin"
    drop_job(inbox, name, {"command": command}, {"in.txt": f"input of {name}\n"})


def kill_at_each_point_then_finish(
    site: Path, points: list[str], *, per_life: int = 2, timeout: float = 120
) -> dict[str, int]:
    """Drop ``per_life`` jobs and run a daemon until each crash point kills it, kill one more mid-settle,
    then let a clean daemon finish; check every promise. Returns the kills by point."""
    root = site.parent
    ledger = root / "ledger.txt"
    names: list[str] = []
    kills: dict[str, int] = {}

    def drop_some() -> None:
        for _ in range(per_life):
            name = f"job-{len(names):02d}"
            names.append(name)
            _drop(root / "inbox", name, ledger)

    for point in points:
        drop_some()
        daemon = SyncdProcess(site, env={ENV: point}).start(wait=False)
        try:
            daemon.proc.wait(timeout=timeout)
        except Exception:
            daemon.kill9()
            raise AssertionError(f"crash point {point} was never reached:\n{daemon.log()}") from None
        daemon._log.close()
        assert daemon.proc.returncode == -signal.SIGKILL, daemon.log()
        assert f"crash point {point} reached" in daemon.log()
        kills[point] = kills.get(point, 0) + 1

    daemon = SyncdProcess(site).start()  # the settle phase, from outside
    drop_some()
    time.sleep(0.2)
    daemon.kill9()
    kills["settle (external)"] = 1

    daemon = SyncdProcess(site).start()
    try:
        results = {name: daemon.result(name, timeout=timeout) for name in names}
        wait_for(
            lambda: [p.name for p in (root / "inbox").iterdir()] == [".syncd"],
            timeout=60,
            what="every claimed folder archived",
        )
    finally:
        assert daemon.stop() == 0

    assert_each_ran_once(root, names, results, ledger)
    outbox = root / "outbox" / "results"
    for name, result in results.items():
        folder = outbox / name
        assert (folder / "big.bin").stat().st_size == BIG
        done = root / "inbox" / ".syncd" / "done" / result["id"]
        assert (done / "in.txt").read_text() == f"input of {name}\n", "the user's files are kept"
    with sqlite3.connect(root / ".state" / "syncd.db") as db:
        states = db.execute("SELECT name, state, finished, attempts FROM jobs").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sorted(states) == sorted((n, "succeeded", 1, 1) for n in names)
    return kills


def assert_each_ran_once(root: Path, names: list[str], results: dict[str, dict], ledger: Path) -> None:
    """Every job appended its name to ``ledger`` once, succeeded, and was delivered once, complete."""
    runs = ledger.read_text().split()
    assert sorted(runs) == sorted(names), f"each job runs exactly once; ran: {sorted(runs)}"
    outbox = root / "outbox" / "results"
    assert sorted(p.name for p in outbox.iterdir()) == sorted(names), "no job delivered twice or to a 2nd folder"
    for name, result in results.items():
        assert result["state"] == "succeeded", result
        assert (outbox / name / "out.txt").read_text() == f"{name}\n"
        assert read_result(outbox / name)["id"] == result["id"]
    left = sorted(str(p.relative_to(root)) for p in (root / "outbox" / ".syncd-tmp").rglob("*"))
    assert not left, f"no partial file left behind: {left}"
