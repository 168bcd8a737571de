"""kill -9 aimed at every phase of a job, many times in one run: each job still runs exactly once.

Each daemon life is started with one crash point (``SYNCD_CRASH_AT``, see ``syncd/crashpoints.py``)
and killed by it; new jobs are dropped every life, so older ones are caught in later phases. The
settle phase is hit from outside (killed while a folder is settling). At the end one clean daemon
finishes everything and the promises are checked with counts (``tests/support/chaos.py``). The
same run against Slurm is in ``test_slurm_jobs.py``; mid-mirror through S3 in
``tests/integration/test_s3_daemon.py``.
"""

from __future__ import annotations

import pytest

from tests.support.chaos import kill_at_each_point_then_finish

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Every transition a successful job makes, and every side effect whose new state is not saved yet.
POINTS = [
    "claimed-unrecorded",
    "after:claimed",
    "after:staging",
    "staged-unrecorded",
    "after:staged",
    "after:submitting",
    "submitted-unrecorded",
    "after:submitted",
    "after:running",
    "after:collecting",
    "delivered-unrecorded",
    "after:succeeded",
    "archived-unrecorded",
]


def test_kill_9_at_every_phase_then_restart_runs_every_job_exactly_once(config_factory):
    kills = kill_at_each_point_then_finish(config_factory(settle="0.5s", max_parallel=4), POINTS)
    assert len(kills) == len(POINTS) + 1, kills
