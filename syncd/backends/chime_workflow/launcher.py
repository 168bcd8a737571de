"""What a site runner starts for a syncd job: a constant launcher script in the job's folder on shared storage.

The runner runs ``["/bin/sh", "<folder>/ctrl/launch.sh"]`` with no working folder of ours and keeps only the text
of stdout and stderr, merged into the Work's results. So the launcher enters ``work/``, takes the environment from
``ctrl/env/`` (one file per variable, read as data, never evaluated), and runs the exit-code wrapper
(:mod:`syncd.backends.wrapper`) with stdout and stderr in files of their own. Before anything runs it claims the
job by creating the folder ``ctrl/claim``; a cancel claims it first with a symbolic link of that name, so exactly
one of them wins, atomically, even on a network filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SCRIPT_NAME = "launch.sh"
CLAIM = "claim"
ENV_FOLDER = "env"
STDOUT = "stdout.txt"
STDERR = "stderr.txt"
#: the launcher's exit when a cancel claimed the job first (the command never ran)
CANCELLED_EXIT = 125

SCRIPT = """#!/bin/sh
# Written by syncd. Constant: the job's command and environment are data files beside it, never shell text.
ctrl=$(cd "$(dirname "$0")" && pwd) || exit 124
mkdir "$ctrl/claim" 2>/dev/null || exit 125
cd "$ctrl/../work" || exit 124
for f in "$ctrl"/env/*; do
    [ -f "$f" ] || continue
    value=$(cat "$f"; printf x)
    export "${f##*/}=${value%x}"
done
exec /bin/sh .syncd/run.sh >>"$ctrl/stdout.txt" 2>>"$ctrl/stderr.txt" </dev/null
"""


def write(ctrl: Path, env: Mapping[str, str]) -> None:
    """The launcher and the environment files, into the job's ``ctrl/`` folder (rewritten whole: idempotent)."""
    (ctrl / SCRIPT_NAME).write_text(SCRIPT)
    folder = ctrl / ENV_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.name not in env:
            old.unlink()
    for name, value in env.items():
        (folder / name).write_text(value)


def claim_for_cancel(ctrl: Path) -> bool:
    """Claim the job so that the launcher never runs it: True if the claim is (now or already) the cancel's, False
    if the launcher claimed it first (the command has started)."""
    path = ctrl / CLAIM
    try:
        os.symlink("cancelled", path)
    except FileExistsError:
        return path.is_symlink()
    return True


def cancelled(ctrl: Path) -> bool:
    return (ctrl / CLAIM).is_symlink()


def started(ctrl: Path) -> bool:
    path = ctrl / CLAIM
    return path.is_dir() and not path.is_symlink()
