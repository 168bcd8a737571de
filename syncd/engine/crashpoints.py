"""Crash points: kill -9 the daemon at a named instant, to prove that a restart finishes every job once.

The chaos tests set ``SYNCD_CRASH_AT`` (comma-separated names) for one run of ``syncd run``; when the
engine reaches a named point the process sends itself SIGKILL: no cleanup, no flush, exactly what
``kill -9`` at that instant does. Unset (always, in production) the points cost one set lookup.

Names: ``after:<state>`` right after a transition into ``<state>`` is committed (the state is saved,
the work that follows is not done), and ``<step>-unrecorded`` right after a side effect whose new
state is not saved yet: ``claimed-unrecorded`` (folder renamed into the spool),
``staged-unrecorded`` (inputs copied), ``submitted-unrecorded`` (backend accepted the job), ``delivered-unrecorded`` (result record
written), ``archived-unrecorded`` (claimed folder archived).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

ENV = "SYNCD_CRASH_AT"


class CrashPoints:
    def __init__(self, names: frozenset[str] = frozenset()):
        self.names = names

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CrashPoints:
        return cls(frozenset(n.strip() for n in environ.get(ENV, "").split(",") if n.strip()))

    def reached(self, name: str) -> None:
        if name in self.names:
            sys.stderr.write(f"syncd: crash point {name} reached; killing this process (SIGKILL)\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
