"""The README story, run as a user would: init, run, drop a folder, read the outbox, status."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = pytest.mark.e2e


def test_readme_story_init_run_drop_collect_status(tmp_path):
    demo = tmp_path / "demo"
    init = subprocess.run([*SYNCD, "init", str(demo)], capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert "syncd run -c" in init.stdout
    for folder in ("inbox", "outbox", "failed"):
        assert (demo / folder).is_dir()
    daemon = SyncdProcess(demo / "syncd.yaml").start()
    try:
        job = tmp_path / "j"
        job.mkdir()
        (job / "job.yaml").write_text('command: "tr a-z A-Z < in.txt > out.txt"\n')
        (job / "in.txt").write_text("hi\n")
        os.rename(job, demo / "inbox" / "j")  # mv j demo/inbox/
        result = daemon.result("j")
        out = demo / "outbox" / "results" / "j"
        assert (out / "out.txt").read_text() == "HI\n"
        assert result["state"] == "succeeded"
        assert result["exit_code"] == 0
        assert result["backend"] == "local"
        assert result["id"] and result["remote_id"] and result["started"] and result["ended"]
        assert not (out / "in.txt").exists(), "an unchanged input is not an output"
        assert (out / "syncd-stdout.txt").exists() and (out / "syncd-stderr.txt").exists()
        status = daemon.cli("status", "--json")
        jobs = json.loads(status.stdout)
        assert [j["state"] for j in jobs] == ["succeeded"]
        assert {"id", "name", "state", "backend", "remote_id", "created", "updated", "error"} <= set(jobs[0])
        table = daemon.cli("status")
        assert "succeeded" in table.stdout and jobs[0]["id"] in table.stdout
        # The claimed folder was archived, not deleted, and the inbox is empty again.
        assert [p.name for p in (demo / "inbox").iterdir()] == [".syncd"]
    finally:
        assert daemon.stop() == 0


def test_init_refuses_to_overwrite_without_force(tmp_path):
    first = subprocess.run([*SYNCD, "init", str(tmp_path / "d")], capture_output=True, text=True)
    assert first.returncode == 0
    (tmp_path / "d" / "syncd.yaml").write_text("# mine\n")
    again = subprocess.run([*SYNCD, "init", str(tmp_path / "d")], capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr
    assert (tmp_path / "d" / "syncd.yaml").read_text() == "# mine\n"
    forced = subprocess.run([*SYNCD, "init", str(tmp_path / "d"), "--force"], capture_output=True, text=True)
    assert forced.returncode == 0 and "inboxes:" in (tmp_path / "d" / "syncd.yaml").read_text()
