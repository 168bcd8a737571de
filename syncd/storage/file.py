"""``type: file`` storage: each subdirectory of ``root`` is a bucket.

Objects are files at ``root/<bucket>/<key>``. Writes go to a hidden temporary
folder inside the bucket and are renamed into place, so a reader never sees a
partial object. The ETag is a change token (mtime and size), so listing needs
no reads.

No second copy on one disk when it can be avoided (:func:`syncd.fsutil.place_file`):
``put_file``, ``get_file`` and ``copy`` first try a reflink (copy-on-write: the two
files stay independent), then a hard link, then a copy verified by size (and MD5
while streaming). A hard link is made only to a file owned by the daemon's own user
that no one else may write; a file of a job's user is always copied, so that user
cannot change a delivered result afterwards. ``hard_links: false`` turns links off
(reflinks stay). Another filesystem (EXDEV) or one that can't (EPERM, EOPNOTSUPP)
falls back to the next way, silently.

A linked object and the file it came from are one inode under two names: the same
content, owner, mode and mtime (so the object's ETag is the file's). In particular a
bucket object mirrored into an outbox on the same filesystem, and a daemon-owned
file put into a bucket, share their inode with it: replacing either name (a rename,
as syncd and most editors do) leaves the other alone, but writing into either in
place changes both, and the mirror has no other copy to repair it from.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from syncd.config import ConfigPath, StorageOptions
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import TMP_DIR, copy_verified, in_folder, os_error, place_file
from syncd.storage.base import ObjectInfo, Storage, check_key

#: at most this many files, and bytes, are moved one after another in the caller's thread
INLINE_FILES = 16
INLINE_BYTES = 4 << 20


class FileStorageOptions(StorageOptions):
    root: ConfigPath = Field(description="folder whose subfolders are the buckets")
    create_buckets: bool = Field(True, description="create a bucket folder on first use")
    hard_links: bool = Field(
        True,
        description="store a file of the daemon's own user (not writable by others), and fetch an object, "
        "as a hard link instead of a copy when on one filesystem; editing either in place "
        "then changes both (a reflink is tried first either way)",
    )


class FileStorage(Storage):
    options_model = FileStorageOptions
    options: FileStorageOptions
    remote_service = False

    def __init__(self, name: str, options: FileStorageOptions):
        super().__init__(name, options)
        self._no_reflink: set[tuple[int, int]] = set()  # (source, destination) devices where a reflink failed
        self._tmp_dirs: set[Path] = set()  # the buckets' temporary folders this storage has made or found
        self._buckets: set[str] = set()  # buckets whose folder this storage has found or made

    def transfer_threads(self, count: int, total_bytes: int) -> int:
        # A job's handful of small files is copied or linked sooner than threads could be started and
        # switched to; threads pay off on many files or large ones (a folder on a network drive).
        if count <= INLINE_FILES and total_bytes <= INLINE_BYTES:
            return 1
        return super().transfer_threads(count, total_bytes)

    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith(".") or "\x00" in bucket:
            raise PermanentError(f"bucket name {bucket!r} is not valid")
        path = self.options.root / bucket
        if bucket in self._buckets:  # a write that finds the folder gone asks again (see _place_in_tmp)
            return path
        if not path.is_dir():
            if not self.options.create_buckets:
                raise PermanentError(f"bucket '{bucket}' does not exist under {self.options.root}; create the folder")
            self.ensure_bucket(bucket)
        self._buckets.add(bucket)
        return path

    def _path(self, bucket: str, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == TMP_DIR:
            raise PermanentError(f"object key {key!r} uses the reserved folder {TMP_DIR}")
        return self._bucket_dir(bucket) / key

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}", modified=st.st_mtime)

    def ensure_bucket(self, bucket: str) -> None:
        if bucket in self._buckets:
            return
        try:
            (self.options.root / bucket).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, f"creating bucket '{bucket}' in {self.options.root}") from exc
        self._buckets.add(bucket)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        if prefix:
            check_key(prefix.rstrip("/") or ".")
        base = self._bucket_dir(bucket)
        # Walk only the folder that can hold the prefix, not the whole bucket.
        start_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = base / start_rel if start_rel else base
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            rel_dir = here.relative_to(base).as_posix()
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            dirnames.sort()
            for name in sorted(filenames):
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = (here / name).lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield self._info(key, st)
            if not filenames and not dirnames and rel_dir != ".":
                marker = rel_dir + "/"
                if marker.startswith(prefix):
                    yield ObjectInfo(key=marker, size=0, etag="dir", modified=None)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        path = self._path(bucket, key)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        if key.endswith("/"):
            return ObjectInfo(key, 0, "dir") if path.is_dir() else None
        return self._info(key, st) if stat.S_ISREG(st.st_mode) else None

    def _tmp_dir(self, bucket: str) -> Path:
        """The bucket's temporary folder, made (or found) once rather than asked for at every write."""
        tmp_dir = self.options.root / bucket / TMP_DIR
        if tmp_dir not in self._tmp_dirs:
            (self._bucket_dir(bucket) / TMP_DIR).mkdir(exist_ok=True)
            self._tmp_dirs.add(tmp_dir)
        return tmp_dir

    def _place_in_tmp(self, source: Path, bucket: str, tmp: Path) -> str:
        """:func:`place_file` into the bucket's temporary folder, made again if it was removed since."""
        try:
            return place_file(source, tmp, link=self.options.hard_links, no_reflink=self._no_reflink)
        except FileNotFoundError:
            if tmp.parent.is_dir():
                raise  # the source is missing
        # Removed (with the bucket?) since: make it again, or say why not.
        self._tmp_dirs.discard(tmp.parent)
        self._buckets.discard(bucket)
        self._tmp_dir(bucket)
        return place_file(source, tmp, link=self.options.hard_links, no_reflink=self._no_reflink)

    def _store(self, source: Path, bucket: str, key: str, final: Path) -> os.stat_result:
        """Place ``source`` at ``final`` through the bucket's temporary folder; the stat of what is there."""
        tmp = self._tmp_dir(bucket) / f"{uuid.uuid4().hex}.part"
        try:
            how = self._place_in_tmp(source, bucket, tmp)
            placed = tmp.stat()
            if how == "link":
                try:
                    old = final.stat()
                except (FileNotFoundError, NotADirectoryError):
                    old = None
                if (
                    old is not None
                    and old.st_ino != placed.st_ino
                    and (old.st_mtime_ns, old.st_size) == (placed.st_mtime_ns, placed.st_size)
                ):
                    # A link keeps the file's mtime: the ETag (mtime, size) would not change although the
                    # content may have. A copy gets an mtime of its own.
                    tmp.unlink()
                    copy_verified(source, tmp)
                    placed = tmp.stat()
            in_folder(final.parent, lambda: os.replace(tmp, final))  # a rename keeps mtime and size
        finally:
            tmp.unlink(missing_ok=True)
        return placed

    def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        final = self._path(bucket, key)
        what = f"storing {source} as {self.name}:{bucket}/{key}"
        try:
            if key.endswith("/"):
                final.mkdir(parents=True, exist_ok=True)
                return ObjectInfo(key, 0, "dir")
            return self._info(key, self._store(source, bucket, key, final))
        except FileNotFoundError as exc:
            raise PermanentError(f"{what}: {exc.filename} does not exist") from exc
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise PermanentError(f"{what}: a file and a folder would share the path {exc.filename}") from exc
        except OSError as exc:
            raise os_error(exc, what) from exc

    def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        source = self._path(bucket, key)
        what = f"fetching {self.name}:{bucket}/{key} into {dest}"
        try:
            before = source.stat()
            # Never write into a file already at dest: it may be a link to something else.
            dest.unlink(missing_ok=True)
            place_file(source, dest, link=self.options.hard_links, no_reflink=self._no_reflink)
            after = source.stat()
        except FileNotFoundError as exc:
            if not dest.parent.is_dir():
                raise PermanentError(f"{what}: the folder {dest.parent} does not exist") from exc
            raise PermanentError(f"{what}: the object does not exist") from exc
        except OSError as exc:
            raise os_error(exc, what) from exc
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size):
            raise TransientError(f"{what}: the object changed while it was copied")
        return self._info(key, after)

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """A reflink, a hard link (see the module docstring) or a verified copy of the object's file."""
        source = self._path(src_bucket, src_key)
        final = self._path(dst_bucket, dst_key)
        what = f"copying {self.name}:{src_bucket}/{src_key} to {dst_bucket}/{dst_key}"
        if src_key.endswith("/") != dst_key.endswith("/"):
            raise PermanentError(f"{what}: a directory marker (a key ending in '/') copies only to another one")
        if self.head(src_bucket, src_key) is None:
            raise PermanentError(f"{what}: the source object {src_bucket}/{src_key} does not exist")
        try:
            if dst_key.endswith("/"):
                final.mkdir(parents=True, exist_ok=True)
                return ObjectInfo(dst_key, 0, "dir")
            before = source.stat()
            st = self._store(source, dst_bucket, dst_key, final)
        except FileNotFoundError as exc:
            raise PermanentError(f"{what}: the source object {src_bucket}/{src_key} does not exist") from exc
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise PermanentError(f"{what}: a file and a folder would share the path {exc.filename}") from exc
        except OSError as exc:
            raise os_error(exc, what) from exc
        if st.st_size != before.st_size:
            raise TransientError(
                f"{what}: the copy has {st.st_size} bytes, the source {before.st_size}; syncd copies it again"
            )
        return self._info(dst_key, st)

    def presign(self, bucket: str, key: str, method: str = "GET", expires: float = 3600) -> str:
        raise PermanentError(
            f"storage '{self.name}' (type: file) cannot make a URL for {bucket}/{key}: a folder has no URLs; "
            f"a backend whose service fetches inputs by URL needs an s3 storage on its inbox"
        )

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        try:
            if key.endswith("/"):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise os_error(exc, f"deleting {self.name}:{bucket}/{key}") from exc
        # Like an object store, a bucket has no folders of its own: the ones this delete emptied go too.
        root = self._bucket_dir(bucket)
        for parent in path.parents:
            if parent == root or root not in parent.parents:
                break
            try:
                parent.rmdir()
            except OSError:
                break
