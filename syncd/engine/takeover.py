"""Several daemons on one shared inbox: this daemon's lease, its jobs' handoff records, and taking over the
jobs of a daemon whose lease has lapsed (README: "Several hosts, one share").

The rules that make a takeover happen once and never beside the old owner:

- A job's handoff record is rewritten after every committed transition and before the step that follows
  it (the store's transition hook calls :meth:`Takeover.share_job` first), so what a taker reads is never
  behind the side effects already done; every step is idempotent from any earlier state anyway (the
  submit key). A daemon writes only the records named after its own lease.
- This daemon acts only while its last confirmed renewal is younger than ``lease``; a taker waits until the
  lease has not moved for ``lease + grace``, fences it (one ``O_EXCL`` create: one taker wins), and waits
  ``lease`` more before it touches a job, by which time the old owner has either seen the fence or stopped.
- A fenced daemon marks its jobs ``taken_over`` and never touches them again; it then starts a new lease.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from syncd.config import InboxConfig
from syncd.engine.base import job_logger
from syncd.engine.failures import FailurePolicy
from syncd.fsutil import rename_noreplace
from syncd.log import logger
from syncd.state.share import (
    Fenced,
    Handoffs,
    LapseWatch,
    NodeClash,
    ShareLeases,
    leases_in,
    remove_leftovers,
)
from syncd.state.store import (
    CLAIMED,
    CLAIMING,
    HELD,
    REMOTE,
    STAGING,
    TAKEN_OVER,
    Job,
)


def default_node(state_dir: Path) -> str:
    """The host name and a tag of ``state_dir``: two daemons of one host (two state folders) differ."""
    host = socket.gethostname().split(".")[0] or "host"
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)[:48]
    return f"{safe}-{tag}"


def _lease_in(adopted_from: object) -> str | None:
    """The lease named at the end of an ``adopted_from`` ("host (lease)")."""
    if isinstance(adopted_from, str) and adopted_from.endswith(")") and " (" in adopted_from:
        return adopted_from.rsplit(" (", 1)[1][:-1]
    return None


def _fenced_by(share: _InboxShare, takers: set[str]) -> set[str]:
    """The leases fenced by any of ``takers``, and by those in turn (a taker that died before it had
    finished its takeover leaves that work to whoever takes it over)."""
    fences = {view.lease_id: by for view, by in leases_in(share.leases.root.parent) if by is not None}
    found: set[str] = set()
    frontier = set(takers)
    while frontier:
        frontier = {lease for lease, by in fences.items() if by in frontier and lease not in found}
        found |= frontier
    return found


def job_record(job: Job) -> dict[str, Any]:
    """The job's row as JSON can carry it (the raw folder name as hex)."""
    row: dict[str, Any] = asdict(job)
    row["dir_raw"] = job.dir_raw.hex() if job.dir_raw else None
    row["submit_key"] = job.submit_key  # derived (id, attempt), written out for a person reading the share
    return row


class _InboxShare:
    """This daemon's lease in one inbox's spool, and the takeovers it has won there."""

    def __init__(self, inbox: InboxConfig, leases: ShareLeases, handoffs: Handoffs):
        self.inbox = inbox
        self.leases = leases
        self.handoffs = handoffs
        self.valid_until = 0.0  # monotonic: this daemon may act on the inbox's jobs until then
        self.watch = LapseWatch()
        #: leases this daemon fenced → when their jobs may be taken (monotonic); their records are swept at
        #: every renewal, since a stopped owner that wakes mid-write may still leave one
        self.taken: dict[str, float] = {}
        self.clashed = False  # another daemon renews this daemon's lease (one node name for two)
        self.claims_seen: dict[str, float] = {}  # job → when its unfinished claim was first seen (monotonic)
        self.refused: set[str] = set()  # jobs this daemon cannot take over (a backend it lacks): logged once


