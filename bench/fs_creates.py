#!/usr/bin/env python3
"""What creating a file costs on a filesystem shortly after many files were deleted on it.

Not a test: it prints figures (and optionally writes them as JSON) for BENCHMARKS.md.

    .venv/bin/python bench/fs_creates.py --dir /var/tmp/fs-creates        # this machine's root
    .venv/bin/python bench/fs_creates.py --dir /mnt/image/fs-creates --json out.json

Each round creates ``--files`` small files in a fresh folder under ``--dir``, waits a second, deletes
them and waits a second more, and reports the mean time of one creation in that round. A daemon that
runs jobs creates and deletes files at this pace for as long as jobs come. On most filesystems every
round costs the same. On ext4 made without a journal, the kernel prefers not to reuse an inode freed in
the last minute (five, while its inode-table block is unwritten) and checks each free inode against
that rule, one by one, so each round costs more than the one before until the deletions of the first
rounds age out. The wait between steps is there because an inode freed within the current second is
not counted as recently freed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def round_of_creates(folder: Path, files: int) -> float:
    """Create ``files`` one-byte files in ``folder``; the mean seconds per file."""
    started = time.perf_counter()
    for index in range(files):
        fd = os.open(folder / f"f{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    return (time.perf_counter() - started) / files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, required=True, help="a folder on the filesystem to measure (made, then removed)"
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--files", type=int, default=2000, help="files created (and deleted) per round")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    folder = args.dir / f"fs-creates-{os.getpid()}"
    folder.mkdir(parents=True)
    per_round = []
    try:
        for _ in range(args.rounds):
            per_round.append(round_of_creates(folder, args.files))
            time.sleep(1.05)
            for index in range(args.files):
                os.unlink(folder / f"f{index}")
            time.sleep(1.05)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    figures = {
        "dir": str(args.dir),
        "files_per_round": args.files,
        "microseconds_per_create_by_round": [round(seconds * 1e6, 1) for seconds in per_round],
    }
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
