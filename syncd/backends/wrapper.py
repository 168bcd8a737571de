"""The exit-code wrapper, for services that report no exit code (``Capabilities.exit_codes=False``).

The backend runs ``argv()`` instead of the job's command, with the files of ``files(command)`` in the
job's working folder. The wrapper is a constant script: the command lives in data files (the shell text
of a string command in ``.syncd/command``, each argument of a list in a file of its own under
``.syncd/argv/``), so nothing the user wrote is ever spliced into a script. When the command ends the
wrapper writes its exit code to ``.syncd/exit-code``; the backend returns that file among the outputs and
the engine reads the code from it. ``.syncd/`` is syncd's: files under it are never delivered.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = ".syncd"
WRAPPER_FILE = f"{FOLDER}/run.sh"
COMMAND_FILE = f"{FOLDER}/command"
ARGV_FOLDER = f"{FOLDER}/argv"
EXIT_FILE = f"{FOLDER}/exit-code"

WRAPPER = """#!/bin/sh
# Written by syncd. Runs the job's command, kept in data files next to this script, and records its
# exit code in exit-code (written to a temporary name, then renamed, so it is never read half-written).
here=$(dirname "$0")
if [ -f "$here/command" ]; then
    /bin/sh "$here/command"
else
    set --
    for arg in "$here"/argv/*; do
        value=$(cat "$arg"; printf x)
        set -- "$@" "${value%x}"
    done
    "$@"
fi
code=$?
printf '%s\\n' "$code" > "$here/exit-code.part" && mv "$here/exit-code.part" "$here/exit-code"
exit "$code"
"""


def argv() -> list[str]:
    """What the service runs, from the job's working folder."""
    return ["/bin/sh", WRAPPER_FILE]


def files(command: str | tuple[str, ...] | list[str]) -> dict[str, bytes]:
    """The wrapper and the command's data files, by path relative to the working folder."""
    found = {WRAPPER_FILE: WRAPPER.encode()}
    if isinstance(command, str):
        found[COMMAND_FILE] = command.encode()
    else:
        for n, arg in enumerate(command):
            found[f"{ARGV_FOLDER}/{n:06d}"] = arg.encode()
    return found


def write(folder: Path, command: str | tuple[str, ...] | list[str]) -> None:
    for relpath, content in files(command).items():
        path = folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def is_wrapper_path(relpath: str) -> bool:
    return relpath == FOLDER or relpath.startswith(FOLDER + "/")


def parse_exit_code(text: str) -> int | None:
    """The code in an exit file; None if it holds anything else (then the outcome alone decides)."""
    value = text.strip()
    # The file sits in the job's folder, so the job can write anything there: only 0-255 in ASCII digits counts.
    if not (value.isascii() and value.isdigit() and len(value) <= 3):
        return None
    return int(value) if int(value) < 256 else None
