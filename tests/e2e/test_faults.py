"""Faults from the machine under a running daemon: full disks (real tiny filesystems), input files
that vanish or cannot be read, a claimed folder moved away. Each test checks the promises in the
README ("What syncd guarantees"): once, nothing lost, nothing partial, transport/space problems wait,
the daemon keeps running."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from syncd.backends.local_runner import read_claim
from tests.support.harness import (
    SyncdProcess,
    drop_job,
    http_get,
    http_port,
    make_job,
    wait_for,
)

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def _need_root(what: str) -> None:
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip(f"{what} needs root (run the tests as root, as CI does)")


@pytest.fixture
def tiny_fs():
    """``tiny_fs(folder, size)`` mounts a real tmpfs of ``size`` on ``folder``; unmounted at the end."""
    _need_root("mounting a tiny filesystem")
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)], check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # a process still holds a file open


def _resize(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)


def _fill(folder: Path) -> Path:
    """Write a filler file until the filesystem is full."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def _jobs(daemon: SyncdProcess) -> list[dict]:
    status, body = http_get(http_port(daemon), "/jobs")
    return json.loads(body) if status == 200 else []


def _job(daemon: SyncdProcess, name: str) -> dict | None:
    return next((j for j in _jobs(daemon) if j["directory"] == name), None)


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and (p.name.endswith((".part", ".syncd-part")))]


# -- 1. full disks -------------------------------------------------------------------------------
def test_outbox_full_disk_waits_then_delivers_once_with_identical_outputs(config_factory, tiny_fs, tmp_path):
    """Promises 3, 4, 5: an outbox too small for the outputs holds the job in collecting with the
    path and 'free space' in its error, never a partial file at a final path; room again → done once."""
    site = config_factory(min_free_space="64KiB")  # pre-flight passes: the outputs are what does not fit
    outbox = tiny_fs(site.parent / "outbox", "2m")
    runs = tmp_path / "runs.txt"
    daemon = SyncdProcess(site).start()
    try:
        drop_job(
            daemon.inbox,
            "big",
            {"command": f"echo run >> {runs}; echo small > small.txt; head -c {3 * MiB} /dev/urandom > big.bin"},
        )
        job = wait_for(
            lambda: (j := _job(daemon, "big")) and j["error"] and "no space" in j["error"] and j,
            what="the collect step to meet the full outbox",
        )
        assert job["state"] == "collecting", job
        assert str(outbox) in job["error"] and "free space" in job["error"], job["error"]
        assert http_get(http_port(daemon), "/healthz")[0] == 200
        delivered = site.parent / "buckets" / "results" / "big"  # the bucket copy the outbox mirrors
        final = outbox / "results" / "big"
        assert not (final / "syncd-result.json").exists()
        for rel, digest in _digests(final).items():  # whatever is at a final path is complete
            assert digest == _digests(delivered)[rel], rel
        _resize(outbox, "64m")
        result = daemon.result("big", timeout=30)
        assert result["state"] == "succeeded" and result["attempts"] == 1
        assert _digests(final) == {**_digests(delivered), "syncd-result.json": _digests(final)["syncd-result.json"]}
        assert (final / "big.bin").stat().st_size == 3 * MiB
        assert runs.read_text() == "run\n", "the job ran more than once"
        assert _parts(outbox) == []
    finally:
        daemon.stop()


