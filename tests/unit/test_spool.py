"""syncd.intake.spool: claim, reject, archive — every move atomic, user files never modified."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from syncd.config import InboxConfig
from syncd.intake.spool import Spool, SpoolError, unique_path


def inbox_config(tmp_path: Path, **overrides) -> InboxConfig:
    values = {
        "name": "lab",
        "path": "inbox",
        "outbox": "outbox",
        "failed": "failed",
        "backend": "local",
        "storage": "local",
        "bucket": "results",
    }
    values.update(overrides)
    return InboxConfig.model_validate(values, context={"base_dir": tmp_path})


@pytest.fixture
def spool(tmp_path) -> Spool:
    s = Spool(inbox_config(tmp_path))
    s.prepare()
    return s


def tree(root: Path) -> dict[str, str]:
    """relpath → sha256 of every file (symlinks as their target text), plus folders."""
    result = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            result[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            result[rel] = "dir"
        else:
            result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def make_job(parent: Path, name: str = "job1") -> Path:
    job = parent / name
    (job / "data" / "deep").mkdir(parents=True)
    (job / "job.yaml").write_text("command: run\n")
    (job / "data" / "a.csv").write_bytes(b"1,2,3\n")
    (job / "data" / "deep" / "b.bin").write_bytes(bytes(range(256)) * 10)
    (job / "ünï cødé.txt").write_text("text ✓")
    (job / "empty").write_bytes(b"")
    os.symlink("data/a.csv", job / "link")
    return job


def other_filesystem_dir(than: Path) -> Path:
    """A fresh folder on a filesystem other than ``than``'s (tmpfs /dev/shm on Linux)."""
    here = os.stat(than).st_dev
    for candidate in ("/dev/shm", f"/run/user/{os.getuid()}", "/var/tmp", "/tmp"):
        try:
            if os.stat(candidate).st_dev != here and os.access(candidate, os.W_OK):
                path = Path(candidate) / f"syncd-test-{uuid.uuid4().hex}"
                path.mkdir()
                return path
        except OSError:
            continue
    raise AssertionError("this host has no second writable filesystem to test cross-device moves")


def test_prepare_creates_folders(tmp_path):
    s = Spool(inbox_config(tmp_path))
    s.prepare()
    for path in (
        tmp_path / "inbox",
        tmp_path / "inbox" / ".syncd" / "claimed",
        tmp_path / "inbox" / ".syncd" / "done",
        tmp_path / "failed",
    ):
        assert path.is_dir()
    s.prepare()  # idempotent


def test_prepare_refuses_spool_on_other_filesystem(tmp_path):
    elsewhere = other_filesystem_dir(tmp_path)
    try:
        s = Spool(inbox_config(tmp_path, spool=str(elsewhere / "spool")))
        with pytest.raises(SpoolError, match="not on the same filesystem"):
            s.prepare()
    finally:
        shutil.rmtree(elsewhere)


def test_claim_is_a_rename(spool, tmp_path):
    job = make_job(spool.inbox.path)
    before = tree(job)
    inode = job.stat().st_ino
    dest = spool.claim(job, "id-1")
    assert dest == spool.claimed / "id-1"
    assert not job.exists()
    assert tree(dest) == before
    assert dest.stat().st_ino == inode
    assert os.readlink(dest / "link") == "data/a.csv"


def test_claim_of_vanished_folder_raises_file_not_found(spool):
    with pytest.raises(FileNotFoundError):
        spool.claim(spool.inbox.path / "never-there", "id-1")
    assert list(spool.claimed.iterdir()) == []


def test_claim_twice_second_loses(spool):
    job = make_job(spool.inbox.path)
    spool.claim(job, "id-1")
    with pytest.raises(FileNotFoundError):
        spool.claim(job, "id-2")
    assert [p.name for p in spool.claimed.iterdir()] == ["id-1"]


