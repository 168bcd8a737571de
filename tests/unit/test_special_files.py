"""Non-regular files are refused at once wherever syncd reads a path (issue 16, class 7): a FIFO never
blocks, a device is never read without end, a socket or folder is named, never opened for reading."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import pytest

from syncd.backends.workdir import WorkFolder
from syncd.errors import InputError
from syncd.fsutil import NotRegularFile, TooLarge, copy_verified, open_regular, place_file, read_regular
from syncd.intake.manifest import InputFile, is_syncd_report, load_job_directory
from syncd.yamlfile import YamlProblem, load_file


@pytest.fixture(autouse=True)
def never_hang():
    """A call that blocks (the bug) fails the test after 5 s instead of hanging the run."""

    def expired(signum, frame):
        raise TimeoutError("blocked on a special file")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _special(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(tmp_path)
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(kind)
            sock.close()
        finally:
            os.chdir(here)
    elif kind == "chardev":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # like /dev/zero: never ends
    elif kind == "folder":
        path.mkdir()
    return path


KINDS = ["fifo", "socket", "chardev", "folder"]
SAID = {"fifo": "a FIFO (named pipe)", "socket": "a socket", "chardev": "a character device", "folder": "a folder"}


@pytest.mark.parametrize("kind", KINDS)
def test_open_and_read_regular_refuse_each_kind_at_once_and_name_it(tmp_path, kind):
    path = _special(tmp_path, kind)
    for call in (lambda: open_regular(path), lambda: read_regular(path, 100)):
        with pytest.raises(NotRegularFile) as caught:
            call()
        assert caught.value.strerror == f"must be a regular file, not {SAID[kind]}"


def test_read_regular_reads_at_most_its_limit_even_when_the_size_says_zero(tmp_path):
    assert os.stat("/proc/self/status").st_size == 0
    with pytest.raises(TooLarge):
        read_regular("/proc/self/status", 10)
    assert b"Pid:" in read_regular("/proc/self/status", 1 << 20)
    link = tmp_path / "link"
    link.symlink_to("/proc/self/status")
    with pytest.raises(NotRegularFile):
        read_regular(link, 1 << 20, follow=False)


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_copying_and_placing_a_special_file_is_refused(tmp_path, kind):
    path = _special(tmp_path, kind)
    with pytest.raises(NotRegularFile):
        copy_verified(path, tmp_path / "copy")
    with pytest.raises(NotRegularFile):
        place_file(path, tmp_path / "placed")
    assert not (tmp_path / "copy").exists() and not (tmp_path / "placed").exists()


@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_an_input_that_became_a_special_file_or_a_link_after_the_check_is_refused_when_staged(tmp_path, kind):
    job = tmp_path / "job"
    job.mkdir()
    (job / "a.txt").write_text("a")
    (job / "b.txt").write_text("b")
    items = [InputFile("a.txt", job / "a.txt", 1), InputFile("b.txt", job / "b.txt", 1)]
    (job / "a.txt").unlink()
    os.rename(_special(tmp_path, kind), job / "a.txt")
    (job / "b.txt").unlink()
    (job / "b.txt").symlink_to("/etc/hostname")  # a regular file, but outside the job
    with pytest.raises(InputError) as caught:
        WorkFolder(tmp_path / "work", "syncd-x").stage(items[:1])
    assert "a.txt: became" in caught.value.problems[0]
    with pytest.raises(InputError) as caught:
        WorkFolder(tmp_path / "work", "syncd-y").stage(items[1:])
    assert "b.txt: became a symbolic link" in caught.value.problems[0]


@pytest.mark.parametrize("kind", KINDS)
def test_yaml_files_that_are_not_regular_files_are_a_problem_not_a_hang(tmp_path, kind):
    with pytest.raises(YamlProblem) as caught:
        load_file(_special(tmp_path, kind))
    assert "must be a regular file" in caught.value.message


@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev"])
def test_a_job_whose_report_or_manifest_is_a_special_file_is_checked_without_blocking(tmp_path, kind):
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.yaml").write_text('command: "true"\n')
    os.rename(_special(tmp_path, kind), job / "syncd-error.json")
    assert not is_syncd_report(job / "syncd-error.json")
    with pytest.raises(Exception) as caught:
        load_job_directory(job)
    assert "syncd-error.json: is a special file" in str(caught.value.problems)
    (job / "job.yaml").unlink()
    os.rename(job / "syncd-error.json", job / "job.yaml")
    with pytest.raises(Exception) as caught:
        load_job_directory(job)
    assert f"job.yaml: must be a regular file, not {SAID[kind]}" in caught.value.problems


def test_syncd_logs_names_a_fifo_in_place_of_a_log_instead_of_blocking(tmp_path, capsys):
    from syncd.cli import _echo_file

    _echo_file(_special(tmp_path, "fifo"))
    assert "must be a regular file, not a FIFO" in capsys.readouterr().err
    log = tmp_path / "log.txt"
    log.write_bytes(b"line one\nno newline at the end")
    _echo_file(log)
    assert capsys.readouterr().out == "line one\nno newline at the end\n"


def test_small_files_are_written_whole_over_longer_content_and_read_back(tmp_path):
    from syncd.fsutil import read_small, write_small

    path = tmp_path / "status.json"
    write_small(path, b"x" * 100_000)
    write_small(path, b'{"state": "done"}', 0o600)  # truncated, not overwritten in part
    assert read_small(path) == b'{"state": "done"}'
    (tmp_path / "empty").touch()
    assert read_small(tmp_path / "empty") == b""
    (tmp_path / "large").write_bytes(b"ab" * 1_500_000)  # more than one read
    assert read_small(tmp_path / "large") == b"ab" * 1_500_000
    with pytest.raises(FileNotFoundError):
        write_small(tmp_path / "missing" / "x", b"")


def test_in_folder_makes_a_missing_folder_once_and_leaves_other_misses_alone(tmp_path):
    from syncd.fsutil import in_folder, write_small

    calls = []

    def write(path):
        calls.append(path)
        write_small(path, b"x")

    target = tmp_path / "a" / "b" / "f"
    in_folder(target.parent, lambda: write(target))
    assert target.read_bytes() == b"x" and len(calls) == 2  # tried, folder made, tried again
    in_folder(target.parent, lambda: write(target))
    assert len(calls) == 3  # the folder is there: one try
    with pytest.raises(FileNotFoundError):  # what is missing is not the folder: no folder made, no retry
        in_folder(tmp_path, lambda: os.stat(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError):  # without parents, a missing parent is not made
        in_folder(tmp_path / "gone" / "tmp", lambda: write(tmp_path / "gone" / "tmp" / "f"), parents=False)
    assert not (tmp_path / "gone").exists()


def test_a_link_placed_where_reflinks_are_known_to_fail_never_opens_the_source(tmp_path, monkeypatch):
    from syncd import fsutil

    source = tmp_path / "out.txt"
    source.write_bytes(b"result")
    st = source.stat()
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    how = fsutil.place_file(source, tmp_path / "placed", no_reflink={(st.st_dev, st.st_dev)})
    assert how == "link" and (tmp_path / "placed").stat().st_ino == st.st_ino
    assert str(source) not in opened
