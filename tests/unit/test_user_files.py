"""syncd never writes or removes a user's file in the inbox or failed/ (issue 16, class 1): the journal and
the rejection reports are replaced or removed only once proven syncd's own; otherwise they go beside."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from syncd.fsutil import rename_noreplace
from syncd.intake.spool import Spool
from syncd.state import journal
from syncd.state.store import Job


@pytest.fixture
def job(tmp_path) -> Job:
    fields = {name: None for name in Job.__dataclass_fields__}
    fields.update(
        id="20260101-000000-abcdef",
        name="j",
        dir_name="j",
        state="running",
        backend="local",
        updated=0.0,
        spool_path=str(tmp_path / "inbox" / ".syncd" / "claimed" / "x"),
    )
    return Job(**fields)


@pytest.fixture
def inbox(tmp_path) -> Path:
    (tmp_path / "inbox" / ".syncd" / "tmp").mkdir(parents=True)
    return tmp_path / "inbox"


def _update(inbox: Path, job: Job) -> None:
    journal.update(inbox, job, None, inbox / ".syncd" / "tmp")


def test_the_journal_is_written_rewritten_and_removed_when_it_is_syncds(inbox, job):
    _update(inbox, job)
    path = inbox / "j.status.txt"
    assert path.read_text().startswith(f"# syncd status of job {job.id};") and "state:      running" in path.read_text()
    _update(inbox, replace(job, state="collecting"))
    assert "state:      collecting" in path.read_text()
    _update(inbox, replace(job, state="succeeded"))
    assert not path.exists()
    assert list((inbox / ".syncd" / "tmp").iterdir()) == [], "no scratch file is left"


@pytest.mark.parametrize(
    "content",
    [
        b"my own notes on job j\n",
        b"job:        j\nid:         20260101-000000-abcdef\n",  # looks like a journal, but is not whole
        b"# syncd status of job 20991231-235959-ffffff; written by syncd and removed when the job has finished\n",
    ],
)
def test_a_users_file_at_the_journal_path_is_never_written_nor_removed(inbox, job, content):
    path = inbox / "j.status.txt"
    path.write_bytes(content)
    before = os.stat(path)
    for state in ("claimed", "running", "succeeded"):
        _update(inbox, replace(job, state=state))
    assert path.read_bytes() == content and os.stat(path).st_ino == before.st_ino


def test_a_journal_the_user_replaced_while_the_job_ran_is_left_when_it_ends(inbox, job):
    _update(inbox, job)
    path = inbox / "j.status.txt"
    path.write_text("the user took this name over\n")
    _update(inbox, replace(job, state="collecting"))
    _update(inbox, replace(job, state="failed"))
    assert path.read_text() == "the user took this name over\n"


def test_a_folder_or_link_at_the_journal_path_is_left_alone(inbox, job, tmp_path):
    (inbox / "j.status.txt").mkdir()
    (inbox / "j.status.txt" / "inside").write_text("mine")
    target = tmp_path / "elsewhere.txt"
    target.write_text("linked")
    other = replace(job, id="20260101-000000-123456", dir_name="k")
    (inbox / "k.status.txt").symlink_to(target)
    for state in ("running", "succeeded"):
        _update(inbox, replace(job, state=state))
        _update(inbox, replace(other, state=state))
    assert (inbox / "j.status.txt" / "inside").read_text() == "mine"
    assert os.readlink(inbox / "k.status.txt") == str(target) and target.read_text() == "linked"


def test_a_journal_of_an_older_syncd_is_still_recognised_and_removed(inbox, job):
    legacy = journal.render(job, None).split("\n", 1)[1]  # without the header line
    (inbox / "j.status.txt").write_text(legacy)
    _update(inbox, replace(job, state="succeeded"))
    assert not (inbox / "j.status.txt").exists()


def test_start_up_removes_only_syncds_own_half_written_journals(inbox):
    scratch = inbox / ".syncd" / "tmp" / f"{'a' * 32}.syncd-journal.tmp"
    scratch.write_text("# syncd status of job x")
    users = {
        inbox / f".notes.{'b' * 32}.syncd-journal.tmp": "my notes, not a journal",
        inbox / ".x.syncd-journal.tmp": "job: looks like one, but not named like syncd's",
    }
    for path, text in users.items():
        path.write_text(text)
    journal.remove_leftovers(inbox, inbox / ".syncd" / "tmp")
    assert not scratch.exists()
    assert all(path.read_text() == text for path, text in users.items())


# -- failed/ -----------------------------------------------------------------------------------------------------
@pytest.fixture
def spool(tmp_path) -> Spool:
    inbox = SimpleNamespace(
        path=tmp_path / "inbox", spool_dir=tmp_path / "inbox" / ".syncd", failed=tmp_path / "failed", name="default"
    )
    made = Spool(inbox)
    made.prepare()
    return made


def _claimed(spool: Spool, files: dict[str, str]) -> Path:
    folder = spool.claimed / "20260101-000000-abcdef"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


REPORT = {"state": "rejected", "id": "20260101-000000-abcdef", "problems": ["x"], "syncd_version": "0"}


def test_a_rejection_never_overwrites_any_of_the_users_report_names(spool):
    users = {
        "job.yaml": "command: [\n",
        "ERROR.txt": "mine 1",
        "ERROR-syncd.txt": "mine 2",
        "syncd-error.json": "{}",
        "syncd-error-20260101-000000-abcdef.json": '{"mine": 3}',
    }
    dest = spool.reject(_claimed(spool, users), "j", "syncd could not accept the job 'j' (id x).\n", REPORT)
    assert {name: (dest / name).read_text() for name in users} == users
    assert (dest / "ERROR-syncd-20260101-000000-abcdef.txt").read_text().startswith("syncd could not accept")
    assert json.loads((dest / "syncd-error-20260101-000000-abcdef-2.json").read_text())["state"] == "rejected"


def test_a_folder_rejected_again_gets_its_old_reports_replaced_not_a_second_set(spool):
    first = spool.reject(
        _claimed(spool, {"job.yaml": "command: [\n"}), "j", "syncd could not accept the job 'j'\n", REPORT
    )
    os.rename(first, spool.claimed / "20260101-000000-abcdef")
    second = spool.reject(
        spool.claimed / "20260101-000000-abcdef",
        "j",
        "syncd could not accept the job 'j' (2)\n",
        dict(REPORT, problems=["y"]),
    )
    assert sorted(os.listdir(second)) == ["ERROR.txt", "job.yaml", "syncd-error.json"]
    assert json.loads((second / "syncd-error.json").read_text())["problems"] == ["y"]


def test_a_users_empty_folder_in_failed_is_never_replaced_by_a_rejected_one(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "theirs").mkdir()
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "theirs", tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and (tmp_path / "theirs").is_dir()


def test_the_journal_names_the_config_in_its_cancel_command(job):
    text = journal.render(replace(job, state="running"), None, Path("/etc/syncd/lab.yaml"))
    assert f"or run: syncd cancel -c /etc/syncd/lab.yaml {job.id}\n" in text


def test_update_tells_the_caller_which_path_it_left_alone_and_only_that(inbox, job):
    tmp = inbox / ".syncd" / "tmp"
    assert journal.update(inbox, job, None, tmp) is None, "its own journal, written"
    other = replace(job, id="20260101-000000-654321", dir_name="mine")
    (inbox / "mine.status.txt").write_text("a user's notes\n")
    assert journal.update(inbox, other, None, tmp) == inbox / "mine.status.txt"
    assert "is a file that is not syncd's" in journal.left_alone_warning(inbox / "mine.status.txt")
