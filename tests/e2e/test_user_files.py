"""A real daemon never writes or removes a user's file in the inbox (issue 16, class 1): a file or folder
the user named ``<job>.status.txt`` outlives the job byte for byte, even one that took the name over
from syncd's journal while the job ran."""

from __future__ import annotations

import os

import pytest

from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    proc = SyncdProcess(make_config(tmp_path_factory.mktemp("userfiles") / "site", max_parallel=4)).start()
    yield proc
    proc.stop()


def test_the_users_status_txt_beside_a_job_is_kept_byte_for_byte(daemon):
    mine = daemon.inbox / "j1.status.txt"
    mine.write_bytes(b"my own status notes\n")
    inode = mine.stat().st_ino
    # Long enough for its journal to fall due (a job that ends sooner has none to write).
    drop_job(daemon.inbox, "j1", {"command": "sleep 2; echo ok > ok.txt"})
    assert daemon.result("j1")["state"] == "succeeded"
    wait_for(lambda: daemon.cli("status", "--json", "j1").stdout.count('"state": "succeeded"'), what="finished")
    assert mine.read_bytes() == b"my own status notes\n" and mine.stat().st_ino == inode
    assert "is a file that is not syncd's: it is left alone" in daemon.log()


def test_a_journal_the_user_overwrote_while_the_job_ran_is_not_removed(daemon):
    journal = daemon.inbox / "j2.status.txt"
    drop_job(daemon.inbox, "j2", {"command": "sleep 2; echo ok > ok.txt"})
    wait_for(lambda: journal.exists() and "state:      running" in journal.read_text(), what="a running journal")
    journal.write_text("mine now\n")
    assert daemon.result("j2")["state"] == "succeeded"
    wait_for(
        lambda: (
            (daemon.inbox / ".syncd" / "done").exists()
            and any(p.name for p in (daemon.inbox / ".syncd" / "done").iterdir())
        ),
        what="the folder to be archived",
    )
    assert journal.read_text() == "mine now\n"


def test_a_folder_named_like_the_journal_is_left_alone(daemon):
    folder = daemon.inbox / "j3.status.txt"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    drop_job(daemon.inbox, "j3", {"command": "echo ok > ok.txt"})
    assert daemon.result("j3")["state"] == "succeeded"
    assert sorted(os.listdir(folder)) == ["inside.txt"] and (folder / "inside.txt").read_text() == "kept"