def test_state_database_on_a_full_disk_pauses_every_job_then_resumes_each_once(config_factory, tiny_fs, tmp_path):
    """Promises 1, 5: while the SQLite database cannot be written nothing is claimed, submitted or
    collected (no side effect whose state change could not be recorded); the daemon stays up and
    /readyz names the problem; once there is room each job finishes exactly once and the database is intact."""
    site = config_factory()
    state = tiny_fs(site.parent / ".state", "8m")
    work = tmp_path / "work"  # work folders elsewhere: only the database's filesystem fills up
    work.mkdir()
    (state / "backends").symlink_to(work)
    runs_a, runs_b = tmp_path / "runs-a.txt", tmp_path / "runs-b.txt"
    daemon = SyncdProcess(site).start()
    try:
        port = http_port(daemon)
        drop_job(daemon.inbox, "a", {"command": f"echo run >> {runs_a}; sleep 2; echo a > out.txt"})
        wait_for(lambda: (j := _job(daemon, "a")) and j["state"] == "running", what="job a to run")
        filler = _fill(state)
        drop_job(daemon.inbox, "b", {"command": f"echo run >> {runs_b}; echo b > out.txt"})
        status, body = wait_for(
            lambda: (r := http_get(port, "/readyz"))[0] == 503 and "state store" in r[1] and r,
            what="/readyz to report the state store",
        )
        assert "free space" in body and str(state) in body, body
        wait_for(lambda: any(_ended(ctrl) for ctrl in work.glob("local/*/ctrl")), what="job a's command to end")
        assert http_get(port, "/healthz")[0] == 200
        assert (daemon.inbox / "b" / "job.yaml").exists(), "b was claimed although its claim could not be recorded"
        assert _job(daemon, "a")["state"] == "running"
        filler.unlink()
        assert daemon.result("a")["state"] == "succeeded"
        assert daemon.result("b")["state"] == "succeeded"
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, what="/readyz to recover")
    finally:
        daemon.stop()
    assert runs_a.read_text() == "run\n" and runs_b.read_text() == "run\n"
    with sqlite3.connect(state / "syncd.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    again = SyncdProcess(site).start()  # a clean restart: nothing is run or delivered again
    again.stop()
    assert runs_a.read_text() == "run\n" and runs_b.read_text() == "run\n"
    assert "Traceback" not in daemon.log() + again.log()


def test_work_folder_full_during_staging_waits_then_runs_once(config_factory, tiny_fs, tmp_path):
    """Promises 2, 4, 5: inputs that do not fit the backend's work folder keep the job in staging with
    the path and 'free space' in its error; no partial copy is left behind; room again → runs once."""
    site = config_factory()
    work = tiny_fs(site.parent / ".state" / "backends", "2m")
    runs = tmp_path / "runs.txt"
    data = os.urandom(3 * MiB)
    daemon = SyncdProcess(site).start()
    try:
        drop_job(
            daemon.inbox, "staged", {"command": f"echo run >> {runs}; sha256sum data.bin > sum.txt"}, {"data.bin": data}
        )
        job = wait_for(
            lambda: (j := _job(daemon, "staged")) and j["error"] and "no space" in j["error"] and j,
            what="staging to meet the full work folder",
        )
        assert job["state"] == "staging", job
        assert str(work) in job["error"] and "free space" in job["error"], job["error"]
        assert _parts(work) == [], "a partial copy was left on the full disk"
        claimed = daemon.inbox / ".syncd" / "claimed" / job["id"]
        assert (claimed / "data.bin").read_bytes() == data
        assert http_get(http_port(daemon), "/healthz")[0] == 200
        _resize(work, "64m")
        result = daemon.result("staged")
        assert result["state"] == "succeeded" and result["attempts"] == 1
        assert (daemon.outbox / "results" / "staged" / "sum.txt").read_text().split()[0] == hashlib.sha256(
            data
        ).hexdigest()
        assert runs.read_text() == "run\n"
    finally:
        daemon.stop()


# -- 3. inputs the daemon may not read ---------------------------------------------------------------
UNPRIVILEGED = "syncd-test"


@pytest.fixture
def unprivileged_site(tmp_path_factory):
    """A site owned by an unprivileged user (created if missing), for a daemon started as that user."""
    _need_root("running the daemon as another user")
    if subprocess.run(["id", "-u", UNPRIVILEGED], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED], check=True
        )
    # pytest's own temporary folders are private to root: the site needs a parent the user can enter.
    root = Path(
        subprocess.run(
            ["mktemp", "-d", "/tmp/syncd-unprivileged-XXXXXX"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    try:
        from tests.support.harness import make_config

        site = make_config(root / "site")
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED}:{UNPRIVILEGED}", str(root)], check=True)
        yield site
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def test_unreadable_input_is_rejected_with_a_report_naming_it_and_nothing_lost(unprivileged_site):
    """Promises 2, 5: an input the syncd user cannot read is a rejection at claim time (nothing is run)
    whose report names the file and the fix; every file stays, byte for byte."""
    daemon = SyncdProcess(unprivileged_site, user=UNPRIVILEGED).start()
    try:
        job = drop_job(
            daemon.inbox.parent,
            "locked",
            {"command": "cat data.txt secret.dat > out.txt"},
            {"data.txt": "hello\n", "secret.dat": b"\x00top secret\n", "sub/more.txt": "more\n"},
        )
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED}:{UNPRIVILEGED}", str(job)], check=True)
        os.chown(job / "secret.dat", 0, 0)
        os.chmod(job / "secret.dat", 0o600)
        (job / "private").mkdir(mode=0o700)  # a folder it cannot list: its files must not be skipped silently
        (job / "private" / "notes.txt").write_text("hidden\n")
        before = _digests(job)
        os.rename(job, daemon.inbox / "locked")
        failed = daemon.root / "failed" / "locked"
        wait_for(lambda: (failed / "ERROR.txt").exists(), what="the rejection report")
        report = (failed / "ERROR.txt").read_text()
        assert "secret.dat" in report and f"syncd runs as ({UNPRIVILEGED})" in report and "chmod" in report, report
        assert "private/" in report, report
        assert "data.txt" not in report and "more.txt" not in report
        kept = _digests(failed)
        assert {k: v for k, v in kept.items() if k in before} == before
        assert set(kept) - set(before) == {"ERROR.txt", "syncd-error.json"}
        assert not (daemon.outbox / "results" / "locked").exists(), "a rejected job must not run"
        assert http_get(http_port(daemon), "/healthz")[0] == 200
    finally:
        daemon.stop()


# -- 2. an input removed while it is staged -------------------------------------------------------------
def test_input_removed_while_staging_rejects_with_a_report_and_keeps_the_other_files(tmp_path, monkeypatch):
    """Promises 1, 2, 5: the file vanishes between the scan and its copy (a hook makes the race
    deterministic); the job is rejected, never submitted, its report names the file; the rest stays."""
    from syncd.backends import workdir
    from syncd.engine.core import Engine
    from syncd.service.daemon import build_backends, build_storages, load
    from syncd.state.store import Store
    from tests.support.harness import make_config

    config = load(make_config(tmp_path / "site"))
    store = Store(config.db_path)
    engine = Engine(config, store, build_backends(config), build_storages(config))
    engine.prepare()
    inbox = config.inboxes[0]
    real_copy = workdir.copy_verified

    def copy_after_the_user_deleted_b(source, dest):
        if source.name == "b.txt":
            source.unlink()
        return real_copy(source, dest)

    monkeypatch.setattr(workdir, "copy_verified", copy_after_the_user_deleted_b)
    drop_job(inbox.path, "vanish", {"command": "cat a.txt b.txt > out.txt"}, {"a.txt": "a\n", "b.txt": "b\n"})
    assert engine.claim(inbox, inbox.path / "vanish")
    engine.run_until_idle(timeout=20)
    job = store.jobs()[0]
    assert job.state == "rejected" and job.remote_id is None and job.attempts == 1, job
    failed = inbox.failed / "vanish"
    report = (failed / "ERROR.txt").read_text()
    assert "b.txt: disappeared" in report and "put it back" in report, report
    assert (failed / "a.txt").read_text() == "a\n" and (failed / "job.yaml").exists()
    assert not (inbox.outbox / "results" / "vanish").exists()
    drop_job(inbox.path, "next", {"command": "echo fine > out.txt"})  # the engine goes on with other jobs
    assert engine.claim(inbox, inbox.path / "next")
    engine.run_until_idle(timeout=20)
    assert (inbox.outbox / "results" / "next" / "out.txt").read_text() == "fine\n"
    engine.stop(5)
    store.close()


# -- 4. a claimed folder moved by the user --------------------------------------------------------------
def test_claimed_folder_moved_back_into_the_inbox_is_returned_not_run_again(site, tmp_path):
    """Promise 1: the claim renamed the folder to <inbox>/.syncd/claimed/<id>; a user who moves it back
    into the inbox (under any name) while the job runs does not get a second job."""
    runs = tmp_path / "runs.txt"
    daemon = SyncdProcess(site).start()
    try:
        drop_job(daemon.inbox, "once", {"command": f"echo run >> {runs}; sleep 2; echo ok > out.txt"})
        job = wait_for(lambda: (j := _job(daemon, "once")) and j["state"] == "running" and j, what="the job to run")
        claimed = daemon.inbox / ".syncd" / "claimed" / job["id"]
        os.rename(claimed, daemon.inbox / "once-again")
        wait_for(lambda: claimed.exists(), what="the folder to be moved back")
        result = daemon.result("once")
        assert result["state"] == "succeeded"
        wait_for(lambda: (daemon.inbox / ".syncd" / "done" / job["id"] / "job.yaml").exists(), what="the archive")
        assert [j["directory"] for j in _jobs(daemon)] == ["once"], "a second job was created"
        assert not (daemon.inbox / "once-again").exists()
        assert "moved it back" in daemon.log()
    finally:
        daemon.stop()
    assert runs.read_text() == "run\n"


def test_claimed_folder_renamed_before_submission_holds_the_job_until_it_comes_back(config_factory, tiny_fs, tmp_path):
    """Promises 1, 2: the claimed folder renamed while the job waits in staging (its work folder is full):
    the job is held with a reason naming the folder; dropped back into the inbox, it resumes and runs once."""
    site = config_factory()
    work = tiny_fs(site.parent / ".state" / "backends", "2m")
    runs = tmp_path / "runs.txt"
    daemon = SyncdProcess(site).start()
    try:
        drop_job(
            daemon.inbox,
            "moved",
            {"command": f"echo run >> {runs}; wc -c < data.bin > size.txt"},
            {"data.bin": os.urandom(3 * MiB)},
        )
        job = wait_for(
            lambda: (j := _job(daemon, "moved")) and j["error"] and "no space" in j["error"] and j,
            what="the job to wait in staging",
        )
        claimed = daemon.inbox / ".syncd" / "claimed" / job["id"]
        aside = claimed.with_name("mine")
        os.rename(claimed, aside)
        held = wait_for(lambda: (j := _job(daemon, "moved")) and j["state"] == "held" and j, what="the hold")
        assert str(claimed) in held["error"] and "into the inbox" in held["error"], held["error"]
        _resize(work, "64m")
        os.rename(aside, daemon.inbox / "mine")
        result = daemon.result("moved")
        assert result["state"] == "succeeded" and result["id"] == job["id"]
        assert (daemon.outbox / "results" / "moved" / "size.txt").read_text().strip() == str(3 * MiB)
        assert len(_jobs(daemon)) == 1
    finally:
        daemon.stop()
    assert runs.read_text() == "run\n"


# -- 5. the inbox's share goes away and comes back ------------------------------------------------------
def test_inbox_share_unmounted_and_back_makes_jobs_wait_never_held_or_rejected(config_factory, tiny_fs, tmp_path):
    """Promises 1, 4: the inbox is a mount (a bind mount standing in for an SMB/NFS share). While a job
    waits in staging (its work folder is full) the share is unmounted, leaving the empty mount point,
    so the job's claimed folder is gone; the job waits, is not held or rejected, and runs once when the
    share is back."""
    site = config_factory()
    share = tmp_path / "share"
    share.mkdir()
    inbox = site.parent / "inbox"
    subprocess.run(["mount", "--bind", str(share), str(inbox)], check=True)
    mounted = True
    work = tiny_fs(site.parent / ".state" / "backends", "2m")
    runs = tmp_path / "runs.txt"
    daemon = SyncdProcess(site).start()
    try:
        # Built inside the mount and renamed in (a rename cannot cross into a bind mount).
        built = make_job(
            inbox / ".incoming",
            "on-share",
            {"command": f"echo run >> {runs}; wc -c < data.bin > size.txt"},
            {"data.bin": os.urandom(3 * MiB)},
        )
        os.rename(built, inbox / "on-share")
        (inbox / ".incoming").rmdir()
        job = wait_for(
            lambda: (j := _job(daemon, "on-share")) and j["error"] and "no space" in j["error"] and j,
            what="the job to wait in staging",
        )
        subprocess.run(["umount", str(inbox)], check=True)
        mounted = False
        assert not (inbox / ".syncd").exists(), "the mount point is empty: the share is away"
        waiting = wait_for(
            lambda: (j := _job(daemon, "on-share")) and "not reachable" in (j["error"] or "") and j,
            what="the job to notice the share is away",
        )
        assert waiting["state"] == "staging", waiting
        _resize(work, "64m")  # staging could go on now, but the inputs are on the share
        wait_for(lambda: daemon.log().count("not reachable") >= 2, what="a second attempt while the share is away")
        assert _job(daemon, "on-share")["state"] == "staging"
        subprocess.run(["mount", "--bind", str(share), str(inbox)], check=True)
        mounted = True
        result = daemon.result("on-share")
    finally:
        daemon.stop()
        if mounted:
            subprocess.run(["umount", str(inbox)], check=True)
    assert result["state"] == "succeeded" and result["id"] == job["id"]
    assert (daemon.outbox / "results" / "on-share" / "size.txt").read_text().strip() == str(3 * MiB)
    assert runs.read_text() == "run\n"
    events = json.loads(daemon.cli("status", job["id"], "--json").stdout)[0]
    assert not any(e["to"] in ("held", "rejected") for e in events["events"]), events["events"]
    assert (share / ".syncd" / "done" / job["id"] / "data.bin").stat().st_size == 3 * MiB, "the user's files kept"


def _ended(ctrl: Path) -> bool:
    """Whether the local job of ``ctrl`` has ended (its runner recorded how)."""
    try:
        return read_claim(ctrl).status is not None
    except FileNotFoundError:
        return False
