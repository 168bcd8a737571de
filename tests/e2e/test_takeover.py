"""Two hosts, one share: daemons on one inbox take over the jobs of a daemon that died or was stopped."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from tests.support.cluster import assert_exactly_once, daemons, delivered, drop_counted, share_records, stop_all
from tests.support.harness import SyncdProcess, wait_for

pytestmark = pytest.mark.e2e


def _two_daemons_busy(root: Path, jobs: int) -> tuple[dict[str, SyncdProcess], list[str]]:
    """Daemons a and b on one inbox, ``jobs`` one-second jobs dropped, once a has claimed some."""
    procs = daemons(root, ["a", "b"])
    names = [f"job-{n:03d}" for n in range(jobs)]
    try:
        for proc in procs.values():
            proc.start()
        for name in names:
            drop_counted(root, name, seconds=1.0)
        wait_for(lambda: "claimed job directory" in procs["a"].log(), timeout=30, what="a to claim jobs")
    except BaseException:
        for proc in procs.values():
            if proc.proc is not None:
                proc.kill9()
        raise
    return procs, names


def test_a_daemon_killed_for_good_has_its_jobs_finished_by_the_other_exactly_once(tmp_path):
    root = tmp_path / "share"
    procs, names = _two_daemons_busy(root, 30)
    try:
        time.sleep(1.0)  # some of a's jobs are running, others wait for a slot
        procs["a"].kill9()
        wait_for(lambda: len(delivered(root)) == len(names), timeout=120, what="every job delivered")
        wait_for(lambda: not share_records(root), timeout=30, what="every handoff record gone")
    finally:
        stop_all(procs)
    results = assert_exactly_once(root, names)
    adopted = [r for r in results.values() if r.get("adopted_from")]
    assert adopted, "a's unfinished jobs were finished by b"
    assert all(r["adopted_from"].endswith("(a.1)") for r in adopted), adopted
    assert "taking its jobs over" in procs["b"].log()


def test_a_daemon_stopped_past_its_lease_hands_its_jobs_over_and_keeps_out_of_them(tmp_path):
    root = tmp_path / "share"
    procs, names = _two_daemons_busy(root, 30)
    try:
        time.sleep(0.5)
        procs["a"].proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: "taking its jobs over" in procs["b"].log(), timeout=30, what="b to take a's lease over")
            time.sleep(2.0)  # b has begun with a's jobs
        finally:
            procs["a"].proc.send_signal(signal.SIGCONT)
        wait_for(lambda: "took over its" in procs["a"].log(), timeout=30, what="a to notice it was fenced")
        more = [f"late-{n:03d}" for n in range(10)]
        for name in more:
            drop_counted(root, name, seconds=0.2)
        names += more
        wait_for(lambda: len(delivered(root)) == len(names), timeout=120, what="every job delivered")
        wait_for(lambda: not share_records(root), timeout=30, what="every handoff record gone")
    finally:
        stop_all(procs)
    results = assert_exactly_once(root, names)
    assert any(r.get("adopted_from") for r in results.values())
    assert any(r["id"] and "late" in r["job"] for r in results.values())


@pytest.mark.slurm
def test_three_daemons_200_jobs_on_local_and_slurm_one_killed_one_stopped_every_job_runs_once(tmp_path, slurm_cluster):
    """The issue's proof: three daemons on two shared inboxes (local, Slurm); one is killed -9 and never
    restarted, another is stopped past its lease and resumed; every job runs once and is delivered once."""
    root = tmp_path / "share"
    backends = {
        "local": {"type": "local", "max_parallel": 4, "workdir_root": "work"},
        "slurm": {**slurm_cluster.backend_section(root / "slurm-work"), "max_parallel": 8},
    }
    inboxes = {"inbox-local": "local", "inbox-slurm": "slurm"}
    procs = daemons(root, ["a", "b", "c"], backends=backends, inboxes=inboxes)
    names: list[str] = []

    def drop(count: int) -> None:
        for _ in range(count):
            n = len(names)
            on_slurm = n % 4 == 3  # a quarter of the jobs go through Slurm
            name = f"{'slurm' if on_slurm else 'local'}-{n:03d}"
            drop_counted(root, name, seconds=0.3, inbox="inbox-slurm" if on_slurm else "inbox-local")
            names.append(name)

    for proc in procs.values():
        proc.start()
    try:
        drop(80)
        wait_for(
            lambda: (
                "submitted to backend slurm" in procs["a"].log() and "submitted to backend local" in procs["a"].log()
            ),
            timeout=60,
            what="a to have local and Slurm jobs in flight",
        )
        procs["a"].kill9()
        survivors = lambda: procs["b"].log() + procs["c"].log()  # noqa: E731
        wait_for(lambda: survivors().count("the lease a.1 of") == 2, timeout=60, what="a's leases taken over")
        before = procs["b"].log().count("submitted to backend")
        drop(60)
        wait_for(
            lambda: procs["b"].log().count("submitted to backend") >= before + 4,
            timeout=60,
            what="b to have new jobs in flight",
        )
        procs["b"].proc.send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: procs["c"].log().count("the lease b.1 of") >= 2, timeout=60, what="c to take both of b's leases"
            )
            drop(60)  # jobs arrive while b is stopped
            time.sleep(1.0)
        finally:
            procs["b"].proc.send_signal(signal.SIGCONT)
        wait_for(lambda: procs["b"].log().count("took over its") >= 2, timeout=30, what="b to see it was fenced")
        wait_for(lambda: len(delivered(root)) == len(names), timeout=400, what="every job delivered")
        wait_for(lambda: not share_records(root), timeout=30, what="every handoff record gone")
    finally:
        stop_all(procs)
    assert len(names) == 200
    results = assert_exactly_once(root, names)
    logs = procs["b"].log() + procs["c"].log()
    for lease in ("a.1", "b.1"):
        assert logs.count(f"the lease {lease} of") == 2, f"each of {lease}'s two leases is taken over once"
    adopted = {r["adopted_from"] for r in results.values() if r.get("adopted_from")}
    assert adopted and all(where.endswith(("(a.1)", "(b.1)")) for where in adopted), adopted
    assert "slurm" in {r["backend"] for r in results.values() if r.get("adopted_from")}, "Slurm jobs were taken over"
    assert not [p for p in root.glob("inbox-*/*") if p.name != ".syncd"], "every folder was claimed"


def _uses(pid: str, folder: str) -> bool:
    """Whether process ``pid`` runs in, or holds a file under, a path containing ``folder``."""
    proc = Path("/proc") / pid
    try:
        links = [os.readlink(proc / "cwd")] + [os.readlink(fd) for fd in (proc / "fd").iterdir()]
    except OSError:
        return False
    return any(folder in link for link in links)


def _kill_host(folder: str) -> int:
    """What a host's death does to its local jobs: every runner and job process working under ``folder``."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid() and _uses(proc.name, folder):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue
    return killed


