"""Filesystem helpers shared by intake, delivery, storages and backends (nothing plugin-specific owns them).

:func:`place_file` puts a file's content at a new path without a second copy on one disk when it
can: a reflink (copy-on-write, Linux ``FICLONE``: a later write to either name copies the block
it changes, so the two stay independent), else a hard link (one inode under two names: a write in
place through either name changes both; only for a file this process's user owns and no one else
may write, so a job's user cannot change a delivered result afterwards), else
:func:`copy_verified`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from syncd.errors import PermanentError, SyncdError, TransientError

#: hidden folder, inside the folder a file is bound for, where it is written before the rename into place
TMP_DIR = ".syncd-tmp"
CHUNK = 1024 * 1024
T = TypeVar("T")


def fsync_dir(path: str | Path, *, missing_ok: bool = False) -> None:
    """Make a rename or create inside ``path`` durable."""
    fsync_path(path, missing_ok=missing_ok)


def fsync_path(path: str | Path, *, missing_ok: bool = False) -> None:
    """Flush the file (or folder) at ``path`` to disk, by name: for a file placed by a link, whose
    writer may not have flushed it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_folder(folder: Path, action: Callable[[], T], *, parents: bool = True) -> T:
    """``action()``, which writes into ``folder``; if that finds the folder missing, the folder is made and
    ``action`` tried once more. Folders syncd keeps are made when a write finds them missing, not asked for
    before every file (a ``mkdir`` and a ``stat`` each time). ``parents=False`` makes none of its parents
    (a folder inside a share that may be unmounted: never one on the bare mount point)."""
    try:
        return action()
    except FileNotFoundError:
        if folder.is_dir():
            raise  # something else is missing (the file to place)
    folder.mkdir(parents=parents, exist_ok=True)
    return action()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_small(path: str | os.PathLike) -> bytes:
    """The whole content of a small file syncd itself wrote (a control or status file): plain system calls,
    without the buffered file object's stat, terminal check and seeks. For files of others, or of any
    size, see :func:`read_regular`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_small(path: str | os.PathLike, data: bytes, mode: int = 0o666) -> None:
    """Create (or truncate) ``path`` and write ``data`` into it with plain system calls; not flushed to disk,
    and not atomic: write a temporary name, then rename it into place."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


class NotRegularFile(OSError):
    """A path syncd was to read is a folder, FIFO, socket or device: refused before it is opened for reading
    (opening a FIFO blocks, a device can be read without end)."""

    def __init__(self, path: str | os.PathLike | bytes, kind: str):
        super().__init__(errno.EINVAL, f"must be a regular file, not {kind}", os.fsdecode(path))
        self.kind = kind


class TooLarge(OSError):
    """A file holds more than the reader's limit (only that much plus one byte was read)."""

    def __init__(self, path: str | os.PathLike | bytes, limit: int, size: int):
        super().__init__(errno.EFBIG, f"is {size} bytes, over the limit of {limit} bytes", os.fsdecode(path))
        self.limit, self.size = limit, size


def file_kind(mode: int) -> str:
    """What a file of this mode is, for a person: 'a FIFO (named pipe)', 'a character device'…"""
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "a special file"


def open_regular(path: str | os.PathLike | bytes, *, follow: bool = True) -> int:
    """Open a regular file for reading and return its descriptor; :class:`NotRegularFile` at once for
    anything else. The type is checked before the open (opening a FIFO would block, opening a device can
    act on it) and again on the open descriptor (the name may have been given another file in between).
    ``follow=False`` refuses a symbolic link as the last component."""
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, file_kind(st.st_mode))
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # became a link, or a socket, since the stat
            raise NotRegularFile(path, "a symbolic link" if exc.errno == errno.ELOOP else "a socket") from None
        raise
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode):
        os.close(fd)
        raise NotRegularFile(path, file_kind(opened.st_mode))
    return fd


def read_regular(path: str | os.PathLike | bytes, limit: int, *, follow: bool = True) -> bytes:
    """The content of a regular file of at most ``limit`` bytes (:class:`TooLarge` otherwise; never more
    than ``limit + 1`` bytes are read, whatever the file claims its size is)."""
    fd = open_regular(path, follow=follow)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TooLarge(path, limit, size)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise TooLarge(path, limit, total)
        return b"".join(chunks)
    finally:
        os.close(fd)


def copy_verified(source: Path, dest: Path, *, follow: bool = True) -> str:
    """Copy with fsync, returning the MD5 of what was written; raise if sizes differ. The source must be a
    regular file (:class:`NotRegularFile` otherwise, at once; with ``follow=False`` not a link either)."""
    digest = hashlib.md5()
    src = open_regular(source, follow=follow)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            while chunk := os.read(src, CHUNK):
                digest.update(chunk)
                _write_all(out, chunk)
            os.fsync(out)
            expected, written = os.fstat(src).st_size, os.fstat(out).st_size
        finally:
            os.close(out)
    finally:
        os.close(src)
    if written != expected:
        raise TransientError(f"copy of {source} to {dest} is {written} bytes, expected {expected}")
    return digest.hexdigest()