def test_reject_writes_reports_and_keeps_user_files(spool):
    job = spool.claim(make_job(spool.inbox.path), "id-1")
    before = tree(job)
    report = {"job": "job1", "problems": ["job.yaml:1: command: required but missing; add it"], "name": "données"}
    dest = spool.reject(job, "job1", "This job was not run.\nProblem: ✗\n", report)
    assert dest == spool.inbox.failed / "job1"
    assert not job.exists()
    after = tree(dest)
    for rel, digest in before.items():
        assert after[rel] == digest, rel
    assert set(after) - set(before) == {"ERROR.txt", "syncd-error.json"}
    assert (dest / "ERROR.txt").read_text(encoding="utf-8") == "This job was not run.\nProblem: ✗\n"
    assert json.loads((dest / "syncd-error.json").read_text(encoding="utf-8")) == report
    assert not [p for p in dest.iterdir() if p.name.endswith(".tmp")]


def test_reject_does_not_overwrite_user_error_txt(spool):
    source = make_job(spool.inbox.path)
    (source / "ERROR.txt").write_text("my own lab notes")
    job = spool.claim(source, "id-1")
    dest = spool.reject(job, "job1", "syncd's explanation", {"problems": []})
    assert (dest / "ERROR.txt").read_text() == "my own lab notes"
    assert (dest / "ERROR-syncd.txt").read_text() == "syncd's explanation"
    assert (dest / "syncd-error.json").is_file()


def test_reject_again_replaces_its_own_previous_report(spool):
    source = make_job(spool.inbox.path)
    (source / "ERROR.txt").write_text("old syncd report")
    (source / "syncd-error.json").write_text('{"state": "rejected", "syncd_version": "0.1.0", "problems": ["old"]}')
    job = spool.claim(source, "id-1")
    dest = spool.reject(job, "job1", "new report", {"problems": ["new"]})
    assert (dest / "ERROR.txt").read_text() == "new report"
    assert json.loads((dest / "syncd-error.json").read_text()) == {"problems": ["new"]}
    assert not (dest / "ERROR-syncd.txt").exists()


def test_reject_name_collision_gets_suffix(spool):
    dests = []
    for n in range(3):
        job = spool.claim(make_job(spool.inbox.path), f"id-{n}")
        dests.append(spool.reject(job, "job1", f"report {n}", {"n": n}))
    assert [d.name for d in dests] == ["job1", "job1-2", "job1-3"]
    assert [(d / "ERROR.txt").read_text() for d in dests] == ["report 0", "report 1", "report 2"]


def test_reject_into_failed_on_other_filesystem_copies_then_removes(tmp_path):
    elsewhere = other_filesystem_dir(tmp_path)
    try:
        s = Spool(inbox_config(tmp_path, failed=str(elsewhere / "failed")))
        s.prepare()
        job = s.claim(make_job(s.inbox.path), "id-1")
        before = tree(job)
        dest = s.reject(job, "job1", "report", {})
        assert dest == elsewhere / "failed" / "job1"
        assert not job.exists()
        after = tree(dest)
        assert {k: v for k, v in after.items() if k in before} == before
        assert [p.name for p in dest.parent.iterdir()] == ["job1"]  # no .syncd-part left
    finally:
        shutil.rmtree(elsewhere)


def test_archive_moves_into_done(spool):
    job = spool.claim(make_job(spool.inbox.path), "id-1")
    before = tree(job)
    dest = spool.archive(job, "id-1")
    assert dest == spool.done / "id-1"
    assert not job.exists()
    assert tree(dest) == before
    assert spool.archive(dest, "id-1") == dest  # already archived
    assert spool.archive(spool.claimed / "gone", "id-9") == spool.done / "id-9"  # nothing to move
    assert not (spool.done / "id-9").exists()


def test_remove_deletes_claimed_folder(spool):
    job = spool.claim(make_job(spool.inbox.path), "id-1")
    spool.remove(job)
    assert not job.exists()


def test_unique_path_counts_up_and_respects_dangling_links(tmp_path):
    assert unique_path(tmp_path, "x") == tmp_path / "x"
    (tmp_path / "x").mkdir()
    (tmp_path / "x-2").symlink_to(tmp_path / "nowhere")
    assert unique_path(tmp_path, "x") == tmp_path / "x-3"
