"""syncd.intake.watch: settle tracking, snapshots, filesystem detection, the inbox watcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.config import InboxConfig
from syncd.intake.watch import (
    InboxWatcher,
    SettleTracker,
    attribute_cache_seconds,
    cache_warning,
    ext4_without_journal,
    filesystem_type,
    slow_create_warnings,
    snapshot,
    wants_polling,
)
from tests.support.harness import wait_for

A = (("f", 0o100000, 1, 1),)
B = (("f", 0o100000, 2, 2),)


# -- SettleTracker ------------------------------------------------------------------


def test_observe_settles_after_two_identical_snapshots_settle_apart():
    tracker = SettleTracker(settle=2.0)
    assert tracker.observe("job", A, 10.0) is False
    assert tracker.observe("job", A, 11.0) is False
    assert tracker.observe("job", A, 11.999) is False
    assert tracker.observe("job", A, 12.0) is True


def test_observe_single_snapshot_never_settles_even_late():
    tracker = SettleTracker(settle=2.0)
    assert tracker.observe("job", A, 1000.0) is False


def test_observe_change_restarts_quiet_period():
    tracker = SettleTracker(settle=2.0)
    tracker.observe("job", A, 0.0)
    assert tracker.observe("job", B, 1.5) is False  # changed: quiet period starts at 1.5
    assert tracker.observe("job", B, 3.0) is False
    assert tracker.observe("job", A, 3.4) is False  # changed back: restarts again
    assert tracker.observe("job", A, 5.3) is False
    assert tracker.observe("job", A, 5.4) is True


def test_observe_ready_marker_settles_at_once():
    tracker = SettleTracker(settle=60.0)
    assert tracker.observe("job", A, 0.0, ready_marker=True) is True


def test_touch_restarts_quiet_period():
    tracker = SettleTracker(settle=2.0)
    tracker.observe("job", A, 0.0)
    tracker.touch("job")
    assert tracker.observe("job", A, 2.0) is False  # first snapshot after the touch
    assert tracker.observe("job", A, 3.9) is False
    assert tracker.observe("job", A, 4.0) is True


def test_tracker_names_add_and_forget():
    tracker = SettleTracker(settle=1.0)
    tracker.add("b")
    tracker.add("a")
    tracker.observe("a", A, 0.0)
    tracker.add("a")  # add keeps existing state
    assert tracker.names() == ["a", "b"]
    assert tracker.observe("a", A, 1.0) is True
    tracker.forget("a")
    tracker.forget("never-added")
    assert tracker.names() == ["b"]


def test_hint_once_is_true_only_the_first_time():
    tracker = SettleTracker(settle=1.0)
    assert tracker.hint_once("job") is True
    assert tracker.hint_once("job") is False
    assert tracker.hint_once("other") is True


# -- snapshot ---------------------------------------------------------------------------


def test_snapshot_changes_when_a_file_grows(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"x" * 10)
    first = snapshot(tmp_path)
    assert snapshot(tmp_path) == first
    with open(tmp_path / "data.bin", "ab") as out:
        out.write(b"more")
    assert snapshot(tmp_path) != first


def test_snapshot_changes_when_a_nested_file_is_added(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "one.txt").write_text("1")
    first = snapshot(tmp_path)
    (tmp_path / "a" / "b" / "two.txt").write_text("")
    second = snapshot(tmp_path)
    assert second != first
    assert any(entry[0] == os.path.join("a", "b", "two.txt") for entry in second)


def test_snapshot_does_not_follow_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    job = tmp_path / "job"
    job.mkdir()
    (job / "link").symlink_to(outside)
    first = snapshot(job)
    (outside / "big.bin").write_bytes(b"x" * 100)
    assert snapshot(job) == first
    assert [entry[0] for entry in first] == ["link"]


# -- filesystem type ----------------------------------------------------------------------


def fake_mounts(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "mounts"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_filesystem_type_longest_mount_point_wins(tmp_path):
    mounts = fake_mounts(
        tmp_path,
        [
            "/dev/vda / ext4 rw 0 0",
            "server:/export /mnt/lab nfs4 rw 0 0",
            "/dev/vdb /mnt/lab/scratch ext4 rw 0 0",
            "//nas/share /mnt/labshare cifs rw 0 0",
            "user@host: /mnt/my\\040drive fuse.sshfs rw 0 0",
            "bad line",
        ],
    )
    assert filesystem_type(Path("/mnt/lab/inbox"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/lab"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/lab/scratch/inbox"), mounts) == "ext4"
    assert filesystem_type(Path("/mnt/labshare/x"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/lab2/x"), mounts) == "ext4"  # not under /mnt/lab
    assert filesystem_type(Path("/mnt/my drive/inbox"), mounts) == "fuse.sshfs"
    assert filesystem_type(Path("/srv/inbox"), mounts) == "ext4"


def _ext4_info(tmp_path: Path, options: dict[str, str]) -> str:
    """A stand-in for /proc/fs/ext4: each device's full option list."""
    for device, listed in options.items():
        (tmp_path / "ext4" / device).mkdir(parents=True)
        (tmp_path / "ext4" / device / "options").write_text(listed.replace(",", "\n") + "\n")
    return str(tmp_path / "ext4")