class Takeover(FailurePolicy):
    """The engine's side of sharing an inbox with other daemons (inactive unless ``takeover.enabled``)."""

    _shares: dict[str, _InboxShare]

    @property
    def takeover_enabled(self) -> bool:
        return self.config.takeover.enabled

    def _lease_id(self, inbox: str) -> str:
        generation = self.store.meta(f"lease_generation:{inbox}") or "1"
        return f"{self._node}.{generation}"

    def prepare_share(self) -> None:
        """Create the share's folders and this daemon's leases; take back jobs a crash left half-adopted."""
        self._shares = {}
        if not self.takeover_enabled:
            return
        self._node = self.config.takeover.node or default_node(self.config.state_dir)
        self._share_lock = threading.Lock()
        for inbox in self._inboxes.values():
            self._open_share(inbox)

    def open_new_shares(self) -> None:
        """After a reload: hold a lease on the shares of inboxes that were added."""
        if self.takeover_enabled:
            for inbox in self._inboxes.values():
                if inbox.name not in self._shares:
                    self._open_share(inbox)

    def _open_share(self, inbox: InboxConfig) -> None:
        root = self.spools[inbox.name].root
        share = _InboxShare(inbox, ShareLeases(root, self._lease_id(inbox.name), self._node), Handoffs(root))
        share.leases.prepare()
        share.handoffs.prepare()
        remove_leftovers(root, lambda writer: writer.startswith(f"{self._node}."))  # an earlier life's
        self._shares[inbox.name] = share
        self._renew(share)
        share.taken.update(self._taken_before(share))
        names = share.handoffs.names()
        recorded = {job_id for job_id, _ in names}
        for job_id, lease in names:
            if lease != share.leases.lease_id:
                continue
            if not self.store.has(job_id):  # adopted on the share, not yet in this store (a crash in between)
                found = share.handoffs.read(job_id, lease)
                if found is not None:
                    self._adopt_row(share, found[1], found[1].get("adopted_from") or "an earlier life")
            elif self.store.get(job_id).finished:  # finished; a crash came before its record left the share
                share.handoffs.remove(job_id, lease)
        for job in self.store.open_jobs(inbox.name):  # e.g. claimed before takeover was enabled: recorded now
            if job.id not in recorded:
                share.handoffs.write(job_record(job), share.leases.lease_id, host=share.leases.host, new=True)

    def _taken_before(self, share: _InboxShare) -> dict[str, float]:
        """The leases this daemon (any of its lives) fenced, and those they had fenced: their records stay
        this daemon's to sweep."""
        at = time.monotonic() + self.config.takeover.lease
        mine = {view.lease_id for view, _ in leases_in(share.leases.root.parent) if view.node == self._node}
        return dict.fromkeys(_fenced_by(share, mine | {share.leases.lease_id}), at)

    # -- acting only while the lease holds ---------------------------------------------------------
    def may_act(self, inbox: str) -> bool:
        """True while this daemon's lease on ``inbox``'s share is confirmed (always, without takeover)."""
        share = self._shares.get(inbox) if self.takeover_enabled else None
        return share is None or time.monotonic() < share.valid_until

    def may_act_everywhere(self) -> bool:
        return all(self.may_act(inbox) for inbox in self._shares) if self.takeover_enabled else True

    def share_job(self, job: Job) -> None:
        """Record ``job`` on the share before the step that follows its last transition."""
        share = self._shares.get(job.inbox) if self.takeover_enabled else None
        if share is None or job.state == TAKEN_OVER:
            return
        if job.finished:
            share.handoffs.remove(job.id, share.leases.lease_id)
            return
        if not self.may_act(job.inbox):  # stopped mid-step past its lease: the job may be another's by now
            lease = share.leases.lease_id
            raise Fenced(lease, "nobody yet", f"lease {lease} is not confirmed: the step stops until it is")
        share.handoffs.write(job_record(job), share.leases.lease_id, host=share.leases.host, new=job.state == CLAIMING)

    def unshare_job(self, job: Job) -> None:
        """The job is finished: its record leaves the share."""
        share = self._shares.get(job.inbox) if self.takeover_enabled else None
        if share is not None:
            share.handoffs.remove(job.id, share.leases.lease_id)

    # -- the lease loop (the daemon calls this every ``renew``) ------------------------------------
    def tend_share(self) -> None:
        """Renew this daemon's leases, notice lapsed ones, take over what this daemon has won."""
        if not self.takeover_enabled or self._stopping.is_set():
            return
        for share in list(self._shares.values()):
            try:
                self._renew(share)
                self._look_for_lapses(share)
                self._take_over_due(share)
            except OSError as exc:
                logger.warning(
                    "inbox {}: cannot reach the share's leases in {} ({}); this daemon pauses its jobs there "
                    "until it can renew its lease",
                    share.inbox.name,
                    share.leases.root,
                    exc.strerror or exc,
                )

    def _renew(self, share: _InboxShare) -> bool:
        """Renew the lease; True if it had been taken over (the jobs are handed over, a new lease begins)."""
        with self._share_lock:
            started = time.monotonic()
            try:
                share.leases.renew()
            except Fenced as fenced:
                self._fenced(share, fenced)
                return True
            except NodeClash as clash:
                share.valid_until = 0.0  # the one that saw the other first stands aside; it must not act
                if not share.clashed:
                    logger.error(
                        "inbox {}: {}; this daemon leaves the inbox's jobs alone until then", share.inbox.name, clash
                    )
                share.clashed = True
                return False
            share.clashed = False
            share.valid_until = started + self.config.takeover.lease
            return False

    def wait_for_lease(self, inbox: str) -> bool:
        """Renew the lease of ``inbox`` now; True if it had been taken over."""
        share = self._shares.get(inbox) if self.takeover_enabled else None
        return share is not None and self._renew(share)

    def claim_still_ours(self, job: Job, path: Path) -> bool:
        """This daemon's lease lapsed while it claimed ``path`` (it was stopped in between): whether a
        daemon that took over has the folder decides who goes on. True if this daemon may complete the claim."""
        if not self.wait_for_lease(job.inbox):
            return True  # not fenced after all: the lease was renewed
        if not self.claim_dropped(job):
            return False  # the taker has it, or will find it in the spool
        spool = self.spools[job.inbox]
        try:
            rename_noreplace(spool.claimed / job.id, path)
        except FileNotFoundError:
            pass  # the taker had it after all: it is that daemon's job
        except OSError as exc:
            job_logger(job).error("could not put {} back into the inbox ({}); move it back by hand", path, exc)
        else:
            job_logger(job).warning("put {} back into the inbox: this daemon's lease lapsed during the claim", path)
        return False

    def claim_dropped(self, job: Job) -> bool:
        """After a claim that raced a takeover: True if the taker gave up looking for the claimed folder (it
        is to go back into the inbox), False if the taker has the job or will find its folder."""
        share = self._shares[job.inbox]
        for _ in range(2):
            if share.handoffs.owners(job.id):
                return False
            if not share.handoffs.dropped(job.id):
                return True  # no record at all: nobody is looking for the folder
            time.sleep(1.0)  # the taker looks at the folder once more right after dropping the record
        return not share.handoffs.owners(job.id)

    def _fenced(self, share: _InboxShare, fenced: Fenced) -> None:
        """Another daemon took this lease over: its jobs are that daemon's now; start a new lease."""
        share.valid_until = 0.0
        inbox = share.inbox.name
        taken = self.store.hand_over(
            inbox, fenced.by, f"taken over by {fenced.by}: this daemon's lease {fenced.lease_id} had lapsed"
        )
        logger.error(
            "inbox {}: this daemon's lease {} lapsed (stopped, or cut off from the share) and {} took over its "
            "{} unfinished job(s); they are that daemon's now. Starting a new lease",
            inbox,
            fenced.lease_id,
            fenced.by,
            len(taken),
        )
        generation = int(fenced.lease_id.rsplit(".", 1)[1]) + 1
        self.store.set_meta(f"lease_generation:{inbox}", str(generation))
        share.leases = ShareLeases(share.leases.root.parent, self._lease_id(inbox), self._node)
        share.leases.renew()
        share.valid_until = time.monotonic() + self.config.takeover.lease

    def _look_for_lapses(self, share: _InboxShare) -> None:
        settings = self.config.takeover
        if not self.may_act(share.inbox.name):
            return  # a daemon that is not sure of its own lease takes nothing over
        for lapsed in share.watch.lapsed(share.leases.others(), settings.lease + settings.grace):
            if share.leases.fence(lapsed.lease_id):
                logger.warning(
                    "inbox {}: the lease {} of {} (pid {}) has not been renewed for {:g}s; taking its jobs over",
                    share.inbox.name,
                    lapsed.lease_id,
                    lapsed.host,
                    lapsed.pid,
                    settings.lease + settings.grace,
                )
                # Its owner may have confirmed its lease just before the fence: it acts for ``lease`` at most.
                at = time.monotonic() + settings.lease
                share.taken[lapsed.lease_id] = at
                for lease in _fenced_by(share, {lapsed.lease_id}):  # what it had taken over and not finished
                    share.taken.setdefault(lease, at)

    def _take_over_due(self, share: _InboxShare) -> None:
        """Sweep the records of the leases this daemon fenced: adopt each job once, and remove what a stopped
        owner that woke up mid-write left beside a record that supersedes it."""
        now = time.monotonic()
        due = {lease for lease, at in share.taken.items() if at <= now}
        if not due or not self.may_act(share.inbox.name):
            return
        by_job: dict[str, set[str]] = {}
        for job_id, lease in share.handoffs.names():
            by_job.setdefault(job_id, set()).add(lease)
        for job_id, leases in by_job.items():
            ours = leases & due
            if not ours:
                continue
            if leases - share.taken.keys() or self.store.has(job_id):  # a live daemon's, or this one's already
                for lease in ours:
                    share.handoffs.remove(job_id, lease)
                continue
            rows = {lease: found for lease in ours if (found := share.handoffs.read(job_id, lease)) is not None}
            superseded = {_lease_in(row.get("adopted_from")) for _, row in rows.values()}
            current = [lease for lease in sorted(rows) if lease not in superseded]
            for lease in set(rows) - set(current[:1]):
                share.handoffs.remove(job_id, lease)
            if current:
                host, row = rows[current[0]]
                self._take_one(share, current[0], host, row)
        remove_leftovers(share.leases.root.parent, due.__contains__)  # one listing for all of them
        self.wake()

    def _take_one(self, share: _InboxShare, lease: str, host: str, row: dict[str, Any]) -> None:
        """Make one job of a lapsed lease this daemon's (unless it must wait: a backend this daemon lacks)."""
        name, job_id = row.get("name", "?"), str(row.get("id"))
        for kind, wanted, known in (
            ("backend", row.get("backend"), self.backends),
            ("storage", row.get("storage"), self.storages),
        ):
            if wanted not in known:
                if job_id not in share.refused:
                    share.refused.add(job_id)
                    logger.error(
                        "inbox {}: cannot take over job {} ({}) from {}: this daemon has no {} named '{}'; give "
                        "every daemon of the share the same backends and storages (tried again at each renewal)",
                        share.inbox.name,
                        name,
                        job_id,
                        host,
                        kind,
                        wanted,
                    )
                return
        row = dict(row, adopted_from=f"{host} ({lease})")
        clear_drop = False
        if row.get("state") == CLAIMING:
            if not Path(row["spool_path"]).exists():
                # The claim's rename has not happened: it never will (the folder is claimed afresh from the
                # inbox), or the old owner was stopped just before it. Look again for a while, then drop it;
                # the old owner puts a folder it claims after that back into the inbox.
                first = share.claims_seen.setdefault(job_id, time.monotonic())
                settings = self.config.takeover
                if time.monotonic() - first < settings.lease + settings.grace:
                    return
                share.handoffs.drop(job_id, lease)
                share.claims_seen.pop(job_id, None)
                if not Path(row["spool_path"]).exists():
                    share.handoffs.clear_drop(job_id)  # decided: an old owner that finds nothing gives the folder back
                    return
                clear_drop = True  # the folder came after all: the record comes back, as this daemon's
            row["state"] = CLAIMED
        # The share first: a crash between the two is found by prepare_share at the next start.
        share.handoffs.write(row, share.leases.lease_id, host=share.leases.host, adopted_from=lease)
        if clear_drop:
            share.handoffs.clear_drop(job_id)
        self._adopt_row(share, row, row["adopted_from"])

    def _adopt_row(self, share: _InboxShare, row: dict[str, Any], adopted_from: str) -> None:
        values = dict(row)
        values["dir_raw"] = bytes.fromhex(values["dir_raw"]) if values.get("dir_raw") else None
        values.update(inbox=share.inbox.name, finished=0, next_at=0, taken_by=None, adopted_from=adopted_from)
        if not self.store.adopt_job(values, f"taken over from {adopted_from}: its lease had lapsed"):
            return
        job = self.store.get(values["id"])
        job_logger(job).warning("taken over from {} (its lease lapsed), in state {}", adopted_from, job.state)
        backend = self.backends[job.backend]
        # A submission under way is finished by the usual find-then-submit (the same submit key); a job that
        # ran on the lost host and cannot be found from here is the ``local_jobs`` policy's.
        if backend.capabilities.host_bound and job.state in REMOTE:
            if backend.find(self.spec(job)) is None:
                self._died_with_its_host(job, adopted_from)

    def _died_with_its_host(self, job: Job, adopted_from: str) -> None:
        """A job that ran on the lost host and left nothing this host can see: the ``local_jobs`` policy. Either
        way the next run is a new attempt (a new submit key), staged again from the claimed folder."""
        why = f"it ran on {adopted_from}, which is gone, and its work folder is not visible from this host"
        fresh_attempt = {
            "attempts": job.attempts + 1,
            "remote_id": None,
            "handle": None,
            "remote_state": None,
            "started_at": None,
            "submitted_at": None,
            "next_at": 0,
            **self._clear_failures(),
        }
        if self.config.takeover.local_jobs == "hold":
            reason = (
                f"{why}; '{self.command('retry', job)}' runs it again here as attempt {job.attempts + 1}, "
                f"'{self.command('cancel', job)}' ends it"
            )
            held = {**fresh_attempt, "held_from": STAGING, "error": reason}
            self.store.transition(job.id, job.state, HELD, f"held: {reason}", **held)
            job_logger(job).error("held for attention: {}", reason)
            return
        self.store.transition(
            job.id, job.state, STAGING, f"{why}: running it again as attempt {job.attempts + 1}", **fresh_attempt
        )
        job_logger(job).warning("{}: running it again as attempt {}", why, job.attempts + 1)
