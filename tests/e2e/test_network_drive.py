"""Inbox, failed/ and outbox on a real network filesystem (sshfs over a loopback SSH server).

The export's folder is the server's view; each sshfs mount of it is another host's. The daemons read
and write only through their mount, with a client-side cache, no inotify for the other hosts'
changes, renames done by the server, and a mount that can hang or drop.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.support.harness import SyncdProcess, drop_job, http_get, http_port, make_config, wait_for
from tests.support.share import Share

pytestmark = pytest.mark.e2e


def _layout(share: Share) -> Path:
    """A fresh inbox, outbox and failed/ in the export, made on the server side."""
    folder = share.folder()
    for name in ("inbox", "outbox", "failed"):
        (folder / name).mkdir()
    return folder


def _site(root: Path, shared: Path, **overrides) -> Path:
    """A daemon's config on this host (state, buckets: local) with its inbox, outbox and failed/ on ``shared``."""
    options = {"settle": "0.5s", "poll_interval": "0.5s", "rescan": "60s", **overrides}
    return make_config(
        root,
        path=str(shared / "inbox"),
        outbox=str(shared / "outbox"),
        failed=str(shared / "failed"),
        **options,
    )


def _result(folder: Path, name: str, timeout: float = 30.0) -> dict:
    record = folder / "outbox" / "results" / name / "syncd-result.json"
    wait_for(record.exists, timeout=timeout, what=f"the result record of {name} (server side)")
    return json.loads(record.read_text())


def test_jobs_from_other_hosts_are_detected_settled_claimed_rejected_and_delivered(share, tmp_path):
    folder = _layout(share)
    host_a = share.mount(tmp_path / "host-a") / folder.name
    host_b = share.mount(tmp_path / "host-b") / folder.name
    # Longer than the client's attribute cache (the kernel's 1 s here; sshfs's own is off).
    daemon = SyncdProcess(_site(tmp_path / "site", host_a, settle="2s")).start()
    try:
        assert "(polling observer)" in daemon.log(), daemon.log()

        # From the server side: a folder moved in with one rename.
        drop_job(folder / "inbox", "from-server", {"command": "cat in.txt > out.txt"}, {"in.txt": "server\n"})

        # From another host: a copy that takes longer than `settle`, written piece by piece.
        slow = host_b / "inbox" / "slow-copy"
        slow.mkdir()
        (slow / "job.yaml").write_text("command: cat in.txt > out.txt\n")
        pieces = [f"piece {n}\n" for n in range(15)]
        with open(slow / "in.txt", "w") as out:
            for piece in pieces:
                out.write(piece)
                out.flush()
                time.sleep(0.4)
                assert (folder / "inbox" / "slow-copy").is_dir(), "claimed while the other host was still writing"

        # From another host, a job that cannot be accepted.
        drop_job(host_b / "inbox", "bad", "command: [unclosed\n", {"input.dat": b"keep me"})

        result = _result(folder, "from-server")
        assert result["state"] == "succeeded", result
        assert (folder / "outbox" / "results" / "from-server" / "out.txt").read_text() == "server\n"

        result = _result(folder, "slow-copy")
        assert result["state"] == "succeeded", result
        assert (folder / "outbox" / "results" / "slow-copy" / "out.txt").read_text() == "".join(pieces)
        # The other host sees the delivery too.
        assert (host_b / "outbox" / "results" / "slow-copy" / "out.txt").read_text() == "".join(pieces)

        rejected = folder / "failed" / "bad"
        wait_for((rejected / "syncd-error.json").exists, timeout=20, what="bad to be rejected into failed/")
        assert (rejected / "job.yaml").read_text() == "command: [unclosed\n"
        assert (rejected / "input.dat").read_bytes() == b"keep me"
        assert (host_b / "failed" / "bad" / "ERROR.txt").read_text().startswith("syncd could not accept the job")
        assert sorted(p.name for p in (folder / "inbox").iterdir() if not p.name.startswith(".")) == []
    finally:
        daemon.stop()


