"""The constant script an ARC job runs, and the names of syncd's own files in its session folder.

The job's command travels as data files under ``.syncd/`` (:mod:`syncd.backends.wrapper`), uploaded with the
inputs; nothing the user wrote is spliced into a script or the job description's executable. Before the command
runs, the inputs that come from the inbox's storage (``inputs: storage``) are fetched, each described by three
files under ``.syncd/fetch/`` (its URL, its name, its size: data, never shell text), every input is dated 2000-01-01 and a stamp is made; afterwards the files newer than the stamp are listed in
``.syncd/changed`` (NUL-separated), so syncd can tell an input the job changed from one it left alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from syncd.backends import wrapper
from syncd.backends.storage_inputs import FETCH_FUNCTION

SCRIPT_FILE = f"{wrapper.FOLDER}/syncd-arc.sh"
CHANGED_FILE = f"{wrapper.FOLDER}/changed"
STDOUT = ".syncd-stdout"
STDERR = ".syncd-stderr"
#: what the CE runs, from the job's session folder
EXECUTABLE = "/bin/sh"
ARGUMENTS = (SCRIPT_FILE,)

FETCH_FOLDER = f"{wrapper.FOLDER}/fetch"

SCRIPT = """#!/bin/sh
# Written by syncd. Constant: the job's command and the names of its inputs are data in .syncd/, never shell text.
fail() { printf 'syncd: %s\\n' "$1" >&2; exit "$2"; }
{FETCH}
for f in .syncd/fetch/*.url; do
    [ -f "$f" ] || continue
    n=${f%.url}
    name=$(cat "$n.name"; printf x)
    name=${name%x}
    case $name in */*) mkdir -p "./${name%/*}" || fail "cannot make the folder of input $name" 121 ;; esac
    fetch "$(cat "$f")" "./$name" || fail "cannot fetch input $name from the inbox's storage" 121
    size=$(wc -c < "./$name" | tr -d ' ')
    [ "$size" = "$(cat "$n.size")" ] || fail "input $name arrived with $size of $(cat "$n.size") bytes" 121
done
find . -path ./.syncd -prune -o -type f -exec touch -h -t 200001010000 {} + 2>/dev/null
touch .syncd/stamp
/bin/sh .syncd/run.sh
code=$?
find . -path ./.syncd -prune -o -type f -newer .syncd/stamp -print0 > .syncd/changed.part
mv .syncd/changed.part .syncd/changed
exit "$code"
""".replace("{FETCH}", FETCH_FUNCTION)


def files(command: str | tuple[str, ...] | list[str]) -> dict[str, bytes]:
    """syncd's files of one job, by path in the session folder."""
    return {**wrapper.files(command), SCRIPT_FILE: SCRIPT.encode()}


def fetch_files(inputs: Sequence[tuple[str, str, int]]) -> dict[str, bytes]:
    """The files that tell the job to fetch inputs: one (path in the session folder, URL, size) each."""
    found: dict[str, bytes] = {}
    for n, (relpath, url, size) in enumerate(inputs):
        base = f"{FETCH_FOLDER}/{n:06d}"
        found |= {
            f"{base}.url": url.encode(),
            f"{base}.name": relpath.encode("utf-8", "surrogateescape"),
            f"{base}.size": str(size).encode(),
        }
    return found


def is_own(relpath: str) -> bool:
    """A file of syncd's, never delivered."""
    return wrapper.is_wrapper_path(relpath) or relpath in (STDOUT, STDERR)


def changed(data: bytes) -> set[str]:
    """The paths ``.syncd/changed`` lists (``./a/b`` → ``a/b``)."""
    names = data.decode("utf-8", "surrogateescape").split("\0")
    return {n[2:] if n.startswith("./") else n for n in names if n}
