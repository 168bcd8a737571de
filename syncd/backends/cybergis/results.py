"""The result folder of a CyberGIS-Compute job, once it is on this host: what to deliver from it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from syncd.backends import wrapper
from syncd.backends.base import OutputFile
from syncd.backends.workdir import WorkFolder
from syncd.fsutil import os_error
from syncd.intake.manifest import glob_to_regex, match_any

#: Slurm's own stdout and stderr, which the gateway's batch script puts into the result folder: the job's logs
SLURM_LOGS = ("slurm_log/job.stdout", "slurm_log/job.stderr")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listing(root: Path, patterns: Sequence[str] | None, folder: WorkFolder) -> list[OutputFile]:
    """The result folder's files to deliver: matching ``patterns``, or every file the job created or changed
    (the runner copied the inputs in: one whose content is unchanged is not an output). Slurm's log files are
    logs, links and special files are never delivered; the wrapper's files are returned for the engine."""
    staged = folder.log("staged.json")
    inputs: dict[str, list] = json.loads(staged.read_text()) if staged is not None else {}
    regexes = [glob_to_regex(p) for p in patterns] if patterns is not None else None
    found = []
    try:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_symlink() or not path.is_file() or rel in SLURM_LOGS:
                continue
            size = path.stat().st_size
            if wrapper.is_wrapper_path(rel):
                if rel == wrapper.EXIT_FILE:
                    found.append(OutputFile(rel, path, size))
                continue
            if regexes is not None:
                if not match_any(rel, regexes):
                    continue
            elif rel in inputs and inputs[rel][0] == size and inputs[rel][1] == sha256(path):
                continue
            found.append(OutputFile(rel, path, size))
    except OSError as exc:
        raise os_error(exc, f"listing the results in {root}") from exc
    return found