#: ``FICLONE`` (``_IOW(0x94, 9, int)``), in :mod:`fcntl` from Python 3.12
FICLONE = 0x40049409
#: errors meaning "this way of placing a file is not possible here": the next way is tried, silently
#: (another filesystem, a filesystem without reflinks or hard links, a protected or too-often linked file)
_CANNOT = frozenset(
    {errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOTTY, errno.EINVAL, errno.ENOSYS, errno.EMLINK}
)


def linkable(st: os.stat_result) -> bool:
    """Whether a hard link to this file is safe: a regular file of this process's user that no one else
    may write (a file of a job's user is copied, so that user cannot change a delivered result later)."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _reflink(source: Path, dest: Path, pair: tuple[int, int], no_reflink: set[tuple[int, int]]) -> bool:
    """Clone ``source`` into the new file ``dest``; False (nothing left behind) when the filesystem can't."""
    import fcntl

    src_fd = open_regular(source)
    try:
        src = os.fstat(src_fd)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        done = False
        try:
            fcntl.ioctl(fd, getattr(fcntl, "FICLONE", FICLONE), src_fd)
            os.fsync(fd)
            size = os.fstat(fd).st_size
            if size != src.st_size:
                raise TransientError(f"reflink of a {src.st_size}-byte file to {dest} is {size} bytes")
            done = True
        except OSError as exc:
            if exc.errno not in _CANNOT:
                raise
            no_reflink.add(pair)
        finally:
            os.close(fd)
            if not done:
                os.unlink(dest)
    finally:
        os.close(src_fd)
    return done


def place_file(
    source: Path, dest: Path, *, link: bool = True, no_reflink: set[tuple[int, int]] | None = None
) -> Literal["reflink", "link", "copy"]:
    """Put ``source``'s content at the new path ``dest`` (it must not exist), without a second copy
    on one disk when possible: a reflink, else a hard link (with ``link``, and only when
    :func:`linkable`), else :func:`copy_verified`. Says which it did. The source must be a regular file
    (:class:`NotRegularFile` otherwise, at once).

    ``no_reflink`` is the caller's memory of (source device, destination device) pairs where a reflink
    failed, so they are not tried again (nor is the source opened for one).
    """
    no_reflink = set() if no_reflink is None else no_reflink
    st = os.stat(source)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(source, file_kind(st.st_mode))
    try:
        pair = (st.st_dev, os.stat(dest.parent).st_dev)
    except FileNotFoundError:
        pair = None  # the link or copy below names the missing folder
    if pair is not None and pair not in no_reflink and _reflink(source, dest, pair, no_reflink):
        return "reflink"
    if link and linkable(st):
        try:
            os.link(source, dest)
        except OSError as exc:
            if exc.errno not in _CANNOT:
                raise
        else:
            placed = os.lstat(dest)
            # The file linked is the one whose type, owner and mode were checked, or it is copied instead.
            if (placed.st_dev, placed.st_ino) == (st.st_dev, st.st_ino):
                return "link"
            os.unlink(dest)
    copy_verified(source, dest)
    return "copy"


_RENAME_NOREPLACE = 1
_renameat2: Any = None


def _libc_renameat2() -> Any:
    global _renameat2
    if _renameat2 is None:
        try:
            import ctypes

            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            _renameat2 = func
        except (OSError, AttributeError):  # not Linux, or a libc without it
            _renameat2 = False
    return _renameat2


def rename_noreplace(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename ``source`` to ``dest`` only if nothing is at ``dest``: FileExistsError otherwise, never a
    replaced file or (empty) folder. ``renameat2(RENAME_NOREPLACE)`` where the kernel and filesystem have it;
    else a hard link then unlink for a file; else (a folder on such a filesystem) a check just before the
    rename."""
    func = _libc_renameat2()
    if func:
        AT_FDCWD = -100
        if func(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(dest), _RENAME_NOREPLACE) == 0:
            return
        import ctypes

        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), os.fsdecode(source), None, os.fsdecode(dest))
    if not os.path.isdir(source) or os.path.islink(source):
        try:
            os.link(source, dest, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _CANNOT:
                raise
        else:
            os.unlink(source)
            return
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(dest))
    os.rename(source, dest)


def os_error(exc: OSError, what: str) -> SyncdError:
    """Classify an OSError: full disk and I/O hiccups are transient, the rest permanent."""
    if isinstance(exc, NotRegularFile | TooLarge):
        return PermanentError(f"{what}: {exc.filename} {exc.strerror}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(
            f"{what}: no space left on the device; free space on that filesystem and syncd resumes by itself"
        )
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY, errno.ENOTCONN):
        return TransientError(f"{what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(f"{what}: permission denied; check the owner and mode of {exc.filename or what}")
    return PermanentError(f"{what}: {exc.strerror or exc}")
