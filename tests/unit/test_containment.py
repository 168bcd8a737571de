"""syncd.backends.containment on its own (issue 16, class 4): a stand-in runner (a child process, so the
sweep never reaches pytest's own children) contains a job that escapes its process group every known way,
then ends it: nothing survives, and the job's own exit status is still the runner's to read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from syncd.backends.containment import cgroup_available

RUNNER = textwrap.dedent("""
    import json, subprocess, sys, time
    from syncd.backends.containment import contain
    mode, name, marker = sys.argv[1:4]
    box = contain(mode, name)
    sleep = f"python3 -c 'import time; time.sleep(300)' {marker}"
    job = (f"setsid {sleep} & ( {sleep} & ) ; nohup {sleep} > /dev/null 2>&1 & "
           f"python3 -c 'import os, time; os.fork() and os._exit(0); os.setsid(); os.fork() and os._exit(0); "
           f"time.sleep(300)' {marker} ; sleep 30")
    box.enter_for_fork()
    try:
        child = subprocess.Popen(["/bin/sh", "-c", job], start_new_session=True)
    finally:
        box.leave_after_fork()
    box.main_pid = child.pid
    deadline = time.time() + 60  # four Python start-ups: seconds each on a loaded machine
    while len(box.members()) < 6 and time.time() < deadline:
        time.sleep(0.05)
    before = len(box.members())
    survivors = box.kill_all()
    code = child.wait(timeout=5)
    box.close()
    print(json.dumps({"kind": box.kind, "before": before, "survivors": survivors, "code": code,
                      "described": box.describe()}))
""")


def _alive_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("mode", ["subreaper", "cgroup"])
def test_a_job_that_escapes_every_way_is_ended_whole_and_its_exit_status_kept(mode, tmp_path):
    if mode == "cgroup" and not cgroup_available():
        pytest.skip("no writable cgroup v2 subtree here")
    marker = f"syncd-contain-unit-{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, mode, f"syncd-test-{uuid.uuid4().hex[:8]}", marker],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["kind"] == mode
        assert report["before"] >= 6, "the job and its five escaped processes were all found"
        assert report["survivors"] == [] and not _alive_with(marker)
        assert report["code"] == -9, "the job's first process is never reaped by the sweep: its status is kept"
        if mode == "cgroup":
            assert not os.path.exists(report["described"]["cgroup"]), "the job's cgroup is removed"
    finally:
        for pid in _alive_with(marker):
            os.kill(pid, 9)