def test_ext4_without_a_journal_is_told_by_its_listed_options(tmp_path):
    mounts = fake_mounts(
        tmp_path,
        [
            "/dev/vda / ext4 rw,relatime 0 0",
            "/dev/vdb /srv ext4 rw,relatime 0 0",
            "/dev/vdc /data xfs rw 0 0",
            "/dev/vdd /unlisted ext4 rw 0 0",
        ],
    )
    info = _ext4_info(
        tmp_path,
        {
            "vda": "rw,delalloc,nojournal_checksum,barrier,auto_da_alloc",
            "vdb": "rw,delalloc,journal_checksum,barrier,data=ordered",
        },
    )
    assert ext4_without_journal(Path("/var/tmp/state"), mounts, info) == "vda"
    assert ext4_without_journal(Path("/srv/inbox"), mounts, info) is None, "journaled (data= is listed)"
    assert ext4_without_journal(Path("/data/inbox"), mounts, info) is None, "not ext4"
    assert ext4_without_journal(Path("/unlisted/inbox"), mounts, info) is None, "cannot be told: no warning"
    warnings = slow_create_warnings(
        {"the state folder": Path("/var/lib/syncd"), "inbox a": Path("/home/in"), "inbox b": Path("/srv/in")},
        mounts,
        info,
    )
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the state folder /var/lib/syncd, inbox a /home/in are on vda, an ext4")
    assert "tune2fs -O has_journal" in warnings[0] and "/srv/in" not in warnings[0]
    assert slow_create_warnings({"inbox b": Path("/srv/in")}, mounts, info) == []


def test_filesystem_type_missing_mounts_file_is_none(tmp_path):
    assert filesystem_type(tmp_path, str(tmp_path / "no-such-mounts")) is None


def test_filesystem_type_real_mount_table_knows_tmp_path(tmp_path):
    assert isinstance(filesystem_type(tmp_path), str)


@pytest.mark.parametrize(
    "fstype, polling",
    [
        ("nfs4", True),
        ("nfs", True),
        ("cifs", True),
        ("smb3", True),
        ("fuse.sshfs", True),
        ("fuse", True),
        ("ext4", False),
        ("xfs", False),
        ("btrfs", False),
        ("tmpfs", False),
        ("overlay", False),
        (None, False),
    ],
)
def test_wants_polling_for_network_filesystems(fstype, polling):
    assert wants_polling(fstype) is polling


def test_wants_polling_from_fake_mount_table(tmp_path):
    mounts = fake_mounts(tmp_path, ["/dev/vda / ext4 rw 0 0", "srv:/x /net nfs4 rw 0 0"])
    assert wants_polling(filesystem_type(Path("/net/inbox"), mounts)) is True
    assert wants_polling(filesystem_type(Path("/home/inbox"), mounts)) is False


