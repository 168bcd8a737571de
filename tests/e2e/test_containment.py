"""The local backend contains a job's whole process tree (issue 16, class 4): a process a job starts with
``setsid``, a double fork, ``nohup … &`` or a daemonizing fork-setsid-fork is gone when the job's result
appears — after a success, on timeout and on cancel — with a cgroup and with the subreaper sweep, as the
daemon's user and with ``run_as``."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from syncd.backends.containment import cgroup2_mount, cgroup_available, own_cgroup
from syncd.backends.local_runner import read_claim
from tests.support.harness import SyncdProcess, drop_job, make_config, wait_for

pytestmark = pytest.mark.e2e
JOB_USER = "syncd-job"
SLEEPER = "import time; time.sleep(300)"


def _escapes(marker: str) -> dict[str, dict]:
    """Jobs that each leave a process behind, in a different way, tagged ``marker-<way>`` on its command line."""
    sleep = f"python3 -c '{SLEEPER}'"
    return {
        "setsid": {"command": f"setsid {sleep} {marker}-setsid & echo ok > ok.txt"},
        "double-fork": {"command": f"( {sleep} {marker}-double-fork & ) ; echo ok > ok.txt"},
        "nohup": {"command": f"nohup {sleep} {marker}-nohup > /dev/null 2>&1 & echo ok > ok.txt"},
        "daemonize": {
            "command": [
                "python3",
                "-c",
                "import os, time; os.fork() and os._exit(0); os.setsid(); os.fork() and os._exit(0); time.sleep(300)",
                f"{marker}-daemonize",
            ]
        },
        "timeout": {
            "command": f"setsid {sleep} {marker}-timeout & ( {sleep} {marker}-timeout2 & ) ; sleep 60",
            "timeout": "1s",
        },
        "cancel": {"command": f"nohup setsid {sleep} {marker}-cancel > /dev/null 2>&1 & sleep 60"},
    }


EXPECTED = {
    "setsid": "succeeded",
    "double-fork": "succeeded",
    "nohup": "succeeded",
    "daemonize": "succeeded",
    "timeout": "timed_out",
    "cancel": "cancelled",
}


def _alive_with(marker: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append((int(entry.name), cmdline))
    return found


def _kill(found: list[tuple[int, str]]) -> None:
    for pid, _ in found:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def job_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("run_as needs root")
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", JOB_USER], check=True
        )
    return JOB_USER


MODES = [("auto", False), ("subreaper", False), ("auto", True), ("subreaper", True)]


@pytest.mark.parametrize(
    "containment, run_as", MODES, ids=[f"{m}-{'run_as' if r else 'daemon_user'}" for m, r in MODES]
)
def test_nothing_a_job_starts_outlives_it(request, containment, run_as):
    if shutil.which("setsid") is None or shutil.which("nohup") is None:
        pytest.skip("needs setsid and nohup")
    backend = {"type": "local", "max_parallel": 8, "containment": containment, "keep_workdir": True}
    root = Path(tempfile.mkdtemp(prefix="syncd-contain-", dir="/tmp"))
    os.chmod(root, 0o755)  # the job user passes through to its work folder
    if run_as:
        backend.update(run_as=request.getfixturevalue("job_user"), workdir_root="work")
    daemon = SyncdProcess(
        make_config(root / "site", settle="0.2s", rescan="1s", extra={"backends": {"local": backend}})
    ).start()
    marker = f"syncd-escape-{uuid.uuid4().hex[:10]}"
    try:
        for name, manifest in _escapes(marker).items():
            drop_job(daemon.inbox, name, manifest)
        wait_for(lambda: len(_alive_with(f"{marker}-cancel")) > 0, timeout=20, what="the job to be cancelled to run")
        daemon.cli("cancel", "cancel")
        for name, state in EXPECTED.items():
            result = daemon.result(name, timeout=40)
            assert result["state"] == state, (name, result)
            left = _alive_with(f"{marker}-{name}")
            assert not left, f"{name}: processes outlived the job: {left}"
            held = read_claim(Path(result["remote_id"] and _work(daemon, backend, result)) / "ctrl").runner[
                "containment"
            ]
            expected_kind = "subreaper" if containment == "subreaper" or not cgroup_available() else "cgroup"
            assert held["kind"] == expected_kind, held
            if "cgroup" in held:
                assert not os.path.exists(held["cgroup"]), "the job's cgroup is removed"
        assert not _alive_with(marker)
    finally:
        _kill(_alive_with(marker))
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def _work(daemon: SyncdProcess, backend: dict, result: dict) -> Path:
    base = (
        daemon.root / backend["workdir_root"]
        if "workdir_root" in backend
        else daemon.root / ".state" / "backends" / "local"
    )
    return base / result["remote_id"]


def test_cgroup_containment_is_found_where_the_host_has_cgroup_v2():
    mount, mine = cgroup2_mount(), own_cgroup()
    if mount is None or mine is None:
        pytest.skip("no cgroup v2 hierarchy here: jobs are contained by the subreaper sweep")
    assert (mount / "cgroup.procs").exists()
