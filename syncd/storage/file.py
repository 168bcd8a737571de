"""``type: file`` storage: each subdirectory of ``root`` is a bucket.

Objects are files at ``root/<bucket>/<key>``. Writes go to a hidden temporary
folder inside the bucket and are renamed into place, so a reader never sees a
partial object. The ETag is a change token (mtime and size), so listing needs
no reads; copies are verified by size and MD5 while streaming.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from pydantic import Field

from syncd.config import ConfigPath, StorageOptions
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import TMP_DIR, copy_verified, os_error
from syncd.storage.base import ObjectInfo, Storage, check_key


class FileStorageOptions(StorageOptions):
    root: ConfigPath = Field(description="folder whose subfolders are the buckets")
    create_buckets: bool = Field(True, description="create a bucket folder on first use")




class FileStorage(Storage):
    options_model = FileStorageOptions
    options: FileStorageOptions
    remote_service = False

    def _bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith(".") or "\x00" in bucket:
            raise PermanentError(f"bucket name {bucket!r} is not valid")
        path = self.options.root / bucket
        if not path.is_dir():
            if not self.options.create_buckets:
                raise PermanentError(f"bucket '{bucket}' does not exist under {self.options.root}; create the folder")
            self.ensure_bucket(bucket)
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
        try:
            (self.options.root / bucket).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(exc, f"creating bucket '{bucket}' in {self.options.root}") from exc

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
                if os.path.stat.S_ISREG(st.st_mode):
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
        return self._info(key, st) if os.path.stat.S_ISREG(st.st_mode) else None

    def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        final = self._path(bucket, key)
        what = f"storing {source} as {self.name}:{bucket}/{key}"
        try:
            if key.endswith("/"):
                final.mkdir(parents=True, exist_ok=True)
                return ObjectInfo(key, 0, "dir")
            tmp_dir = self._bucket_dir(bucket) / TMP_DIR
            tmp_dir.mkdir(exist_ok=True)
            tmp = tmp_dir / f"{uuid.uuid4().hex}.part"
            try:
                copy_verified(source, tmp)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            return self._info(key, final.stat())
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
            copy_verified(source, dest)
            after = source.stat()
        except FileNotFoundError as exc:
            raise PermanentError(f"{what}: the object does not exist") from exc
        except OSError as exc:
            raise os_error(exc, what) from exc
        if (before.st_mtime_ns, before.st_size) != (after.st_mtime_ns, after.st_size):
            raise TransientError(f"{what}: the object changed while it was copied")
        return self._info(key, after)

    def delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        try:
            if key.endswith("/"):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise os_error(exc, f"deleting {self.name}:{bucket}/{key}") from exc
