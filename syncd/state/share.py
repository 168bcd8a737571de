"""What daemons that share an inbox keep on the share: a lease per daemon, a handoff record per job.

Both live in the inbox's spool (``<spool>/leases/``, ``<spool>/owners/``) and are only ever replaced by a
rename, which NFS and SMB carry out atomically; no file lock is relied on (NFS clients lose them, SMB
servers emulate them). Expiry needs no agreement between clocks: a lease carries a counter that its
owner raises at every renewal, and a reader times how long the counter stays the same on its own
monotonic clock. Only the clocks' rates are assumed equal, which they are to far better than a percent.

A lapsed lease is taken over by whoever creates ``<lease>.fenced`` first (``O_EXCL``: one creator
wins). The owner looks for that file after each renewal; once it exists the owner stops touching the
jobs of that lease. The file is never removed, so an owner that wakes up much later still finds it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd.fsutil import fsync_dir, read_regular

LEASES = "leases"
OWNERS = "owners"
RECORD_LIMIT = 4 << 20  # a handoff record holds the manifest: far below this


class NodeClash(Exception):
    """Another daemon renews the same lease: two daemons of the share were given one node name."""


class Fenced(Exception):
    """This daemon's lease was taken over: another daemon owns its jobs now."""

    def __init__(self, lease_id: str, by: str, why: str | None = None):
        super().__init__(why or f"lease {lease_id} was taken over by {by}")
        self.lease_id = lease_id
        self.by = by


