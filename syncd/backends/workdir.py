"""Work folders on a filesystem the job can see: staging inputs in, finding outputs after.

Used by backends whose jobs run in a directory syncd can write (local, Slurm on
a shared filesystem). Each attempt has ``<root>/<submit key>/work`` (the job's
working directory) and ``.../ctrl`` (syncd's files: spec, logs, exit status).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path

from syncd.backends.base import JobLogs, OutputFile
from syncd.errors import InputError
from syncd.fsutil import NotRegularFile, copy_verified, os_error, read_small, write_small
from syncd.intake.manifest import InputFile, glob_to_regex, match_any

INPUTS_SNAPSHOT = "inputs.json"


def _input_stat(item: InputFile) -> os.stat_result:
    return _check_input(item, os.stat, item.source)


def _check_input(item: InputFile, func, *args):
    """Run ``func``; an input that vanished or cannot be read is the user's to fix (InputError)."""
    try:
        return func(*args)
    except NotRegularFile as exc:
        if exc.filename != str(item.source):
            raise
        raise InputError(
            [f"{item.relpath}: became {exc.kind} after the job was checked; only regular files are staged"]
        ) from exc
    except OSError as exc:
        if exc.filename != str(item.source) or not isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        why = (
            "disappeared from the job folder while it was being staged; put it back"
            if isinstance(exc, FileNotFoundError)
            else "cannot be read by the user syncd runs as; make it readable"
        )
        raise InputError([f"{item.relpath}: {why}"]) from exc


def _copy_input(source: Path, dest: Path) -> str:
    """Copy one input; a link put in its place since it was checked is refused (copy_verified itself
    refuses a FIFO, socket or device, at once)."""
    if stat.S_ISLNK(os.lstat(source).st_mode):
        raise NotRegularFile(source, "a symbolic link")
    return copy_verified(source, dest)


class WorkFolder:
    def __init__(self, root: Path, submit_key: str):
        self.path = root / submit_key
        self.work = self.path / "work"
        self.ctrl = self.path / "ctrl"

    def stage(self, inputs: Sequence[InputFile], mode: int | None = None) -> None:
        """Copy inputs into ``work/``, reusing files already there (same size and mtime). Idempotent."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)  # asked for ctrl first, mkdir fails once before this
            self.ctrl.mkdir(exist_ok=True)
            self.work.mkdir(exist_ok=True)
            made = {self.work}
            snapshot = {}
            for item in inputs:
                dest = self.work / item.relpath
                if dest.parent not in made:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    made.add(dest.parent)
                src_st = _input_stat(item)
                try:
                    dst_st = dest.stat()
                    done = dst_st.st_size == src_st.st_size and dst_st.st_mtime_ns == src_st.st_mtime_ns
                except FileNotFoundError:
                    done = False
                if not done:
                    tmp = dest.with_name(f".syncd-part-{uuid.uuid4().hex[:16]}")  # fits beside a 255-byte name
                    placed = False
                    try:
                        _check_input(item, _copy_input, item.source, tmp)
                        os.utime(tmp, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
                        os.replace(tmp, dest)
                        placed = True
                    finally:
                        if not placed:
                            tmp.unlink(missing_ok=True)  # a full disk must not stay full of our partial copy
                    dst_st = dest.stat()
                snapshot[item.relpath] = [dst_st.st_size, dst_st.st_mtime_ns]
            self.write_json(INPUTS_SNAPSHOT, snapshot)
            if mode is not None:
                for dirpath, _dirnames, filenames in os.walk(self.path):
                    os.chmod(dirpath, mode | 0o111)
                    for name in filenames:
                        os.chmod(os.path.join(dirpath, name), mode)
        except OSError as exc:
            raise os_error(exc, f"staging into {self.work}") from exc

    @property
    def staged(self) -> bool:
        return (self.ctrl / INPUTS_SNAPSHOT).exists()

    def write_json(self, name: str, data: object) -> None:
        tmp = self.ctrl / f".{name}.tmp"
        write_small(tmp, json.dumps(data).encode())
        os.replace(tmp, self.ctrl / name)

    def write_text(self, name: str, text: str, mode: int = 0o644) -> Path:
        tmp = self.ctrl / f".{name}.tmp"
        tmp.write_text(text)
        os.chmod(tmp, mode)
        os.replace(tmp, self.ctrl / name)
        return self.ctrl / name

    def outputs(self, patterns: Sequence[str] | None, owner: int | None = None) -> list[OutputFile]:
        """Files to deliver: those matching ``patterns``, or (without patterns) every file the job
        created or changed. Links and special files are never delivered: they could point anywhere.

        With ``owner`` (a job that ran as another user, its folder since taken back), only files of
        that owner with a single link, in folders of that owner, are delivered."""
        try:
            inputs = json.loads(read_small(self.ctrl / INPUTS_SNAPSHOT))
        except FileNotFoundError:
            inputs = {}
        regexes = [glob_to_regex(p) for p in patterns] if patterns is not None else None
        found: list[OutputFile] = []
        if owner is not None and self.work.lstat().st_uid != owner:
            return found
        for dirpath, dirnames, filenames in os.walk(self.work, followlinks=False):
            here = Path(dirpath)
            if owner is not None:
                dirnames[:] = [d for d in dirnames if (here / d).lstat().st_uid == owner]
            dirnames.sort()
            for name in sorted(filenames):
                path = here / name
                rel = path.relative_to(self.work).as_posix()
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if owner is not None and (st.st_uid != owner or st.st_nlink != 1):
                    continue
                if regexes is not None:
                    if not match_any(rel, regexes):
                        continue
                elif inputs.get(rel) == [st.st_size, st.st_mtime_ns]:
                    continue  # an input the job left unchanged
                found.append(OutputFile(rel, path, st.st_size))
        return found

    def log(self, name: str) -> Path | None:
        path = self.ctrl / name
        return path if path.exists() else None

    def logs(self) -> JobLogs:
        """The job's stdout and stderr, which every work-folder backend writes into ``ctrl/``."""
        return JobLogs(self.log("stdout.txt"), self.log("stderr.txt"))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
