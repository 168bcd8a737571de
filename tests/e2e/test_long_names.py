"""Name-length limits (issue 16, class 5): every name syncd derives from a legal user name fits the
filesystem's 255-byte limit, so a second rejected folder with a 255-byte name reaches failed/ (its
``-2`` name is cut, never overflowing) once, with no retry loop in the log."""

from __future__ import annotations

import os

import pytest

from syncd.intake.spool import unique_path
from syncd.names import NAME_MAX, fit_name
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", ["a" * 255, "é" * 127 + "x", "日本" * 42 + "abc", "x" * 250 + "é" * 2, "short"])
def test_every_derived_name_fits_and_never_splits_a_character(tmp_path, name):
    assert len(name.encode()) <= NAME_MAX
    for suffix in ("-2", "-10", "-12345", ".status.txt"):
        derived = fit_name(name, suffix, tag="20260101-000000-abcdef")
        assert len(derived.encode()) <= NAME_MAX and derived.endswith(suffix)
        derived.encode("utf-8")  # whole characters only
    parent = tmp_path / "failed"
    parent.mkdir()
    made = []
    for _ in range(4):  # the folder, then -2, -3, -4: all distinct, all creatable
        path = unique_path(parent, name)
        path.mkdir()
        made.append(path.name)
    assert len(set(made)) == 4 and made[0] == name


def test_two_rejected_folders_with_the_same_255_byte_name_both_reach_failed_once(tmp_path):
    daemon = SyncdProcess(make_config(tmp_path / "site", settle="0.2s", rescan="1s")).start()
    name = "é" * 127 + "x"  # 255 bytes, over the 200-byte job name limit: rejected
    try:
        for n in (1, 2):
            drop_job(daemon.inbox, name, {"command": "true"})
            wait_for(
                lambda n=n: len(os.listdir(tmp_path / "site" / "failed")) == n,
                timeout=20,
                what=f"rejected folder {n} in failed/",
            )
        failed = sorted(os.listdir(tmp_path / "site" / "failed"))
        assert name in failed and all(len(f.encode()) <= NAME_MAX for f in failed), failed
        second = next(f for f in failed if f != name)
        assert second.endswith("~-2") and os.path.exists(tmp_path / "site" / "failed" / second / "ERROR.txt")
        drop_job(daemon.inbox, "after", {"command": "echo ok > ok.txt"})
        assert daemon.result("after")["state"] == "succeeded"
        log = daemon.log()
        assert "finishing failed" not in log and "File name too long" not in log, log[-3000:]
        wait_for(lambda: not os.listdir(daemon.inbox / ".syncd" / "claimed"), what="nothing left in the spool")
    finally:
        daemon.stop()