def write_atomically(path: Path, data: bytes, writer: str) -> None:
    """Write ``path`` under a temporary name beside it, flush it, rename it into place.

    The temporary name carries the ``writer``'s lease: what a killed writer left is removed by whoever
    takes its lease over (:func:`remove_leftovers`)."""
    tmp = path.with_name(f".{path.name}~{writer}~{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def remove_leftovers(spool_root: Path, writer: Callable[[str], bool]) -> None:
    """Remove the temporary files of the leases ``writer`` picks (killed mid-write; never read by anyone)."""
    for folder in (spool_root / LEASES, spool_root / OWNERS):
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            continue
        for name in names:
            parts = name.split("~")
            if name.startswith(".") and name.endswith(".tmp") and len(parts) == 3 and writer(parts[1]):
                (folder / name).unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_regular(path, RECORD_LIMIT, follow=False))
    except (OSError, ValueError):
        return None  # gone meanwhile, or not one of ours
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class LeaseView:
    """A lease as read from the share."""

    lease_id: str
    node: str
    host: str
    pid: int
    renewals: int
    renewed_at: float  # the owner's wall clock: for people, never for expiry
    started: float | None = None  # when the owner started (its wall clock), for people

    @classmethod
    def parse(cls, data: dict[str, Any]) -> LeaseView | None:
        try:
            return cls(
                str(data["lease"]),
                str(data["node"]),
                str(data["host"]),
                int(data["pid"]),
                int(data["renewals"]),
                float(data["renewed_at"]),
                float(data["started"]) if data.get("started") is not None else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


class ShareLeases:
    """The leases in one spool: this daemon's own, and what it can see of the others'."""

    def __init__(self, spool_root: Path, lease_id: str, node: str):
        self.root = spool_root / LEASES
        self.lease_id = lease_id
        self.node = node
        self.host = socket.gethostname()
        self.started = time.time()
        self._renewals = 0

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, lease_id: str) -> Path:
        return self.root / f"{lease_id}.json"

    def fence_path(self, lease_id: str) -> Path:
        return self.root / f"{lease_id}.fenced"

    def fenced_by(self, lease_id: str) -> str | None:
        data = _read_json(self.fence_path(lease_id))
        if data is None:
            return "another daemon" if os.path.lexists(self.fence_path(lease_id)) else None
        return str(data.get("by", "another daemon"))

    def renew(self) -> None:
        """Raise the counter of this daemon's lease; :class:`Fenced` if it was taken over (before or meanwhile)."""
        if (by := self.fenced_by(self.lease_id)) is not None:
            raise Fenced(self.lease_id, by)
        if self._renewals:  # the file is this daemon's since its first renewal: nobody else may write it
            last = _read_json(self.path(self.lease_id))
            view = LeaseView.parse(last) if last is not None else None
            if view is not None and (view.host, view.pid, view.renewals) != (self.host, os.getpid(), self._renewals):
                raise NodeClash(
                    f"the lease {self.lease_id} in {self.root} is renewed by another daemon too ({view.host}, pid "
                    f"{view.pid}): give every daemon of the share its own takeover.node"
                )
        self._renewals += 1
        record = {
            "lease": self.lease_id,
            "node": self.node,
            "host": self.host,
            "pid": os.getpid(),
            "renewals": self._renewals,
            "renewed_at": time.time(),
            "started": self.started,
        }
        data = json.dumps(record).encode()
        try:
            write_atomically(self.path(self.lease_id), data, self.lease_id)
        except FileNotFoundError:  # the folder was removed (or never made): a lease is always welcome here
            self.prepare()
            write_atomically(self.path(self.lease_id), data, self.lease_id)
        # A taker that fenced this lease between the check above and the rename has its file by now.
        if (by := self.fenced_by(self.lease_id)) is not None:
            raise Fenced(self.lease_id, by)

    def others(self) -> dict[str, LeaseView]:
        """The other leases in this spool that are not fenced yet."""
        seen: dict[str, LeaseView] = {}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return seen
        fenced = {name[: -len(".fenced")] for name in names if name.endswith(".fenced")}
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            lease_id = name[: -len(".json")]
            if lease_id == self.lease_id or lease_id in fenced:
                continue
            data = _read_json(self.root / name)
            view = LeaseView.parse(data) if data is not None else None
            if view is not None and view.lease_id == lease_id:
                seen[lease_id] = view
        return seen

    def fence(self, lease_id: str) -> bool:
        """Claim the takeover of ``lease_id``: True for the one daemon whose file was created."""
        record = json.dumps({"by": self.lease_id, "host": self.host, "pid": os.getpid(), "at": time.time()})
        try:
            fd = os.open(self.fence_path(lease_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, record.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.root)
        return True


def leases_in(spool_root: Path) -> list[tuple[LeaseView, str | None]]:
    """Every lease in a spool and who fenced it (None while it holds), for ``syncd status``."""
    root = spool_root / LEASES
    out = []
    for path in sorted(root.glob("*.json")) if root.is_dir() else []:
        data = _read_json(path)
        view = LeaseView.parse(data) if data is not None else None
        if view is not None:
            fence = _read_json(root / f"{view.lease_id}.fenced")
            fenced = None if fence is None else str(fence.get("by", "another daemon"))
            out.append((view, fenced))
    return out


class LapseWatch:
    """How long each other lease has stayed unchanged, on this daemon's monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._seen: dict[str, tuple[int, float]] = {}  # lease → (renewals, when that value was first seen)

    def lapsed(self, leases: dict[str, LeaseView], after: float) -> list[LeaseView]:
        """The leases whose counter has not moved for ``after`` seconds (first sight starts the count)."""
        now = self._clock()
        for gone in set(self._seen) - set(leases):
            del self._seen[gone]
        out = []
        for lease_id, view in leases.items():
            renewals, since = self._seen.get(lease_id, (None, now))
            if renewals != view.renewals:
                self._seen[lease_id] = (view.renewals, now)
                continue
            if now - since >= after:
                out.append(view)
        return out


class Handoffs:
    """One record per unfinished job and owner: ``<spool>/owners/<job id>@<lease>.json``, the job's row.

    Each daemon writes only files of its own lease, so a write can never replace another daemon's record.
    A taker writes its own file, then removes the old owner's. A stopped owner that wakes up in the middle
    of a write may still finish it: that stale file beside the taker's is removed by the taker's sweeps."""

    def __init__(self, spool_root: Path):
        self.root = spool_root / OWNERS

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str, lease_id: str) -> Path:
        return self.root / f"{job_id}@{lease_id}.json"

    def write(
        self, job: dict[str, Any], lease_id: str, *, host: str, new: bool = False, adopted_from: str | None = None
    ) -> None:
        """Record ``job`` as ``lease_id``'s: a ``new`` record (a claim), one taken over from the lease
        ``adopted_from`` (whose record is then removed), or an update of the lease's own. An update whose
        record is gone raises :class:`Fenced`: another daemon took the job over."""
        path = self.path(job["id"], lease_id)
        if not new and adopted_from is None and not os.path.exists(path):
            raise Fenced(lease_id, "another daemon", f"job {job['id']} was taken over from lease {lease_id}")
        data = json.dumps({"owner": lease_id, "host": host, "job": job}).encode()
        try:
            write_atomically(path, data, lease_id)
        except FileNotFoundError:
            if self.root.is_dir():  # the temporary file went: a taker's sweep of this lease removed it
                raise Fenced(lease_id, "another daemon", f"lease {lease_id} was taken over during a write") from None
            self.prepare()  # the folder was removed: records are always welcome here
            write_atomically(path, data, lease_id)
        if adopted_from is not None:
            self.remove(job["id"], adopted_from)

    def remove(self, job_id: str, lease_id: str) -> None:
        try:
            os.unlink(self.path(job_id, lease_id))
        except FileNotFoundError:
            return

    def names(self) -> list[tuple[str, str]]:
        """(job id, lease) of every record, from the folder's listing alone."""
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(entries):
            if name.endswith(".json") and not name.startswith(".") and "@" in name:
                job_id, _, lease = name[: -len(".json")].partition("@")
                out.append((job_id, lease))
        return out

    def owners(self, job_id: str) -> list[str]:
        """The leases holding a record of ``job_id``."""
        return [lease for job, lease in self.names() if job == job_id]

    def read(self, job_id: str, lease_id: str) -> tuple[str, dict[str, Any]] | None:
        """(host, job row) of one record; None if it is gone or unreadable."""
        data = _read_json(self.path(job_id, lease_id))
        if data is None or not isinstance(data.get("job"), dict):
            return None
        return str(data.get("host", "")), data["job"]

    def records(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(owner lease, owner host, job row) of every record."""
        for job_id, lease in self.names():
            record = self.read(job_id, lease)
            if record is not None:
                yield lease, record[0], record[1]

    def drop(self, job_id: str, lease_id: str) -> None:
        """Set the record of a claim whose folder never came aside while the taker looks once more; an old
        owner that finds it waits for the outcome (:meth:`clear_drop` once decided)."""
        os.replace(self.path(job_id, lease_id), self.root / f"{job_id}.dropped")

    def clear_drop(self, job_id: str) -> None:
        os.unlink(self.root / f"{job_id}.dropped")

    def dropped(self, job_id: str) -> bool:
        return os.path.lexists(self.root / f"{job_id}.dropped")
