"""examples/s3 as its README walks it: the commands are read from the README itself and run in order,
the S3 server included (SeaweedFS on its default ports, as the README starts it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.harness import wait_for
from tests.support.readme import Shell, shell_blocks

pytestmark = [pytest.mark.s3, pytest.mark.e2e]
REPO = Path(__file__).parents[2]
README = REPO / "examples" / "s3" / "README.md"


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_examples_s3_readme_walkthrough_as_written(tmp_path):
    if _answers(8333):
        pytest.skip("port 8333, where the README's SeaweedFS listens, is taken on this machine")
    server_block, try_block, stop_block = shell_blocks(README, "## Try it on this machine")
    scratch = Path(tempfile.mkdtemp(prefix="syncd-sw-"))
    site = tmp_path / "repo"
    (site / "examples").mkdir(parents=True)  # a fresh checkout's examples: nothing left from an earlier run
    shutil.copytree(REPO / "examples" / "s3", site / "examples" / "s3")
    shutil.copytree(REPO / "examples" / "local", site / "examples" / "local")

    def ours(lines: list[str]) -> list[str]:
        return [line.replace("/tmp/sw", str(scratch)) for line in lines]

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    first, second = Shell(tmp_path / "terminal-1", site, env), Shell(tmp_path / "terminal-2", site, env)
    try:
        *setup, run_line = ours(server_block)
        for line in setup:
            code, output = first.run(line)
            assert code == 0, f"{line}\n{output}"
        wait_for(lambda: _answers(8333), timeout=60, what="SeaweedFS on 8333")
        daemon_log = first.start(run_line)
        wait_for(lambda: "syncd ready" in daemon_log.read_text(), timeout=60, what="'syncd ready'")

        export, cd, drop, cat_result, make_data, upload, download, cat_download = ours(try_block)
        for line in (export, cd, drop):
            code, output = second.run(line)
            assert code == 0, f"{line}\n{output}"
        out = site / "examples" / "s3" / "outbox" / "results" / "hello"
        wait_for((out / "syncd-result.json").exists, timeout=60, what="the job's results")
        assert second.run(cat_result) == (0, "HELLO, SYNCD\n")
        assert second.run(make_data)[0] == 0
        code, output = second.run(upload)
        assert code == 0 and "uploaded 1 file(s)" in output, output
        code, output = second.run(download)
        assert code == 0 and "downloaded 1 file(s)" in output, output
        assert second.run(cat_download) == (0, "42\n")
        here = site / "examples" / "s3"
        assert not (here / "runs" / ".syncd-tmp").exists(), "a download leaves nothing of its own behind"
        code, output = second.run(upload.replace("./data", "./data --delete"))
        assert code == 2 and "--delete" in output, "the README says a folder → bucket sync refuses --delete"

        log = daemon_log.read_text()
        assert "mirror instrument (lab-s3:instrument/runs/" in log, "the first pass says what it did"
        os.kill(first.background[0][0], signal.SIGHUP)  # the README: a reload runs a pass at once
        mirrored = here / "outbox" / "instrument" / "runs" / "today" / "scan.txt"
        wait_for(mirrored.exists, timeout=30, what="the mirror's pass after the reload")
        assert mirrored.read_text() == "42\n"
        assert json.loads((out / "syncd-result.json").read_text())["state"] == "succeeded"
        assert "demo-secret" not in daemon_log.read_text()
    finally:
        first.stop_background()
        stopped = [(line, *first.run(line)) for line in ours(stop_block)]
        first.close()
        second.close()
        wait_for(lambda: not _answers(8333), timeout=10, what="SeaweedFS to stop")
        shutil.rmtree(scratch, ignore_errors=True)
    for line, code, output in stopped:  # reached only when the walk went well: its last step must too
        assert code == 0, f"{line}\n{output}"
