"""Detect job directories in an inbox and decide when each has settled.

Events (inotify or polling) only say "look at this folder again"; a periodic
full rescan backs them up, so no event is ever the only path. A folder is
settled when it holds ``job.yaml`` and two snapshots of its tree (names, sizes,
mtimes, compared with each other, never with the local clock) taken ``settle``
apart are identical — or at once when it holds a ``.ready`` marker.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from syncd.config import InboxConfig
from syncd.intake.manifest import MANIFEST_NAME, READY_MARKER
from syncd.intake.observers import FolderEvents, FolderPoller
from syncd.log import logger

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "sshfs",
        "virtiofs",
        "vboxsf",
        "vmhgfs",
    }
)

Snapshot = tuple[tuple[str, int, int, int], ...]


class Mount(NamedTuple):
    fstype: str
    options: str
    source: str  # the device (or server and export) mounted


def mount_entry(path: Path, mounts_file: str = "/proc/self/mounts") -> Mount | None:
    """The filesystem holding ``path``, from the mount table (longest mount point wins)."""
    target = os.path.realpath(path)
    best, entry = "", None
    try:
        with open(mounts_file) as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) < 3:
                    continue
                point = parts[1].replace("\\040", " ")
                if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, entry = point, Mount(parts[2], parts[3] if len(parts) > 3 else "", parts[0])
    except OSError:
        return None
    return entry


def ext4_without_journal(
    path: Path, mounts_file: str = "/proc/self/mounts", ext4_info: str = "/proc/fs/ext4"
) -> str | None:
    """The device, when ``path`` is on an ext4 filesystem that has no journal (None otherwise, and when
    it cannot be told). The kernel lists every option of a mounted ext4 in ``/proc/fs/ext4/<device>/options``,
    ``data=`` among them only where there is a journal."""
    entry = mount_entry(path, mounts_file)
    if entry is None or entry.fstype != "ext4":
        return None
    device = os.path.basename(os.path.realpath(entry.source))
    try:
        with open(os.path.join(ext4_info, device, "options")) as listed:
            options = listed.read().split()
    except OSError:
        return None
    return None if any(option.startswith("data=") for option in options) else device


def slow_create_warnings(
    folders: dict[str, Path], mounts_file: str = "/proc/self/mounts", ext4_info: str = "/proc/fs/ext4"
) -> list[str]:
    """One warning per ext4 device without a journal that holds some of ``folders`` (what each is → where)."""
    on: dict[str, list[str]] = {}
    for what, folder in folders.items():
        device = ext4_without_journal(folder, mounts_file, ext4_info)
        if device is not None:
            on.setdefault(device, []).append(f"{what} {folder}")
    return [
        f"{', '.join(held)} {'is' if len(held) == 1 else 'are'} on {device}, an ext4 filesystem without a journal: "
        f"before it reuses an inode, the kernel checks every inode freed there in the last minutes, one by one, "
        f"and syncd makes and deletes files for every job, so under load each new file costs many times more "
        f"than on a journaled filesystem (bench/fs_creates.py shows it). Jobs run all the same; for speed, give "
        f"the filesystem a journal (tune2fs -O has_journal while it is unmounted) or move "
        f"{'it' if len(held) == 1 else 'them'} to one that has"
        for device, held in on.items()
    ]


def filesystem_type(path: Path, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The type of the filesystem holding ``path``, from the mount table (longest mount point wins)."""
    entry = mount_entry(path, mounts_file)
    return entry[0] if entry else None


# Mount options (as the kernel lists them for NFS and SMB) that bound how long another host's change can
# stay unseen in the client's attribute cache.
_ATTRIBUTE_CACHE_OPTIONS = ("acregmax", "acdirmax", "actimeo")


def attribute_cache_seconds(options: str) -> int | None:
    """The longest attribute cache the mount options state, in seconds; None when they state none."""
    values = []
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key == "noac":
            values.append(0)
        elif key in _ATTRIBUTE_CACHE_OPTIONS and value.isdigit():
            values.append(int(value))
    return max(values) if values else None


def cache_warning(inbox: InboxConfig, entry: Mount | None) -> str | None:
    """Why ``settle`` is too short for the client's attribute cache of the inbox's mount, if it is."""
    if entry is None or not wants_polling(entry[0]):
        return None
    seconds = attribute_cache_seconds(entry[1])
    if seconds is None or inbox.settle > seconds:
        return None
    return (
        f"inbox {inbox.name}: {inbox.path} is on {entry[0]} with attributes cached up to {seconds} s, longer than "
        f"settle ({inbox.settle:g} s): a copy still running on another host can look finished and be claimed "
        f"early. Mount it with actimeo=1 (see the README, 'Network drives'), raise settle above {seconds} s, "
        f"or have copies end with a .ready file"
    )