# -- InboxWatcher ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """on_settled that records what it was given and answers from a list (default True)."""

    def __init__(self, answers: list[bool] | None = None) -> None:
        self.calls: list[tuple[str, Path]] = []
        self.answers = list(answers or [])

    def __call__(self, inbox: InboxConfig, path: Path) -> bool:
        self.calls.append((inbox.name, path))
        return self.answers.pop(0) if self.answers else True

    @property
    def names(self) -> list[str]:
        return [path.name for _, path in self.calls]


@pytest.fixture
def inbox(tmp_path) -> InboxConfig:
    config = InboxConfig.model_validate(
        {
            "name": "lab",
            "path": "inbox",
            "outbox": "outbox",
            "failed": "failed",
            "backend": "local",
            "storage": "local",
            "bucket": "results",
            "settle": "2s",
            "observer": "polling",
            # The polling observer must not interfere: the test drives rescan/check itself.
            "poll_interval": "1h",
            "rescan": "1h",
        },
        context={"base_dir": tmp_path},
    )
    config.path.mkdir()
    return config


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_watcher(inbox, clock):
    watchers = []

    def make(on_settled) -> InboxWatcher:
        watcher = InboxWatcher(inbox, on_settled, clock=clock)
        watchers.append(watcher)
        return watcher

    yield make
    for watcher in watchers:
        watcher.stop()