def test_two_daemons_on_two_mounts_share_one_inbox_and_run_each_job_once(share, tmp_path):
    folder = _layout(share)
    runs = tmp_path / "runs"
    runs.mkdir()
    daemons = [
        SyncdProcess(_site(tmp_path / f"site-{host}", share.mount(tmp_path / host) / folder.name))
        for host in ("host-a", "host-b")
    ]
    try:
        for daemon in daemons:
            daemon.start()
        names = [f"job-{n}" for n in range(8)]
        for name in names:
            command = f"echo ran >> {runs / name} && cat in.txt > out.txt"
            drop_job(folder / "inbox", name, {"command": command}, {"in.txt": f"{name}\n"})
        for name in names:
            assert _result(folder, name)["state"] == "succeeded"
            assert (folder / "outbox" / "results" / name / "out.txt").read_text() == f"{name}\n"
        for daemon in daemons:
            daemon.stop()
        assert {name: (runs / name).read_text() for name in names} == {name: "ran\n" for name in names}
        assert sorted(p.name for p in (folder / "outbox" / "results").iterdir()) == sorted(names)
        assert list((folder / "failed").iterdir()) == []
        claims = [re.findall(r"claimed job directory .*/inbox/(\S+)", daemon.log()) for daemon in daemons]
        assert sorted(claims[0] + claims[1]) == sorted(names), claims
    finally:
        for daemon in daemons:
            daemon.stop()


@pytest.mark.slow
def test_a_hung_then_dropped_mount_pauses_intake_and_everything_resumes(share, tmp_path):
    folder = _layout(share)
    point = share.mount(tmp_path / "host-a")
    runs = tmp_path / "runs"
    runs.mkdir()
    daemon = SyncdProcess(_site(tmp_path / "site", point / folder.name)).start()

    def job(name: str, seconds: float = 0) -> None:
        command = f"echo ran >> {runs / name} && sleep {seconds} && cat in.txt > out.txt"
        drop_job(folder / "inbox", name, {"command": command}, {"in.txt": f"{name}\n"})

    try:
        job("before")
        assert _result(folder, "before")["state"] == "succeeded"
        port = http_port(daemon)

        # The server stops answering: every call on the mount blocks, so nothing can be claimed.
        share.hang(point)
        job("while-hung")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert (folder / "inbox" / "while-hung").is_dir(), "claimed through a hung mount"
            # Only the intake of that inbox waits: the daemon's main loop keeps going.
            assert http_get(port, "/healthz")[0] == 200, daemon.log()
            time.sleep(0.2)
        share.resume(point)
        assert _result(folder, "while-hung")["state"] == "succeeded"

        # The connection is lost while a job runs: the mount goes away, intake pauses, and everything resumes
        # once it is mounted again (a new mount, on a new device number).
        job("running", seconds=3)
        wait_for((runs / "running").exists, timeout=20, what="the job to start")
        share.drop(point)
        wait_for(lambda: "is not reachable; pausing intake" in daemon.log(), timeout=20, what="intake to pause")
        job("while-dropped")
        share.umount(point)
        share.mount(point)
        wait_for(lambda: "is back; resuming" in daemon.log(), timeout=20, what="intake to resume")
        assert _result(folder, "while-dropped")["state"] == "succeeded"
        assert _result(folder, "running")["state"] == "succeeded"
        assert (folder / "outbox" / "results" / "running" / "out.txt").read_text() == "running\n"

        names = ["before", "while-hung", "running", "while-dropped"]
        assert {name: (runs / name).read_text() for name in names} == {name: "ran\n" for name in names}
        assert sorted(p.name for p in (folder / "outbox" / "results").iterdir()) == sorted(names)
        assert list((folder / "failed").iterdir()) == []
        done = folder / "inbox" / ".syncd" / "done"
        # The result record comes before the archive: the last folder may still be on its way.
        wait_for(lambda: len(list(done.iterdir())) == len(names), timeout=10, what="every claimed folder archived")
    finally:
        share.resume(point)
        daemon.stop()