def wants_polling(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse"))


def snapshot(path: Path) -> Snapshot:
    """Names, types, sizes and mtimes of everything under ``path`` (links not followed)."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            entries.append((os.path.relpath(full, path), stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


@dataclass
class _Candidate:
    snapshot: Snapshot | None = None
    since: float = 0.0
    hinted: bool = False


class SettleTracker:
    """Per-folder settle state. Pure logic; time comes from the caller's monotonic clock."""

    def __init__(self, settle: float):
        self.settle = settle
        self._candidates: dict[str, _Candidate] = {}

    def names(self) -> list[str]:
        return sorted(self._candidates)

    def count(self) -> int:
        return len(self._candidates)  # one call, safe from another thread (sorting the keys would not be)

    def add(self, name: str) -> None:
        self._candidates.setdefault(name, _Candidate())

    def touch(self, name: str) -> None:
        """An event says the folder changed: its quiet period starts again."""
        self._candidates[name] = _Candidate()

    def forget(self, name: str) -> None:
        self._candidates.pop(name, None)

    def observe(self, name: str, current: Snapshot, now: float, *, ready_marker: bool = False) -> bool:
        """Record a snapshot; True when the folder has settled."""
        candidate = self._candidates.setdefault(name, _Candidate())
        if ready_marker:
            return True
        if candidate.snapshot != current:
            candidate.snapshot, candidate.since = current, now
            return False
        return now - candidate.since >= self.settle

    def hint_once(self, name: str) -> bool:
        candidate = self._candidates.setdefault(name, _Candidate())
        first, candidate.hinted = not candidate.hinted, True
        return first


class InboxWatcher:
    """Watches one inbox; ``check()`` is called on a timer and hands settled folders to ``on_settled``."""

    def __init__(
        self,
        inbox: InboxConfig,
        on_settled: Callable[[InboxConfig, Path], bool],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.inbox = inbox
        self.on_settled = on_settled
        self.clock = clock
        self.tracker = SettleTracker(inbox.settle)
        self._dirty: set[str] = set()  # changed, per events: quiet period restarts
        self._found: set[str] = set()  # seen by a rescan: tracked if new
        self._lock = threading.Lock()
        self._observer: FolderPoller | FolderEvents | None = None
        self._paused = False
        self._changed = threading.Event()
        self._closed = False
        self.restarts = 0
        entry = mount_entry(self.inbox.path)
        self.fstype = entry[0] if entry else None
        self.mode = self._choose_mode()
        if warning := cache_warning(inbox, entry):
            logger.warning("{}", warning)
        # A network client caches directory listings (sshfs: 20 s by default; NFS and SMB: actimeo), and
        # only a change made through the same mount drops that cache: a listing of our own, preceded by
        # creating and removing a hidden file in the inbox, sees another host's new folder at once.
        self.probe = self.mode == "polling" and wants_polling(self.fstype)
        self._probe_name = f".syncd-probe-{socket.gethostname()}-{os.getpid()}"
        self._last_probe = float("-inf")

    def _choose_mode(self) -> str:
        if self.inbox.observer != "auto":
            return self.inbox.observer
        return "polling" if wants_polling(self.fstype) else "native"

    @property
    def paused(self) -> bool:
        """True while the inbox folder is not reachable (intake waits for it)."""
        return self._paused

    @property
    def pending(self) -> int:
        """Folders seen that have not settled yet (read by the status page's threads)."""
        return self.tracker.count()

    # -- observer lifecycle ------------------------------------------------------
    def start(self) -> None:
        self._start_observer()
        self.rescan()

    def _start_observer(self) -> None:
        # Top level only: a folder appearing, going or being renamed is all an event has to say, since
        # settling compares snapshots of each candidate's whole tree anyway. A recursive watch would also
        # cover the spool (.syncd/claimed, .syncd/done: a folder per job); with thousands of jobs its
        # moves overflowed the inotify queue and every overflow re-walked the whole tree.
        observer: FolderPoller | FolderEvents
        if self.mode == "polling":
            observer = FolderPoller(self.inbox.path, self._note_event, self.inbox.poll_interval)
        else:
            observer = FolderEvents(self.inbox.path, self._note_event, self.rescan)
        observer.start()
        self._observer = observer
        logger.info("inbox {}: watching {} ({} observer)", self.inbox.name, self.inbox.path, self.mode)

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            try:
                observer.join(timeout=5)
            except RuntimeError:
                pass

    def _supervise(self) -> bool:
        """Keep the observer alive; pause while the inbox is gone. True when the inbox is usable."""
        if not self.inbox.path.is_dir():
            if not self._paused:
                logger.warning(
                    "inbox {}: {} is not reachable; pausing intake until it returns", self.inbox.name, self.inbox.path
                )
                self._paused = True
                self.stop()
            return False
        if self._paused:
            logger.info("inbox {}: {} is back; resuming", self.inbox.name, self.inbox.path)
            self._paused = False
            self.restarts += 1
            self._start_observer()
            self.rescan()
        elif self._observer is None or not self._observer.is_alive():
            logger.warning("inbox {}: the {} observer stopped; restarting it", self.inbox.name, self.mode)
            self.restarts += 1
            self.stop()
            try:
                self._start_observer()
            except OSError as exc:  # e.g. inotify watch limit reached
                logger.error(
                    "inbox {}: cannot start the {} observer ({}); falling back to polling",
                    self.inbox.name,
                    self.mode,
                    exc,
                )
                self.mode = "polling"
                self._start_observer()
            self.rescan()
        return True

    # -- detection -----------------------------------------------------------------
    def _note_event(self, raw: str) -> None:
        try:
            self.note_path(raw)
        except Exception:  # the reading thread must never die of one event
            logger.opt(exception=True).warning("inbox {}: ignoring a malformed event", self.inbox.name)

    def note_path(self, raw: str) -> None:
        """Mark the top-level folder containing ``raw`` as changed."""
        rel = os.path.relpath(raw, self.inbox.path)
        if rel == "." or rel.startswith(".."):
            return
        top = rel.split(os.sep, 1)[0]
        if top.startswith("."):
            return
        with self._lock:
            self._dirty.add(top)
        self._changed.set()

    def wait_for_change(self, timeout: float) -> bool:
        """Wait for an event (or ``timeout``); False once the watcher is closed."""
        self._changed.wait(timeout)
        self._changed.clear()
        return not self._closed

    def close(self) -> None:
        """Stop watching for good (``stop`` alone is a pause the next check may undo)."""
        self._closed = True
        self._changed.set()
        self.stop()

    def refresh(self) -> None:
        """Drop the network client's cached listing of the inbox, then rescan it."""
        probe = self.inbox.path / self._probe_name
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:  # a read-only or hung share: the plain listing below still works, later
            logger.debug("inbox {}: cannot create {}: {}", self.inbox.name, probe, exc)
        try:
            os.unlink(probe)
        except OSError:
            pass
        self.rescan()

    def rescan(self) -> None:
        try:
            entries = list(os.scandir(self.inbox.path))
        except OSError as exc:
            logger.warning("inbox {}: cannot list {}: {}", self.inbox.name, self.inbox.path, exc)
            return
        with self._lock:
            for entry in entries:
                try:  # a file is never a job: only folders become candidates (d_type, no stat)
                    candidate = entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
                except OSError:
                    continue
                if candidate:
                    self._found.add(entry.name)

    def check(self) -> None:
        """Evaluate every candidate folder once; hand over the settled ones."""
        if not self._supervise():
            return
        if self.probe and self.clock() - self._last_probe >= self.inbox.poll_interval:
            self._last_probe = self.clock()
            self.refresh()
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            found, self._found = self._found, set()
        for name in found:
            self.tracker.add(name)
        for name in dirty:
            self.tracker.touch(name)
        now = self.clock()
        for name in self.tracker.names():
            path = self.inbox.path / name
            try:
                if path.is_symlink() or not path.is_dir():
                    self.tracker.forget(name)
                    continue
                has_manifest = os.path.lexists(path / MANIFEST_NAME)
                current = snapshot(path)
            except OSError as exc:
                logger.warning("inbox {}: cannot read {}: {}", self.inbox.name, path, exc)
                continue
            ready = has_manifest and os.path.lexists(path / READY_MARKER)
            settled = self.tracker.observe(name, current, now, ready_marker=ready)
            if settled and not has_manifest:
                if self.tracker.hint_once(name):
                    logger.info(
                        "inbox {}: folder '{}' has no {}; waiting for one", self.inbox.name, name, MANIFEST_NAME
                    )
                continue
            if settled:
                try:
                    taken = self.on_settled(self.inbox, path)
                except Exception:
                    logger.opt(exception=True).error(
                        "inbox {}: claiming '{}' failed; will try again", self.inbox.name, name
                    )
                    continue
                if taken:
                    self.tracker.forget(name)