def job_dir(inbox: InboxConfig, name: str, manifest: bool = True, files: dict[str, str] | None = None) -> Path:
    path = inbox.path / name
    path.mkdir(parents=True)
    if manifest:
        (path / "job.yaml").write_text("command: run\n")
    for rel, text in (files or {}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def test_watcher_uses_configured_polling_mode(inbox, make_watcher):
    assert make_watcher(Recorder()).mode == "polling"


def test_check_hands_over_job_after_quiet_period(inbox, clock, make_watcher):
    job = job_dir(inbox, "job1", files={"data/a.txt": "a"})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 1.9
    watcher.check()
    assert recorder.calls == []
    clock.now = 2.0
    watcher.check()
    assert recorder.calls == [("lab", job)]
    clock.now = 10.0
    watcher.check()
    assert len(recorder.calls) == 1  # handed over once, then forgotten
    assert "job1" not in watcher.tracker.names()


def test_check_never_hands_over_folder_without_manifest(inbox, clock, make_watcher):
    job = job_dir(inbox, "nomanifest", manifest=False, files={"a.txt": "a"})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    for clock.now in (0.0, 5.0, 100.0, 1000.0):
        watcher.check()
    assert recorder.calls == []
    assert "nomanifest" in watcher.tracker.names()  # still watched: a job.yaml may arrive
    (job / "job.yaml").write_text("command: run\n")
    watcher.check()
    assert recorder.calls == []  # the folder just changed
    clock.now = 1002.0
    watcher.check()
    assert recorder.names == ["nomanifest"]


def test_check_ignores_hidden_dirs_and_plain_files(inbox, clock, make_watcher):
    job_dir(inbox, ".hidden")
    (inbox.path / "loose-file.txt").write_text("x")
    (inbox.path / "job.yaml").write_text("command: run\n")
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.note_path(str(inbox.path / ".hidden" / "job.yaml"))
    for clock.now in (0.0, 5.0, 10.0):
        watcher.check()
    assert recorder.calls == []
    assert watcher.tracker.names() == []


def test_check_ignores_symlinked_folder(inbox, clock, make_watcher, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "job.yaml").write_text("command: run\n")
    (inbox.path / "linked").symlink_to(real)
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    for clock.now in (0.0, 5.0):
        watcher.check()
    assert recorder.calls == []


def test_check_waits_while_folder_is_being_written(inbox, clock, make_watcher):
    job = job_dir(inbox, "copying", files={"part1.bin": "x"})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    for step in range(1, 6):  # a new file every 1.5 s: never quiet for 2 s
        clock.now = step * 1.5
        (job / f"part{step + 1}.bin").write_text("y" * step)
        watcher.check()
        assert recorder.calls == []
    clock.now = 7.5 + 1.9
    watcher.check()
    assert recorder.calls == []
    clock.now = 7.5 + 2.0
    watcher.check()
    assert recorder.names == ["copying"]


def test_check_growing_file_restarts_quiet_period(inbox, clock, make_watcher):
    job = job_dir(inbox, "growing", files={"big.bin": "x"})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 1.5
    with open(job / "big.bin", "a") as out:
        out.write("more")
    watcher.check()
    clock.now = 2.5
    watcher.check()
    assert recorder.calls == []
    clock.now = 3.5
    watcher.check()
    assert recorder.names == ["growing"]


def _rewrite_in_place_same_size(path: Path, text: str) -> None:
    """What a copy tool does when it fills a preallocated file: same size, new content, a later mtime."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as out:
        out.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # coarse-mtime filesystems too


def test_snapshot_changes_when_a_file_is_rewritten_in_place_at_the_same_size(tmp_path):
    (tmp_path / "data.bin").write_text("\0" * 8)
    first = snapshot(tmp_path)
    _rewrite_in_place_same_size(tmp_path / "data.bin", "filled!!")
    assert snapshot(tmp_path) != first, "an mtime change alone must count as a change"


def test_check_same_size_rewrite_restarts_quiet_period(inbox, clock, make_watcher):
    job = job_dir(inbox, "prealloc", files={"data.bin": "\0" * 8})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 1.5
    _rewrite_in_place_same_size(job / "data.bin", "filled!!")
    watcher.check()
    clock.now = 2.5
    watcher.check()
    assert recorder.calls == [], "claimed while its file was still being written (same size, new mtime)"
    clock.now = 3.5
    watcher.check()
    assert recorder.names == ["prealloc"]


def test_check_ready_marker_hands_over_at_once(inbox, clock, make_watcher):
    job_dir(inbox, "quick", files={".ready": ""})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    assert recorder.names == ["quick"]


def test_check_ready_marker_without_manifest_does_not_hand_over(inbox, clock, make_watcher):
    job_dir(inbox, "marker-only", manifest=False, files={".ready": ""})
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    for clock.now in (0.0, 10.0):
        watcher.check()
    assert recorder.calls == []


def test_check_event_restarts_quiet_period(inbox, clock, make_watcher):
    job = job_dir(inbox, "job1")
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 1.9
    watcher.note_path(str(job / "sub" / "new.txt"))  # an event somewhere inside the folder
    watcher.check()
    clock.now = 2.5
    watcher.check()
    assert recorder.calls == []
    clock.now = 3.9
    watcher.check()
    assert recorder.names == ["job1"]


def test_check_event_finds_new_folder_without_rescan(inbox, clock, make_watcher):
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    job = job_dir(inbox, "late")
    watcher.note_path(str(job / "job.yaml"))
    watcher.check()
    clock.now = 2.0
    watcher.check()
    assert recorder.names == ["late"]


def test_check_callback_false_keeps_folder_tracked(inbox, clock, make_watcher):
    job_dir(inbox, "busy")
    recorder = Recorder(answers=[False, False, True])
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 2.0
    watcher.check()
    assert recorder.names == ["busy"]
    assert "busy" in watcher.tracker.names()
    clock.now = 3.0
    watcher.check()
    assert recorder.names == ["busy", "busy"]
    clock.now = 4.0
    watcher.check()
    assert recorder.names == ["busy", "busy", "busy"]
    assert "busy" not in watcher.tracker.names()
    clock.now = 5.0
    watcher.check()
    assert len(recorder.calls) == 3


def test_check_callback_error_keeps_folder_tracked(inbox, clock, make_watcher):
    job_dir(inbox, "flaky")
    calls = []

    def on_settled(config, path):
        calls.append(path.name)
        if len(calls) == 1:
            raise RuntimeError("spool not ready")
        return True

    watcher = make_watcher(on_settled)
    watcher.rescan()
    watcher.check()
    clock.now = 2.0
    watcher.check()
    clock.now = 3.0
    watcher.check()
    assert calls == ["flaky", "flaky"]
    assert watcher.tracker.names() == []


def test_check_forgets_folder_that_vanished(inbox, clock, make_watcher):
    job = job_dir(inbox, "gone")
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    (job / "job.yaml").unlink()
    job.rmdir()
    clock.now = 5.0
    watcher.check()
    assert recorder.calls == []
    assert watcher.tracker.names() == []


def test_check_several_folders_each_on_its_own_schedule(inbox, clock, make_watcher):
    job_dir(inbox, "first")
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.rescan()
    watcher.check()
    clock.now = 1.0
    job_dir(inbox, "second")
    watcher.rescan()
    watcher.check()
    clock.now = 2.0
    watcher.check()
    assert recorder.names == ["first"]
    clock.now = 3.0
    watcher.check()
    assert recorder.names == ["first", "second"]


def test_note_path_ignores_paths_outside_inbox(inbox, clock, make_watcher, tmp_path):
    recorder = Recorder()
    watcher = make_watcher(recorder)
    watcher.note_path(str(tmp_path / "elsewhere" / "job.yaml"))
    watcher.note_path(str(inbox.path))
    watcher.check()
    assert watcher.tracker.names() == []


def _inotify_watches(pid: int = os.getpid()) -> int:
    """Inotify watches held by this process (one 'inotify wd:' line per watch in the fd's fdinfo)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                total += sum(1 for line in info if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def test_native_watcher_watches_the_top_level_only_never_the_spool(tmp_path):
    """A claimed or archived folder per job lives in <inbox>/.syncd: with thousands of jobs a recursive
    watch overflowed the inotify queue and re-walked the whole tree after each overflow."""
    config = InboxConfig.model_validate(
        {
            "name": "lab",
            "path": "inbox",
            "outbox": "outbox",
            "failed": "failed",
            "backend": "local",
            "storage": "local",
            "bucket": "results",
            "settle": "2s",
            "observer": "native",
        },
        context={"base_dir": tmp_path},
    )
    for i in range(300):
        (config.path / ".syncd" / "done" / f"job-{i}" / "deep").mkdir(parents=True)
    job_dir(config, "pending", files={"a/b/c.txt": "x"})
    before = _inotify_watches()
    recorder = Recorder()
    watcher = InboxWatcher(config, recorder)
    try:
        watcher.start()
        assert watcher.mode == "native"
        assert _inotify_watches() - before == 1, "one watch: the inbox itself"
        job_dir(config, "arrives-later")
        # the top-level event still arrives: check() takes it up (it lists the inbox only on a rescan)
        wait_for(
            lambda: watcher.check() or "arrives-later" in watcher.tracker.names(),
            timeout=2.5,
            interval=0.05,
            what="the new folder's event",
        )
    finally:
        watcher.stop()


def test_attribute_cache_seconds_reads_nfs_and_smb_options():
    nfs_defaults = "rw,relatime,vers=4.2,rsize=1048576,acregmin=3,acregmax=60,acdirmin=30,acdirmax=60,hard,proto=tcp"
    assert attribute_cache_seconds(nfs_defaults) == 60
    assert attribute_cache_seconds("rw,acregmin=1,acregmax=1,acdirmin=1,acdirmax=1") == 1
    assert attribute_cache_seconds("rw,vers=3.1.1,cache=strict,actimeo=1") == 1
    assert attribute_cache_seconds("rw,noac,hard") == 0
    assert attribute_cache_seconds("rw,nosuid,nodev,user_id=0,group_id=0") is None


def test_cache_warning_when_settle_is_within_the_mounts_attribute_cache(inbox):
    warning = cache_warning(inbox, ("nfs4", "rw,acregmin=3,acregmax=60,acdirmin=30,acdirmax=60"))
    assert warning is not None
    assert "inbox lab" in warning and "60 s" in warning and "actimeo=1" in warning
    assert cache_warning(inbox, ("cifs", "rw,actimeo=1")) is None  # settle outlasts the cache
    assert cache_warning(inbox.model_copy(update={"settle": 90.0}), ("nfs", "acregmax=60")) is None
    assert cache_warning(inbox, ("ext4", "rw,relatime")) is None  # a local disk has no client cache
    assert cache_warning(inbox, ("fuse.sshfs", "rw,nosuid")) is None  # sshfs does not list its cache options
    assert cache_warning(inbox, None) is None
