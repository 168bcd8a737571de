"""examples/slurm as its README walks it: the commands are read from the README itself, run as root
where it says root and as the Slurm user where it says so, against the cluster its own steps start."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.harness import wait_for
from tests.support.readme import Shell, shell_blocks
from tests.support.slurm import syncd_for_every_user

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
REPO = Path(__file__).parents[2]
README = REPO / "examples" / "slurm" / "README.md"


def _rerun(shell: Shell, line: str, until, what: str, timeout: float = 60) -> str:
    """Run ``line`` again until its output satisfies ``until`` (a person re-typing it a few seconds later)."""
    found: list[str] = []

    def ok() -> bool:
        code, output = shell.run(line)
        found[:] = [output]
        return code == 0 and until(output)

    try:
        wait_for(ok, timeout=timeout, interval=0.5, what=what)
    except AssertionError:
        raise AssertionError(f"{what}: '{line}' said:\n{found[0] if found else ''}") from None
    return found[0]


def test_examples_slurm_readme_walkthrough_as_written(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the walkthrough is written for root (it starts a Slurm cluster and runs syncd as its user)")
    daemon_block, jobs_block, stop_block = shell_blocks(README, "## Try it on this machine")
    demo = Path(tempfile.mkdtemp(prefix="syncd-slurm-demo-"))  # not under pytest's 0700 folders
    os.chmod(demo, 0o755)
    tools = Path(tempfile.mkdtemp(prefix="syncd-for-all-"))
    os.chmod(tools, 0o755)

    def ours(lines: list[str]) -> list[str]:
        return [line.replace("/tmp/slurm-demo", str(demo)) for line in lines]

    env = {**os.environ, "PATH": f"{syncd_for_every_user(tools / 'venv')}:{os.environ['PATH']}"}
    first = Shell(tmp_path / "terminal-1", REPO, env)
    second = Shell(tmp_path / "terminal-2", REPO, env)
    try:
        *setup, run_line = ours(daemon_block)
        for line in setup:
            code, output = first.run(line, timeout=900)  # `up` may install Debian's packages first
            assert code == 0, f"{line}\n{output}"
        assert "syncd run" in run_line and "runuser" in run_line
        daemon_log = first.start(run_line)
        site = demo / "site"
        wait_for(lambda: "syncd ready" in daemon_log.read_text(), timeout=60, what="the daemon's 'syncd ready'")

        lines = ours(jobs_block)
        for line in lines[:4]:  # variables, cd, cp, mv
            code, output = second.run(line)
            assert code == 0, f"{line}\n{output}"
        status, logs, cancel, cat, cancel_ended = lines[4:]
        _rerun(second, status, lambda out: "countdown" in out and "sort-on-slurm" in out, "both jobs listed")
        shown = _rerun(
            second,
            logs,
            lambda out: "tick 2\n" in out and "submitted → running" in out,
            "the running job's output so far, after the daemon saw it running",
        )
        assert "ctrl/stdout.txt" in shown
        code, output = second.run(cancel)
        assert code == 0 and "cancel requested" in output, output
        assert _rerun(second, cat, lambda out: True, "sorted.txt") == "3\n7\n19\n42\n"
        _rerun(second, status, lambda out: re.search(r"sort-on-slurm\W+succeeded", out), "sort-on-slurm succeeded")
        code, output = second.run(cancel_ended)
        assert code == 1 and "has already ended (succeeded)" in output, output

        result = site / "outbox" / "results" / "countdown" / "syncd-result.json"
        wait_for(result.exists, timeout=60, what="countdown's results")
        assert json.loads(result.read_text())["state"] == "cancelled"
        assert "tick 1\n" in (result.parent / "syncd-stdout.txt").read_text(), "its logs still arrive"
        assert "ERROR" not in daemon_log.read_text(), daemon_log.read_text()
        owner = {p.stat().st_uid for p in (site / ".state").iterdir()}
        assert owner == {pwd.getpwnam("syncd-slurm").pw_uid}, "the daemon ran as the Slurm user"
    finally:
        first.stop_background()  # Ctrl-C
        second.close()
        stopped = [(line, *first.run(line, timeout=120)) for line in ours(stop_block)]
        first.close()
        subprocess.run([str(REPO / "scripts" / "slurm-cluster"), "down", str(demo)], timeout=120)  # had it failed
        shutil.rmtree(demo, ignore_errors=True)
        shutil.rmtree(tools, ignore_errors=True)
    for line, code, output in stopped:  # reached only when the walk went well: its last step must too
        assert code == 0, f"{line}\n{output}"
