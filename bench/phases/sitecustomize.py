"""Loaded by every Python process started with this folder on PYTHONPATH: in the daemon (``python -m
syncd run``) with SYNCD_BENCH_PHASES set, it installs bench/phase_timing.py."""

import os
import sys

if os.environ.get("SYNCD_BENCH_PHASES") and sys.orig_argv[1:4] == ["-m", "syncd", "run"]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from phase_timing import install

    install(os.environ["SYNCD_BENCH_PHASES"])
