"""Filesystem helpers shared by intake, delivery, storages and backends (nothing plugin-specific owns them)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from syncd.errors import PermanentError, SyncdError, TransientError

#: hidden folder, inside the folder a file is bound for, where it is written before the rename into place
TMP_DIR = ".syncd-tmp"
CHUNK = 1024 * 1024


def fsync_dir(path: str | Path, *, missing_ok: bool = False) -> None:
    """Make a rename or create inside ``path`` durable."""
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


def copy_verified(source: Path, dest: Path) -> str:
    """Copy with fsync, returning the MD5 of what was written; raise if sizes differ."""
    digest = hashlib.md5()
    with open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
        expected = os.fstat(src.fileno()).st_size
    if dest.stat().st_size != expected:
        raise TransientError(f"copy of {source} to {dest} is {dest.stat().st_size} bytes, expected {expected}")
    return digest.hexdigest()


def os_error(exc: OSError, what: str) -> SyncdError:
    """Classify an OSError: full disk and I/O hiccups are transient, the rest permanent."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransientError(f"{what}: no space left on the device; free space on that filesystem and syncd "
                              f"resumes by itself")
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EBUSY, errno.ENOTCONN):
        return TransientError(f"{what}: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentError(f"{what}: permission denied; check the owner and mode of {exc.filename or what}")
    return PermanentError(f"{what}: {exc.strerror or exc}")
