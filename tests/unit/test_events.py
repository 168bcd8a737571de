"""What wakes the daemon: inotify events of an inbox folder, and the end of a process that is not its child."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from syncd.backends.exits import ExitWatcher
from syncd.intake.observers import FolderEvents, FolderPoller
from tests.support.harness import wait_for


class Names:
    def __init__(self):
        self.seen: list[str] = []
        self.overflows = 0
        self.changed = threading.Event()

    def name(self, path: str) -> None:
        self.seen.append(os.path.basename(path))
        self.changed.set()

    def overflow(self) -> None:
        self.overflows += 1


@pytest.fixture
def watched(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    names = Names()
    events = FolderEvents(folder, names.name, names.overflow)
    events.start()
    yield folder, names, events
    events.stop()
    events.join(5)


def test_names_moved_in_created_and_removed_are_reported_top_level_only(watched, tmp_path):
    folder, names, _ = watched
    outside = tmp_path / "built"
    (outside / "deep").mkdir(parents=True)
    os.rename(outside, folder / "moved in")
    (folder / "made").mkdir()
    (folder / "made" / "inner.txt").write_text("not reported: below the top level")
    (folder / "moved in" / "deep" / "x").write_text("nor this")
    os.rename(folder / "made", tmp_path / "moved out")
    wait_for(lambda: names.seen.count("made") >= 2, timeout=10, what="the move out")
    assert "moved in" in names.seen
    assert "inner.txt" not in names.seen and "x" not in names.seen and "deep" not in names.seen


def test_files_are_not_reported_unless_asked_for(watched, tmp_path):
    """A file is never a job: the status files syncd writes into an inbox must not wake its checks."""
    folder, names, _ = watched
    (folder / "job.status.txt").write_text("written by syncd")
    os.rename(folder / "job.status.txt", folder / "renamed.status.txt")
    (folder / "renamed.status.txt").unlink()
    (folder / "after").mkdir()
    wait_for(lambda: "after" in names.seen, timeout=10, what="the folder made after the files")
    assert names.seen == ["after"]  # one queue: the files' events came first and were not reported
    every = Names()
    events = FolderEvents(folder, every.name, every.overflow, files=True)
    events.start()
    try:
        (folder / "seen.txt").write_text("a")
        wait_for(lambda: "seen.txt" in every.seen, timeout=10, what="a file's event when files are asked for")
    finally:
        events.stop()
        events.join(5)


def test_a_move_out_whose_other_half_is_not_watched_is_reported_in_order_with_what_follows(watched, tmp_path):
    """A claim is such a move (into the spool); the folder dropped next is reported after it, from the
    same queue, with no pairing step in between (bench/latency.py shows what that step cost)."""
    folder, names, _ = watched
    (folder / "claimed").mkdir()
    (tmp_path / "next").mkdir()
    wait_for(lambda: "claimed" in names.seen, timeout=10, what="the first folder")
    spool = tmp_path / "spool"
    spool.mkdir()
    os.rename(folder / "claimed", spool / "claimed")
    os.rename(tmp_path / "next", folder / "next")
    wait_for(lambda: "next" in names.seen, timeout=10, what="the second folder")
    assert names.seen == ["claimed", "claimed", "next"]


def test_the_watch_ends_when_its_folder_is_removed(watched):
    folder, _, events = watched
    folder.rmdir()
    events.join(10)
    assert not events.is_alive()


def test_a_folder_that_cannot_be_watched_raises_with_its_path(tmp_path):
    with pytest.raises(OSError, match="inotify_add_watch"):
        FolderEvents(tmp_path / "missing", lambda _: None, lambda: None)


def _targets(fds) -> dict[int, str]:
    """What each descriptor is (a pipe's inode, an inotify or pidfd instance)."""
    return {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in fds}


def _still_open(recorded: dict[int, str]) -> dict[int, str]:
    """Those of ``recorded`` still open as what they were (counting all of the process's descriptors
    would also count what other tests' threads open and close meanwhile)."""
    still = {}
    for fd, target in recorded.items():
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                still[fd] = target
        except OSError:
            pass
    return still


def test_a_stopped_watch_that_never_started_closes_its_descriptors(tmp_path):
    for _ in range(20):
        events = FolderEvents(tmp_path, lambda _: None, lambda: None)
        recorded = _targets([events._fd, events._stop_r, events._stop_w])
        assert "anon_inode:inotify" in recorded.values()
        events.stop()
        assert _still_open(recorded) == {}


def _detached_sleeper(seconds: float) -> int:
    """A process that is not our child (its parent exits at once, as a runner's launcher does): its pid."""
    code = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid:\n"
        "    print(pid, flush=True)\n"
        "    os._exit(0)\n"
        "os.close(1)\n"
        "os.close(2)\n"
        f"time.sleep({seconds})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    return int(out.stdout)


def test_the_end_of_a_process_that_is_not_our_child_is_heard():
    ended: list[str] = []
    heard = threading.Event()
    watcher = ExitWatcher(lambda key: (ended.append(key), heard.set()))
    try:
        pid = _detached_sleeper(1.0)
        started = time.monotonic()
        assert watcher.add("job-1", pid, lambda: True)
        assert watcher.watching("job-1")
        assert heard.wait(30), "the process ended but nothing was heard"
        assert ended == ["job-1"] and time.monotonic() - started > 0.5  # heard at its end, not before
        assert not watcher.watching("job-1")
    finally:
        watcher.close()


def test_a_process_already_gone_or_replaced_is_reported_at_once():
    ended: list[str] = []
    watcher = ExitWatcher(ended.append)
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()
        assert watcher.add("gone", gone.pid, lambda: True)
        # A live pid that is no longer the runner (its lock is free): as good as ended.
        assert watcher.add("reused", os.getpid(), lambda: False)
        assert ended == ["gone", "reused"]
    finally:
        watcher.close()


def test_a_closed_watcher_closes_every_descriptor_and_accepts_nothing():
    watcher = ExitWatcher(lambda key: None)
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        for n, proc in enumerate(sleepers):
            assert watcher.add(f"j{n}", proc.pid, lambda: True)
        selector = watcher._selector
        assert selector is not None
        wait_for(lambda: len(selector.get_map()) == 4, timeout=10, what="three pidfds and the wake pipe")
        recorded = _targets([key.fd for key in selector.get_map().values()] + [watcher._wake_w])
        assert list(recorded.values()).count("anon_inode:[pidfd]") == 3
        watcher.close()
        assert _still_open(recorded) == {}
        assert not watcher.add("late", sleepers[0].pid, lambda: True)
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def test_the_poller_reports_folders_that_appear_go_are_replaced_or_change_inside_and_files_that_come_and_go(
    tmp_path,
):
    folder = tmp_path / "share"
    (folder / "kept").mkdir(parents=True)
    (folder / "swapped").mkdir()
    (folder / "becomes a folder").write_text("a")
    (folder / "notes.txt").write_text("a")
    names = Names()
    poller = FolderPoller(folder, names.name, 0.05)
    poller.start()
    try:
        (folder / "new").mkdir()
        wait_for(lambda: "new" in names.seen, timeout=10, what="a new folder")
        (folder / "kept" / "job.yaml").write_text("command: true\n")  # changes the folder's mtime
        (tmp_path / "other").mkdir()
        (folder / "swapped").rmdir()
        os.rename(tmp_path / "other", folder / "swapped")  # same name, another folder
        (folder / "becomes a folder").unlink()
        (folder / "becomes a folder").mkdir()
        (folder / "new.txt").write_text("a")
        (folder / "notes.txt").unlink()
        wait_for(
            lambda: {"kept", "swapped", "becomes a folder"} <= set(names.seen),
            timeout=10,
            what="the changes",
        )
        seen = len(names.seen)
        (folder / "kept" / "job.yaml").write_text("command: false\n")  # a file's content: not the folder's
        (folder / "new.txt").write_text("longer now")  # a file is never a job: its changes are not looked for
        time.sleep(0.3)  # several polls: none may report them
        assert len(names.seen) == seen, names.seen
        assert not {"new.txt", "notes.txt"} & set(names.seen), names.seen  # nor a file's coming or going
    finally:
        poller.stop()
        poller.join(5)
    assert not poller.is_alive()


def test_the_poller_ends_when_its_folder_goes_and_cannot_start_without_it(tmp_path):
    folder = tmp_path / "share"
    folder.mkdir()
    poller = FolderPoller(folder, lambda _: None, 0.05)
    poller.start()
    folder.rmdir()
    poller.join(10)
    assert not poller.is_alive()
    with pytest.raises(OSError):
        FolderPoller(folder, lambda _: None, 0.05)
