"""Mirror remote prefixes into the local outbox tree, atomically and incrementally.

``outbox/<bucket>/<key…>`` mirrors the bucket. Every file is downloaded into
``outbox/.syncd-tmp/`` and renamed into place, so nothing partial is ever at a
final path. Remote keys are untrusted: a key that would escape the outbox or
that a Windows/SMB share cannot hold is refused and reported, never written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from syncd.errors import PermanentError
from syncd.storage.base import Storage
from syncd.storage.file import os_error
from syncd.store import Store

TMP_DIR = ".syncd-tmp"
RESULT_RECORD = "syncd-result.json"
_RESERVED_SMB = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?$", re.IGNORECASE)
_SMB_FORBIDDEN = set('<>:"|?*')


def check_outbox_key(key: str) -> str | None:
    """Why ``key`` must not be written into the outbox, or None when it is safe."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        return "empty, absolute, or contains a backslash or NUL"
    for part in key.rstrip("/").split("/"):
        if part in ("", ".", ".."):
            return f"has a '{part or '//'}' path segment that could leave the outbox"
        if any(ord(ch) < 32 for ch in part):
            return "contains control characters"
        if _RESERVED_SMB.match(part):
            return f"'{part}' is a reserved device name on Windows/SMB shares"
        if _SMB_FORBIDDEN & set(part) or part.endswith((".", " ")):
            return f"'{part}' cannot be stored on a Windows/SMB share"
        if part == TMP_DIR:
            return f"'{TMP_DIR}' is reserved for syncd's temporary files"
    return None


@dataclass
class MirrorReport:
    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0


class Outbox:
    def __init__(self, root: Path, store: Store):
        self.root = root
        self.store = store

    def prepare(self) -> None:
        """Create the outbox and remove temporary files a crash left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)

    def _tmp_path(self) -> Path:
        tmp = self.root / TMP_DIR
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.part"

    def path_for(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def mirror(self, storage: Storage, bucket: str, prefix: str, *, exclude: Iterable[str] = ()) -> MirrorReport:
        """Bring ``outbox/<bucket>/<prefix>…`` up to date with the remote prefix. Idempotent."""
        report = MirrorReport()
        excluded = set(exclude)
        seen_folded: dict[str, str] = {}
        for obj in storage.list(bucket, prefix):
            if obj.key in excluded:
                continue
            problem = check_outbox_key(obj.key)
            folded = obj.key.casefold()
            if problem is None and folded in seen_folded and seen_folded[folded] != obj.key:
                problem = f"differs only by letter case from '{seen_folded[folded]}' (SMB shares can't hold both)"
            if problem:
                report.refused.append((obj.key, problem))
                continue
            seen_folded[folded] = obj.key
            dest = self.path_for(bucket, obj.key)
            if obj.key.endswith("/"):
                dest.mkdir(parents=True, exist_ok=True)
                continue
            index_key = f"{bucket}/{obj.key}"
            known = self.store.delivered(index_key)
            if known is not None and known[:2] == (obj.size, obj.etag):
                try:
                    st = dest.stat()
                    if (st.st_size, st.st_mtime_ns) == (obj.size, known[2]):
                        report.skipped.append(obj.key)
                        continue
                except FileNotFoundError:
                    pass
            tmp = self._tmp_path()
            try:
                storage.get_file(bucket, obj.key, tmp)
                self._place(tmp, dest, f"{bucket}/{obj.key}")
            finally:
                tmp.unlink(missing_ok=True)
            st = dest.stat()
            self.store.record_delivered(index_key, obj.size, obj.etag, st.st_mtime_ns)
            report.fetched.append(obj.key)
            report.bytes += obj.size
        return report

    def _place(self, tmp: Path, dest: Path, what: str) -> None:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise PermanentError(f"outbox {dest}: a file and a folder would share this path ({what})") from exc
        except OSError as exc:
            raise os_error(exc, f"writing {dest}") from exc

    def write_json(self, bucket: str, key: str, data: dict[str, Any]) -> Path:
        """Write a JSON file into the outbox atomically (used for the result record, written last)."""
        dest = self.path_for(bucket, key)
        tmp = self._tmp_path()
        try:
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2, ensure_ascii=False)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            self._place(tmp, dest, key)
        except OSError as exc:
            raise os_error(exc, f"writing {dest}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
