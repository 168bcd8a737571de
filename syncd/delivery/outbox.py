"""Mirror remote prefixes into the local outbox tree, atomically and incrementally.

``outbox/<bucket>/<key…>`` mirrors the bucket. Every file is downloaded into
``outbox/.syncd-tmp/`` and renamed into place, so nothing partial is ever at a
final path (the transfer itself is :mod:`syncd.delivery.mirror`, shared with standing
mirrors and ``syncd sync``). Remote keys are untrusted: a key that would escape the outbox or
that a Windows/SMB share cannot hold is refused and reported, never written.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from syncd.config import MirrorConfig, RetryPolicy
from syncd.delivery.mirror import RESULT_RECORD, Mirror, MirrorReport
from syncd.errors import PermanentError, SyncdError
from syncd.fsutil import TMP_DIR, fsync_dir, fsync_path, in_folder, os_error, place_file
from syncd.log import logger
from syncd.names import check_outbox_key
from syncd.state.store import Store
from syncd.storage.base import Storage

__all__ = ["Outbox", "MirrorReport", "check_outbox_key", "RESULT_RECORD", "TMP_DIR"]


class Outbox:
    def __init__(self, root: Path, store: Store, retry: RetryPolicy | None = None):
        self.root = root
        self.store = store
        # attempts=1: a job's collect step is retried by the engine's policy, not here.
        self.mirror_engine = Mirror(store, retry, attempts=1)
        self._no_reflink: set[tuple[int, int]] = set()  # (source, outbox) devices where a reflink failed

    def prepare(self) -> None:
        """Create the outbox and remove temporary files a crash left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.root / TMP_DIR, ignore_errors=True)

    def _tmp_path(self) -> Path:
        return self.root / TMP_DIR / f"{os.getpid()}-{uuid.uuid4().hex}.part"

    def path_for(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def mirror(
        self,
        storage: Storage,
        bucket: str,
        prefix: str,
        *,
        exclude: Iterable[str] = (),
        delete: bool = False,
        engine: Mirror | None = None,
        check_key: Callable[[str], str | None] = check_outbox_key,
    ) -> MirrorReport:
        """Bring ``outbox/<bucket>/<prefix>…`` up to date with the remote prefix. Idempotent.

        Raises the classified error when an object could not be fetched (after the others were).
        """
        report = (engine or self.mirror_engine).run(
            storage,
            bucket,
            prefix,
            self.root / bucket,
            tmp_dir=self.root / TMP_DIR,
            exclude=exclude,
            delete=delete,
            check_key=check_key,
        )
        report.raise_for_failures()
        return report

    def _place(self, tmp: Path, dest: Path, what: str) -> None:
        try:
            os.chmod(tmp, 0o644)
            in_folder(dest.parent, lambda: os.replace(tmp, dest))
            fsync_dir(dest.parent)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise PermanentError(f"outbox {dest}: a file and a folder would share this path ({what})") from exc
        except OSError as exc:
            raise os_error(exc, f"writing {dest}") from exc

    def put_file(self, bucket: str, key: str, source: Path) -> Path:
        """Place a copy of ``source`` at ``<bucket>/<key>`` atomically and durably (the result record, written
        last). On the outbox's filesystem it is a link to ``source`` (or a reflink): one file, not two."""
        dest = self.path_for(bucket, key)
        tmp = self._tmp_path()
        try:
            how = in_folder(tmp.parent, lambda: place_file(source, tmp, no_reflink=self._no_reflink))
            if how != "copy":  # a copy is flushed already; what a link names may not be
                fsync_path(tmp)
            self._place(tmp, dest, key)
        except OSError as exc:
            raise os_error(exc, f"writing {dest}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def run_standing_mirror(
    mirror: MirrorConfig, storage: Storage, store: Store, retry: RetryPolicy, *, announce: bool = False
) -> MirrorReport | None:
    """One pass of a ``mirrors:`` entry; logs the outcome and never raises a classified error. With
    ``announce`` (a first pass) the outcome is logged even when nothing changed.

    A failed pass is simply tried again at the next interval (the daemon's timer).
    """
    log = logger.bind(mirror=mirror.name)
    engine = Mirror(store, retry, attempts=mirror.attempts, fsync=mirror.fsync)
    root = mirror.outbox
    try:
        root.mkdir(parents=True, exist_ok=True)
        report = engine.run(
            storage,
            mirror.bucket,
            mirror.prefix,
            root / mirror.bucket,
            tmp_dir=root / TMP_DIR,
            delete=mirror.delete,
            check_key=check_outbox_key,
        )
    except SyncdError as exc:
        log.error(
            "mirror {} of {}:{}/{} failed: {}; trying again in {:.0f}s",
            mirror.name,
            mirror.storage,
            mirror.bucket,
            mirror.prefix,
            exc,
            mirror.every,
        )
        return None
    except OSError as exc:
        log.error("mirror {}: {}; trying again in {:.0f}s", mirror.name, os_error(exc, str(root)), mirror.every)
        return None
    for key, error in report.failed:
        log.error("mirror {}: {}/{} not fetched: {}", mirror.name, mirror.bucket, key, error)
    if announce or report.fetched or report.deleted or report.failed:
        log.info(
            "mirror {} ({}:{}/{} → {}): fetched {} ({} bytes), unchanged {}, refused {}, deleted {}, failed {}; "
            "next pass in {:.0f}s",
            mirror.name,
            mirror.storage,
            mirror.bucket,
            mirror.prefix,
            root / mirror.bucket,
            len(report.fetched),
            report.bytes,
            len(report.skipped),
            len(report.refused),
            len(report.deleted),
            len(report.failed),
            mirror.every,
        )
    return report
