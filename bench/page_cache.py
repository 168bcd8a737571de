"""Diagnostic (not a test): system time to fill 1 GiB of page cache, by the size of each write.

Writes a 1 GiB file with ``pwrite`` calls of each size given, deletes it, and waits ``--pause``
seconds before the next size (and between the rounds), so that memory freed by one file has settled
before the next one is written. On a virtual machine whose balloon reports free memory to the host
(free page reporting: ``/sys/module/page_reporting``), memory left free for a few seconds goes back to
the host, and the kernel's large page-cache folios (made for large writes) must fault it in again.
``--pause 0`` shows the other case: memory the previous file has just freed. BENCHMARKS.md ("Write
units") has what it showed and why syncd writes downloaded bodies in 16 KiB units.

    python3 bench/page_cache.py --sizes 16K,32K,64K,256K,1M --rounds 2 --pause 6
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

GIB = 1 << 30
UNITS = {"K": 1 << 10, "M": 1 << 20}


def size(text: str) -> int:
    text = text.strip().upper()
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def fill(path: Path, unit: int) -> tuple[float, float]:
    """Wall and system seconds to write GIB bytes into a new file, ``unit`` bytes per call."""
    block = memoryview(os.urandom(unit))
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offset = 0
        while offset < GIB:
            offset += os.pwrite(fd, block[: GIB - offset], offset)
    finally:
        os.close(fd)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - started, after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="16K,32K,64K,256K,1M", help="write sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pause", type=float, default=6.0, help="seconds to wait after each delete")
    parser.add_argument("--dir", default="/var/tmp", help="where the 1 GiB file goes (not a tmpfs)")
    args = parser.parse_args()
    reporting = Path("/sys/module/page_reporting/parameters/page_reporting_order")
    print(f"free page reporting: {'order ' + reporting.read_text().strip() if reporting.exists() else 'not loaded'}")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        path = Path(work) / "fill.bin"
        for round_ in range(1, args.rounds + 1):
            for unit in (size(s) for s in args.sizes.split(",")):
                wall, system = fill(path, unit)
                print(
                    f"round {round_}  {unit // 1024:6d} KiB writes: {wall:5.2f} s wall, {system:5.2f} s system",
                    flush=True,
                )
                path.unlink()
                os.sync()
                time.sleep(args.pause)


if __name__ == "__main__":
    main()
