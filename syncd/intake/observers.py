"""The observers of an inbox: names that appear, change or go in one folder (not below it).

``FolderEvents`` reads inotify; ``FolderPoller`` lists the folder every few seconds, for network shares
where inotify does not see other hosts' changes. Neither needs more than a name: settling compares
snapshots of each candidate's whole tree anyway.

Why not watchdog's inotify observer: it holds every unpaired IN_MOVED_FROM for half a second, to pair it
with an IN_MOVED_TO, and the events behind it wait in the same queue. In an inbox every claim is such a
move (the folder goes into ``.syncd/claimed``, which is not watched), so a folder dropped within half a
second of a claim was seen up to half a second late. An inbox needs no pairing: an event only says
which top-level name to look at again. Why not its polling observer: it stats every entry of the
folder at every poll, and an inbox that also holds ten thousand files of the users' cost an idle daemon
several per cent of a core; a listing (``getdents``) already says each entry's inode and type, so only
folders are stat'ed here, for their mtime.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

WATCHED = IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB | IN_MODIFY | IN_DELETE_SELF | IN_MOVE_SELF
GONE = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT  # the folder itself went: this watch is over
HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name


class FolderEvents(threading.Thread):
    """Calls ``on_name(path)`` for each folder an event concerns in ``folder`` (not below it; with ``files``
    for every name), and
    ``on_overflow()`` when the kernel dropped events (look at everything again). The thread ends when
    stopped or when the folder itself is removed, moved or unmounted; ``is_alive()`` then says so.

    Raises OSError when the watch cannot be made (no inotify, the watch limit reached)."""

    def __init__(
        self,
        folder: Path,
        on_name: Callable[[str], None],
        on_overflow: Callable[[], None],
        *,
        files: bool = False,
    ):
        super().__init__(name=f"syncd-inotify-{folder.name}", daemon=True)
        self.folder = str(folder)
        self._wanted = 0 if files else IN_ISDIR
        self._on_name = on_name
        self._on_overflow = on_overflow
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        if libc.inotify_add_watch(fd, os.fsencode(folder), WATCHED | IN_ONLYDIR) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            hint = "; raise fs.inotify.max_user_watches" if code == errno.ENOSPC else ""
            raise OSError(code, f"inotify_add_watch {folder}: {os.strerror(code)}{hint}")
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)

    def run(self) -> None:
        try:
            while True:
                ready = select.select([self._fd, self._stop_r], [], [])[0]
                if self._stop_r in ready:
                    return
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    continue
                if not self._dispatch(data):
                    return
        finally:
            os.close(self._fd)
            os.close(self._stop_r)

    def _dispatch(self, data: bytes) -> bool:
        """Hand over one read's events; False once the folder itself is gone."""
        offset = 0
        while offset + HEADER.size <= len(data):
            _wd, mask, _cookie, length = HEADER.unpack_from(data, offset)
            raw = data[offset + HEADER.size : offset + HEADER.size + length].rstrip(b"\0")
            offset += HEADER.size + length
            if mask & IN_Q_OVERFLOW:
                self._on_overflow()
            if mask & GONE:
                return False
            # Files are never jobs: the status files syncd itself writes into an inbox wake nobody.
            if raw and mask & self._wanted == self._wanted:
                self._on_name(os.path.join(self.folder, os.fsdecode(raw)))
        return True

    def stop(self) -> None:
        if self.ident is None:  # never started: nobody else closes its descriptors
            os.close(self._fd)
            os.close(self._stop_r)
            self._close_stop()
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        finally:
            if not self.is_alive():
                self._close_stop()

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if not self.is_alive():
            self._close_stop()

    def _close_stop(self) -> None:
        if self._stop_w >= 0:
            os.close(self._stop_w)
            self._stop_w = -1


Listing = dict[str, tuple[int, int] | None]  # name → a folder's (inode, mtime in ns); None for anything else


class FolderPoller(threading.Thread):
    """Lists ``folder`` every ``interval`` seconds and calls ``on_name(path)`` for each entry that
    appeared, went, became or stopped being a folder, or is a folder that was replaced (another inode)
    or changed (its mtime: an entry made or removed inside it). Files are never jobs, so a file's own
    changes are not looked for. The thread ends when stopped, or when the folder cannot be listed
    (gone, unmounted), which ``is_alive()`` then says."""

    def __init__(self, folder: Path, on_name: Callable[[str], None], interval: float):
        super().__init__(name=f"syncd-poll-{folder.name}", daemon=True)
        self.folder = str(folder)
        self._on_name = on_name
        self._interval = interval
        self._stopped = threading.Event()
        self._previous = self._list()  # OSError here: the folder cannot be watched

    def _list(self) -> Listing:
        listing: Listing = {}
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):  # the listing's d_type: no stat
                    listing[entry.name] = None
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # went while being listed: the next listing says so
                listing[entry.name] = (st.st_ino, st.st_mtime_ns)
        return listing

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                current = self._list()
            except OSError:
                return
            if current != self._previous:  # compared in C; most polls of a quiet share stop here
                for name in current.keys() | self._previous.keys():
                    if current.get(name) != self._previous.get(name):  # a file coming or going is None to None
                        self._on_name(os.path.join(self.folder, name))
            self._previous = current

    def stop(self) -> None:
        self._stopped.set()
