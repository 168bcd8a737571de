"""What daemons sharing an inbox keep on the share: leases, fences, handoff records."""

from __future__ import annotations

import json
import threading

import pytest

from syncd.state.share import (
    Fenced,
    Handoffs,
    LapseWatch,
    LeaseView,
    NodeClash,
    ShareLeases,
    leases_in,
    remove_leftovers,
)


def test_a_lease_is_renewed_with_a_rising_counter_and_seen_by_the_others(tmp_path):
    a, b = ShareLeases(tmp_path, "a.1", "a"), ShareLeases(tmp_path, "b.1", "b")
    a.prepare()
    a.renew()
    a.renew()
    b.renew()
    seen = b.others()
    assert list(seen) == ["a.1"] and seen["a.1"].renewals == 2 and seen["a.1"].node == "a"
    assert list(a.others()) == ["b.1"]
    assert not [p for p in (tmp_path / "leases").iterdir() if p.name.endswith(".tmp")], "no temporary file is left"


def test_a_lapse_is_timed_on_the_readers_clock_from_the_last_change_it_saw():
    now = [100.0]
    watch = LapseWatch(clock=lambda: now[0])

    def views(renewals: int) -> dict[str, LeaseView]:
        return {"a.1": LeaseView("a.1", "a", "host-a", 1, renewals, 0.0)}

    assert watch.lapsed(views(5), after=3) == []  # first sight starts the count
    now[0] += 2.9
    assert watch.lapsed(views(5), after=3) == []
    now[0] += 0.2
    assert [v.lease_id for v in watch.lapsed(views(5), after=3)] == ["a.1"]
    assert watch.lapsed(views(6), after=3) == [], "a renewal seen starts the count again"
    now[0] += 2.0
    assert watch.lapsed(views(6), after=3) == []
    assert watch.lapsed({}, after=3) == [], "a lease gone from the share is forgotten"


def test_of_many_daemons_fencing_one_lease_at_once_exactly_one_wins(tmp_path):
    ShareLeases(tmp_path, "dead.1", "dead").renew()
    takers = [ShareLeases(tmp_path, f"t{n}.1", f"t{n}") for n in range(8)]
    start = threading.Barrier(len(takers))
    won: list[str] = []

    def fence(taker: ShareLeases) -> None:
        start.wait()
        if taker.fence("dead.1"):
            won.append(taker.lease_id)

    threads = [threading.Thread(target=fence, args=(t,)) for t in takers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert json.loads((tmp_path / "leases" / "dead.1.fenced").read_text())["by"] == won[0]
    assert "dead.1" not in takers[0].others(), "a fenced lease is no one's to take over again"


def test_a_fenced_owner_learns_it_at_its_next_renewal_and_by_whom(tmp_path):
    owner, taker = ShareLeases(tmp_path, "a.1", "a"), ShareLeases(tmp_path, "b.1", "b")
    owner.renew()
    assert taker.fence("a.1")
    with pytest.raises(Fenced) as caught:
        owner.renew()
    assert caught.value.by == "b.1" and caught.value.lease_id == "a.1"
    with pytest.raises(Fenced):
        owner.renew()  # and at every one after: the fence is never removed
    assert {view.lease_id: fenced for view, fenced in leases_in(tmp_path)} == {"a.1": "b.1"}


def test_a_handoff_record_holds_the_job_and_a_daemon_that_lost_it_cannot_update_it(tmp_path):
    records = Handoffs(tmp_path)
    records.prepare()
    job = {"id": "j1", "state": "claiming", "manifest": '{"command": "x"}'}
    with pytest.raises(Fenced):
        records.write(job, "a.1", host="host-a")  # an update of a record that was never written
    records.write(job, "a.1", host="host-a", new=True)
    records.write(dict(job, state="running"), "a.1", host="host-a")
    assert list(records.records()) == [("a.1", "host-a", dict(job, state="running"))]
    records.write(dict(job, state="running", adopted_from="host-a (a.1)"), "b.1", host="host-b", adopted_from="a.1")
    assert records.owners("j1") == ["b.1"], "the taker's record replaces the old owner's"
    with pytest.raises(Fenced, match="taken over"):
        records.write(dict(job, state="collecting"), "a.1", host="host-a")
    assert [row["state"] for _, _, row in records.records()] == ["running"], "the taker's record is untouched"
    records.remove("j1", "b.1")
    records.remove("j1", "b.1")  # twice: already gone is fine
    assert list(records.records()) == []


def test_a_dropped_claim_record_is_told_apart_from_none_at_all(tmp_path):
    records = Handoffs(tmp_path)
    records.prepare()
    records.write({"id": "j1", "state": "claiming"}, "a.1", host="h", new=True)
    records.drop("j1", "a.1")
    assert records.owners("j1") == [] and records.dropped("j1")
    records.clear_drop("j1")
    assert not records.dropped("j1")


def test_the_temporary_files_of_a_writer_killed_mid_write_are_removed_by_lease_and_no_others(tmp_path):
    records = Handoffs(tmp_path)
    records.prepare()
    (tmp_path / "leases").mkdir()
    dead = [tmp_path / "owners" / ".j1.json~a.1~0badf00d.tmp", tmp_path / "leases" / ".a.1.json~a.1~deadbeef.tmp"]
    alive = [tmp_path / "owners" / ".j2.json~b.1~12345678.tmp", tmp_path / "owners" / ".notes~a.1.tmp"]
    for path in dead + alive:
        path.write_text("{")
    remove_leftovers(tmp_path, "a.1".__eq__)
    assert [p for p in dead + alive if p.exists()] == alive


def test_two_daemons_given_one_node_name_are_told_at_a_renewal(tmp_path):
    first, twin = ShareLeases(tmp_path, "a.1", "a"), ShareLeases(tmp_path, "a.1", "a")
    first.renew()
    twin.renew()  # its first renewal: the file could be its own earlier life's
    twin.renew()
    with pytest.raises(NodeClash, match="give every daemon of the share its own takeover.node"):
        first.renew()
