"""The storage contract: buckets of objects addressed by keys (S3 semantics).

Keys are ``/``-separated; a key ending in ``/`` is a directory marker. Every
method is idempotent. Failures are classified, never retried here:
:class:`~syncd.errors.TransientError` (worth retrying), PermanentError,
AuthError.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from syncd.config import StorageOptions
from syncd.errors import PermanentError, SyncdError, TransientError


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # changes whenever the content changes; compare, don't interpret
    modified: float | None = None
    # A content digest the storage verified or stored, as "<algorithm>:<hex>" (e.g. "sha256:…"), if known.
    checksum: str | None = None


def check_key(key: str) -> None:
    """Refuse keys no storage should accept: empty segments, '..', backslashes, NUL."""
    if not key or key.startswith("/"):
        raise PermanentError(f"object key {key!r} is empty or absolute")
    parts = key.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts) or "\\" in key or "\x00" in key:
        raise PermanentError(f"object key {key!r} has an unsafe path segment ('', '.', '..', '\\' or NUL)")


INPUTS_FOLDER = "_inputs"


def inputs_prefix(prefix: str, job_id: str) -> str:
    """Where stage-in through a bucket puts a job's inputs: ``<prefix>/_inputs/<job id>/``.

    For backends that read inputs from a bucket (not a shared filesystem). The folder sits
    apart from results (a job named ``_inputs`` gets ``_inputs-2/`` for its results, since
    the engine never reuses a folder that holds objects), the job id keeps attempts of
    different jobs apart, and the backend removes it in ``cleanup``.
    """
    base = prefix.strip("/")
    return f"{base}/{INPUTS_FOLDER}/{job_id}/" if base else f"{INPUTS_FOLDER}/{job_id}/"


class Storage(ABC):
    """One object store. Instances are built from their options and hold no job state."""

    options_model: ClassVar[type[StorageOptions]] = StorageOptions
    #: False for storages on a local or mounted filesystem: no circuit breaker (one bad file must not
    #: make every other job wait for a probe)
    remote_service: ClassVar[bool] = True
    #: the methods that reach the service (the engine puts them behind its circuit breaker)
    remote_calls: ClassVar[frozenset[str]] = frozenset(
        {"ensure_bucket", "list", "head", "put_file", "get_file", "fetch", "fetch_many", "copy", "delete"}
    )
    #: True when :meth:`fetch_many` beats :meth:`fetch` called from many threads (a mirror then hands
    #: it the small objects)
    batch_fetch: ClassVar[bool] = False

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

    def fetch(self, bucket: str, key: str, dest: Path, expected: ObjectInfo | None = None) -> ObjectInfo:
        """:meth:`get_file` for a mirror: refuse a version other than ``expected`` (from :meth:`list`).

        A changed object raises TransientError (the next pass fetches the new version).
        Storages override this to verify content digests (MD5, SHA-256) while streaming; a
        mismatch is a TransientError too. Must be safe to call from many threads at once.
        """
        info = self.get_file(bucket, key, dest)
        if expected is not None and info.etag != expected.etag:
            raise TransientError(f"{self.name}:{bucket}/{key} changed while it was fetched; it is fetched again")
        return info

    def fetch_many(
        self, bucket: str, items: Sequence[tuple[ObjectInfo, Path]]
    ) -> Iterator[tuple[ObjectInfo, Path, ObjectInfo | BaseException]]:
        """:meth:`fetch` each ``(expected, dest)``, yielding ``(expected, dest, info or exception)``.

        A failure of one object is yielded, not raised, and never retried here: the caller fetches
        it again with :meth:`fetch`. An exception raised ends the whole batch. Objects may complete
        in any order.
        """
        for expected, dest in items:
            try:
                yield expected, dest, self.fetch(bucket, expected.key, dest, expected)
            except SyncdError as exc:
                yield expected, dest, exc

    def copy(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> ObjectInfo:
        """Copy an object to ``dst_key`` (in the same storage); the destination's info. Idempotent.

        Storages override this to copy without moving the bytes (server-side, a link). This default
        is correct for any storage: :meth:`get_file` into a temporary file (in ``$TMPDIR``), then
        :meth:`put_file`. A missing source raises PermanentError.
        """
        import tempfile

        with tempfile.TemporaryDirectory(prefix="syncd-copy-") as scratch:
            local = Path(scratch) / "object"
            if src_key.endswith("/"):
                local.touch()  # a directory marker has no content to fetch
                if self.head(src_bucket, src_key) is None:
                    raise PermanentError(
                        f"copying {self.name}:{src_bucket}/{src_key}: the source object does not exist"
                    )
            else:
                self.get_file(src_bucket, src_key, local)
            return self.put_file(dst_bucket, dst_key, local)

    def presign(self, bucket: str, key: str, method: str = "GET", expires: float = 3600) -> str:
        """A URL that lets anyone holding it ``GET`` (download) or ``PUT`` (upload) the object without
        credentials, for ``expires`` seconds: for services that fetch inputs or deliver results by URL.

        Storages that have URLs override this; the default refuses with a PermanentError.
        """
        raise PermanentError(
            f"storage '{self.name}' (type: {self.options.type}) cannot make a URL for {bucket}/{key}; "
            f"a backend whose service fetches inputs by URL needs an s3 storage on its inbox"
        )

    def same_content(self, info: ObjectInfo, local: Path) -> bool | None:
        """Whether ``local`` holds the object's content without downloading it, or None if unknown.

        Lets a mirror adopt a file already in place (after a crash, or a first mirror into an
        existing tree) by hashing it locally instead of fetching it again.
        """
        return None

    #: How many objects a mirror may fetch at once from this storage.
    transfer_workers: int = 8

    def transfer_threads(self, count: int, total_bytes: int) -> int:
        """How many threads should move ``count`` objects of ``total_bytes`` together; 1 means the caller's."""
        return max(1, min(self.transfer_workers, count))

    @abstractmethod
    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def close(self) -> None:
        """Release connections. Optional."""
