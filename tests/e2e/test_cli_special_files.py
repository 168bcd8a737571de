"""The real ``syncd`` command on special files (issue 16, class 7): under a memory cap and a deadline, a
character device, FIFO, socket or folder given where a file is expected is refused at once with a clear
message — never a MemoryError traceback, never a hang."""

from __future__ import annotations

import os
import resource
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, make_config

pytestmark = pytest.mark.e2e
MEMORY_CAP = 1 << 30  # 1 GiB of address space: reading /dev/zero without limit fails within it


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def syncd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SYNCD, *args],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        preexec_fn=_capped,
    )


@pytest.fixture
def specials(tmp_path) -> dict[str, Path]:
    made = {"fifo": tmp_path / "fifo.yaml", "socket": tmp_path / "sock.yaml", "folder": tmp_path / "dir.yaml"}
    os.mkfifo(made["fifo"])
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(made["socket"]))
    sock.close()
    made["folder"].mkdir()
    if os.geteuid() == 0:
        made["chardev"] = tmp_path / "zero.yaml"
        os.mknod(made["chardev"], 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    made["link-to-zero"] = tmp_path / "link.yaml"
    made["link-to-zero"].symlink_to("/dev/zero")
    return made


KIND_WORDS = {"fifo": "FIFO", "socket": "socket", "chardev": "character device", "link-to-zero": "character device"}


def test_validate_refuses_each_special_file_at_once(specials, tmp_path):
    for kind, path in specials.items():
        if kind == "folder":
            continue  # a folder is a job directory to validate
        done = syncd("validate", str(path), cwd=tmp_path)
        assert done.returncode == 1, (kind, done.stdout, done.stderr)
        assert f"must be a regular file, not a {KIND_WORDS[kind]}" in done.stdout, (kind, done.stdout)
        assert "Traceback" not in done.stdout + done.stderr and "MemoryError" not in done.stderr


def test_every_command_refuses_a_special_file_as_its_config(specials, tmp_path):
    for kind, path in specials.items():
        for command in (["status", "--json"], ["logs", "x"]):
            done = syncd(*command, "-c", str(path), cwd=tmp_path)
            assert done.returncode == 2, (kind, command, done.stdout, done.stderr)
            assert (
                "must be a regular file" in done.stderr
                or "is a directory" in done.stderr.lower()
                or "Directory" in done.stderr
            ), (kind, command, done.stderr)
            assert "Traceback" not in done.stderr


def test_validate_a_job_whose_manifest_or_report_is_a_special_file(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    os.mkfifo(job / "job.yaml")
    for target in (job, job / "job.yaml"):
        done = syncd("validate", str(target), cwd=tmp_path)
        assert done.returncode == 1 and "job.yaml: must be a regular file, not a FIFO" in done.stdout, done.stdout
    (job / "job.yaml").unlink()
    (job / "job.yaml").write_text('command: "true"\n')
    os.mkfifo(job / "syncd-error.json")
    done = syncd("validate", str(job), cwd=tmp_path)
    assert done.returncode == 1 and "syncd-error.json: is a special file" in done.stdout, done.stdout


def test_init_never_writes_through_a_fifo_in_place_of_the_config(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    os.mkfifo(site / "syncd.yaml")
    done = syncd("init", str(site), "--force", cwd=tmp_path)
    assert done.returncode == 1 and "not a regular file" in done.stderr, done.stderr
    assert stat.S_ISFIFO(os.lstat(site / "syncd.yaml").st_mode)


def test_sync_upload_refuses_special_files_in_the_local_folder(tmp_path):
    config = make_config(tmp_path / "site")
    local = tmp_path / "up"
    local.mkdir()
    (local / "ok.txt").write_text("fine")
    os.mkfifo(local / "pipe")
    (local / "zero").symlink_to("/dev/zero")
    done = syncd("sync", "-c", str(config), "--no-progress", str(local), "local:results/up", cwd=tmp_path)
    assert "refused up/pipe: is a FIFO (named pipe), not a regular file" in done.stderr, done.stderr
    assert "refused up/zero: is a character device" in done.stderr, done.stderr
    assert (tmp_path / "site" / "buckets" / "results" / "up" / "ok.txt").read_text() == "fine"
