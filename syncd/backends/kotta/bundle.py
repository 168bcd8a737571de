"""What a job takes to Kotta and brings back: the constant job script, its control archive, its outputs archive.

Kotta runs ``executable`` (a shell command line) in a temporary folder holding its inputs, each under the last
``/``-segment of its URL, and uploads only the outputs declared by name. So syncd sends one constant script
(``SCRIPT``) and puts everything that is the job's own into ``syncd-control.tar``, an input like the others:

- ``work/.syncd/...``: the exit-code wrapper (:mod:`syncd.backends.wrapper`) with the command as data;
- ``control/env/<NAME>``: the environment, one file per variable;
- ``control/inputs/<path>``: a symbolic link per input naming the file that holds it: an input uploaded on its
  own (beside the script), one fetched by URL (``control/fetch/<name>`` holds the URL), or a small one carried
  in the archive itself (``control/blobs/<n>``).

The script places the inputs into ``work/`` (dated 2000-01-01, so that a change shows), runs the wrapper there,
and packs into ``syncd-outputs.tar`` every file the job created or changed, and the wrapper's exit file. Names
travel as data from end to end (NUL-separated lists, ``find -exec``): no name and no word of the job's is ever
shell text. Back home, :func:`unpack` takes regular files only and refuses names that would leave the folder.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

from syncd.backends import wrapper
from syncd.backends.storage_inputs import FETCH_FUNCTION
from syncd.errors import PermanentError
from syncd.storage.base import check_key

SCRIPT_NAME = "syncd-kotta.sh"
EXECUTABLE = f"/bin/sh {SCRIPT_NAME}"  # the same whether Kotta splits it (walltime ≤ 5 min) or runs a shell
CONTROL = "syncd-control.tar"
OUTPUTS = "syncd-outputs.tar"
STDOUT = "STDOUT.txt"
STDERR = "STDERR.txt"
#: when members of the control archive claim to be made (their content is what counts)
ARCHIVE_MTIME = 946684800

SCRIPT = """#!/bin/sh
# Written by syncd. Constant: the job's command, environment and file names are data in syncd-control.tar,
# never shell text. Cloud Kotta runs this in the job's folder, beside the inputs it fetched.
top=$(pwd)
fail() { printf 'syncd: %s\\n' "$1" >&2; exit "$2"; }
{FETCH}
tar -xf syncd-control.tar || fail "cannot unpack syncd-control.tar" 120
for f in control/fetch/*; do
    [ -f "$f" ] || continue
    url=$(cat "$f")
    fetch "$url" "${f##*/}" || fail "cannot fetch input ${f##*/}" 121
done
mkdir -p work control/inputs
touch -t 200001010000 control/stamp
find control/inputs -type l -exec sh -c '
    for link do
        dest="work/${link#control/inputs/}"
        mkdir -p "${dest%/*}" && mv "$(readlink "$link")" "$dest" && touch -t 200001010000 "$dest" || exit 1
    done' sh {} + || fail "cannot place the inputs" 122
for f in control/env/*; do
    [ -f "$f" ] || continue
    value=$(cat "$f"; printf x)
    export "${f##*/}=${value%x}"
done
cd work && /bin/sh .syncd/run.sh
code=$?
cd "$top" || exit 123
find work -type f -exec sh -c '
    for f do
        rel=${f#work/}
        case $rel in .syncd/exit-code) ;; .syncd/*) continue ;; esac
        if [ -L "control/inputs/$rel" ] && ! [ "$f" -nt control/stamp ]; then continue; fi
        printf "%s\\0" "$rel"
    done' sh {} + > control/outputs.list
tar -C work --null -T control/outputs.list -cf syncd-outputs.tar || fail "cannot pack the outputs" 124
exit "$code"
""".replace("{FETCH}", FETCH_FUNCTION)


def control_archive(
    dest: Path,
    *,
    command: str | tuple[str, ...],
    env: Mapping[str, str],
    links: Mapping[str, str],
    carried: Mapping[str, Path],
    fetch: Mapping[str, str],
) -> None:
    """Write the control archive to ``dest``: the same bytes for the same job, so an unchanged one is not sent again.

    ``links``: input path → the file holding it, relative to the job's folder; ``carried``: such a file (under
    ``control/blobs/``) → the local file to put into the archive; ``fetch``: file name → the URL to fetch it from.
    """
    tmp = dest.with_name(dest.name + ".part")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relpath, content in sorted(wrapper.files(command).items()):
            _add_bytes(tar, f"work/{relpath}", content, 0o755 if relpath == wrapper.WRAPPER_FILE else 0o644)
        for name, value in sorted(env.items()):
            _add_bytes(tar, f"control/env/{name}", value.encode(), 0o644)
        for name, url in sorted(fetch.items()):
            _add_bytes(tar, f"control/fetch/{name}", url.encode(), 0o644)
        for name, source in sorted(carried.items()):
            _add_file(tar, name, source)
        for relpath, target in sorted(links.items()):
            info = _info(f"control/inputs/{relpath}", 0o777)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    os.replace(tmp, dest)


def _info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = ARCHIVE_MTIME, mode, 0, 0, "", ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = _info(name, mode)
    info.size = len(content)
    tar.addfile(info, io.BytesIO(content))


def _add_file(tar: tarfile.TarFile, name: str, source: Path) -> None:
    with open(source, "rb") as handle:
        info = _info(name, 0o644)
        info.size = os.fstat(handle.fileno()).st_size
        tar.addfile(info, handle)


def unpack(archive: Path, dest: Path) -> list[tuple[str, int, bool]]:
    """Extract the regular files of an outputs archive into ``dest`` (a new folder): ``(path, size, extracted)`` for
    each, ``extracted`` False for a name that would leave the folder (absolute, ``..``, empty segments): those
    are reported, never written. Links and special files are skipped: they could point anywhere."""
    dest.mkdir(parents=True)
    found: dict[str, tuple[int, bool]] = {}
    try:
        with tarfile.open(archive, mode="r:") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                if not member.isfile() or name in ("", "."):
                    continue
                try:
                    check_key(name)
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(target, "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                except (PermanentError, FileExistsError, NotADirectoryError, IsADirectoryError):
                    found[name] = (member.size, False)
                    continue
                found[name] = (member.size, True)
    except tarfile.TarError as exc:
        raise PermanentError(f"the outputs archive the job left on Kotta is damaged ({exc})") from None
    return [(name, size, ok) for name, (size, ok) in sorted(found.items())]
