"""The storage contract: buckets of objects addressed by keys (S3 semantics).

Keys are ``/``-separated; a key ending in ``/`` is a directory marker. Every
method is idempotent. Failures are classified, never retried here:
:class:`~syncd.errors.TransientError` (worth retrying), PermanentError,
AuthError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

from syncd.config import StorageOptions
from syncd.errors import PermanentError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # changes whenever the content changes; compare, don't interpret
    modified: float | None = None


def check_key(key: str) -> None:
    """Refuse keys no storage should accept: empty segments, '..', backslashes, NUL."""
    if not key or key.startswith("/"):
        raise PermanentError(f"object key {key!r} is empty or absolute")
    parts = key.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in key or "\x00" in key:
        raise PermanentError(f"object key {key!r} has an unsafe path segment ('', '.', '..', '\\' or NUL)")


class Storage(ABC):
    """One object store. Instances are built from their options and hold no job state."""

    options_model: ClassVar[type[StorageOptions]] = StorageOptions

    def __init__(self, name: str, options: StorageOptions):
        self.name = name
        self.options = options

    @abstractmethod
    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` if it does not exist. Idempotent."""

    @abstractmethod
    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``. A missing bucket raises PermanentError."""

    @abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    @abstractmethod
    def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        """Upload ``source`` as ``key``; readers never see a partial object. Idempotent."""

    @abstractmethod
    def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        """Download ``key`` into ``dest`` (a temporary path the caller renames), verifying size."""

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def close(self) -> None:
        """Release connections. Optional."""
