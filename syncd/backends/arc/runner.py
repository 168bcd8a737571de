"""The constant script an ARC job runs, and the names of syncd's own files in its session folder.

The job's command travels as data files under ``.syncd/`` (:mod:`syncd.backends.wrapper`), uploaded with the
inputs; nothing the user wrote is spliced into a script or the job description's executable. Before the command
runs, every input is dated 2000-01-01 and a stamp is made; afterwards the files newer than the stamp are listed in
``.syncd/changed`` (NUL-separated), so syncd can tell an input the job changed from one it left alone.
"""

from __future__ import annotations

from syncd.backends import wrapper

SCRIPT_FILE = f"{wrapper.FOLDER}/syncd-arc.sh"
CHANGED_FILE = f"{wrapper.FOLDER}/changed"
STDOUT = ".syncd-stdout"
STDERR = ".syncd-stderr"
#: what the CE runs, from the job's session folder
EXECUTABLE = "/bin/sh"
ARGUMENTS = (SCRIPT_FILE,)

SCRIPT = """#!/bin/sh
# Written by syncd. Constant: the job's command is data in .syncd/, never shell text here.
find . -path ./.syncd -prune -o -type f -exec touch -h -t 200001010000 {} + 2>/dev/null
touch .syncd/stamp
/bin/sh .syncd/run.sh
code=$?
find . -path ./.syncd -prune -o -type f -newer .syncd/stamp -print0 > .syncd/changed.part
mv .syncd/changed.part .syncd/changed
exit "$code"
"""


def files(command: str | tuple[str, ...] | list[str]) -> dict[str, bytes]:
    """syncd's files of one job, by path in the session folder."""
    return {**wrapper.files(command), SCRIPT_FILE: SCRIPT.encode()}


def is_own(relpath: str) -> bool:
    """A file of syncd's, never delivered."""
    return wrapper.is_wrapper_path(relpath) or relpath in (STDOUT, STDERR)


def changed(data: bytes) -> set[str]:
    """The paths ``.syncd/changed`` lists (``./a/b`` → ``a/b``)."""
    names = data.decode("utf-8", "surrogateescape").split("\0")
    return {n[2:] if n.startswith("./") else n for n in names if n}
