"""A claim's rename that happened although the filesystem reported "not found" (an NFSv3 client retrying a
request whose reply was lost) keeps the job: the folder is in the spool, so it is syncd's."""

from __future__ import annotations

import os

from syncd.backends.memory import MemoryService
from syncd.state.states import CLAIMED
from tests.support.harness import make_job
from tests.unit.test_engine_contract import World


def test_a_claim_reported_as_not_found_after_the_rename_happened_keeps_the_job(tmp_path, monkeypatch):
    world = World(tmp_path, MemoryService())
    inbox = world.config.inboxes[0]
    spool = world.engine.spools[inbox.name]

    def rename_then_lose_the_reply(source, job_id):
        os.rename(source, spool.claimed / job_id)
        raise FileNotFoundError(2, "No such file or directory", str(source))

    monkeypatch.setattr(spool, "claim", rename_then_lose_the_reply)
    folder = make_job(inbox.path, "retried", {"command": "true"})
    assert world.engine.claim(inbox, folder)
    (job,) = world.store.find("retried")
    assert job.state == CLAIMED, world.events(job.id)
    assert (spool.claimed / job.id / "job.yaml").is_file()