@pytest.mark.parametrize("policy", ["retry", "hold"])
def test_a_local_job_that_died_with_its_host_runs_again_or_is_held_as_the_config_says(tmp_path, policy):
    root = tmp_path / "share"
    private = {"local": {"type": "local", "max_parallel": 4}}  # work folders in each state_dir: not shared
    procs = daemons(root, ["a", "b"], backends=private, takeover={"local_jobs": policy})
    a, b = procs["a"], procs["b"]
    a.start()  # alone at first: the job is surely a's
    try:
        drop_counted(root, "long", seconds=4)
        wait_for(lambda: (root / "ledger.txt").exists(), timeout=30, what="the job to start on a")
        b.start()
        a.kill9()
        assert _kill_host(str(root / ".state-a")) >= 1, "the job's runner died with its host"
        if policy == "retry":
            result = b.result("long", timeout=60)
        else:
            wait_for(lambda: "held" in b.cli("status").stdout, timeout=60, what="the job held on b")
            status = b.cli("status", "long").stdout
            b.cli("retry", "long")
            result = b.result("long", timeout=60)
        status_table = b.cli("status").stdout
    finally:
        stop_all([a, b])
    assert result["state"] == "succeeded" and result["attempts"] == 2, result
    assert result["adopted_from"] == f"{socket.gethostname()} (a.1)" and result["host"] == socket.gethostname()
    assert (root / "ledger.txt").read_text().split() == ["long", "long"], "it ran on a, then once more on b"
    assert "adopted from" in status_table and "daemon a.1" in status_table and "taken over by b.1" in status_table
    if policy == "hold":
        assert "its work folder is not visible from this host" in status


def test_a_reload_leases_an_added_inbox_and_refuses_to_change_takeover(tmp_path):
    root = tmp_path / "share"
    (daemon,) = daemons(root, ["a"]).values()
    daemon.start()
    try:
        config = yaml.safe_load(daemon.config.read_text())
        (root / "inbox2").mkdir()
        config["inboxes"].append({**config["inboxes"][0], "name": "second", "path": "inbox2"})
        daemon.config.write_text(yaml.safe_dump(config))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded: 2 inbox(es)" in daemon.log(), what="the reload")
        wait_for(lambda: (root / "inbox2" / ".syncd" / "leases" / "a.1.json").exists(), what="a lease on the new share")
        drop_counted(root, "via-second", seconds=0, inbox="inbox2")
        assert daemon.result("via-second")["state"] == "succeeded"
        config["takeover"]["lease"] = "30s"
        daemon.config.write_text(yaml.safe_dump(config))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in daemon.log(), what="the refusal")
        assert "takeover: its settings change only at a restart" in daemon.log()
    finally:
        stop_all([daemon])
