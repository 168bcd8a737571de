"""Shared fixtures: config files, job folders, and a real ``syncd run`` process.

Under ``CI=true`` a skip counts as a failure (tests/support/ci_rules.py): a test that
needs a service must start it, not skip.
"""

from __future__ import annotations

import os

import pytest

from syncd.state.store import Store
from tests.support.arc import (  # noqa: F401  (one A-REX of each LRMS, stopped after its last test)
    arc_site,
    arc_slurm_site,
    pytest_collection_modifyitems,
    pytest_runtest_teardown,
)
from tests.support.chime_swarm_service import chime_swarm_service  # noqa: F401  (one frb-master emulator per session)
from tests.support.chime_workflow_service import chime_workflow_service  # noqa: F401  (one buckets service per session)
from tests.support.cybergis_service import cybergis_service  # noqa: F401  (one gateway emulator per session)
from tests.support.forward_proxy import forward_proxy  # noqa: F401  (one tinyproxy per session)
from tests.support.harness import (  # noqa: F401  (helpers re-exported for every test module)
    SyncdProcess,
    drop_job,
    make_config,
    make_job,
    read_result,
    wait_for,
)
from tests.support.kotta_service import kotta_service  # noqa: F401  (one Cloud Kotta emulator per session)
from tests.support.qarnot_service import qarnot, qarnot_service  # noqa: F401  (one Qarnot emulator per session)
from tests.support.s3server import moto_s3, s3rver, seaweedfs  # noqa: F401  (one S3 server of each per session)
from tests.support.share import network_share, share  # noqa: F401,E402  (one sshd per session; sshfs mounts)
from tests.support.slurm import slurm_cluster  # noqa: F401,E402  (one cluster per session)

pytest_plugins = ["tests.support.ci_rules"]  # under CI=true every skip, at collection too, fails


@pytest.fixture(scope="session", autouse=True)
def _snapshots_in_a_test_folder(tmp_path_factory):
    """`syncd sync` remembers configs in $XDG_CACHE_HOME/syncd: the tests' go to a folder of the session, never
    the user's cache (the variable is inherited by every syncd the tests start)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture
def store(tmp_path):
    """An empty state store in the test's folder, closed at the end."""
    s = Store(tmp_path / "state" / "syncd.db")
    yield s
    s.close()


@pytest.fixture
def config_factory(tmp_path):
    """make_config bound to a fresh directory: ``config_factory(**inbox_overrides)`` → config path."""

    def factory(**overrides):
        return make_config(tmp_path / "site", **overrides)

    return factory


@pytest.fixture
def site(config_factory):
    """A config on the embedded default with a short settle time; returns its path."""
    return config_factory()


@pytest.fixture
def daemon(site):
    """A running ``syncd run`` on ``site``; stopped (and checked) at the end of the test."""
    process = SyncdProcess(site)
    process.start()
    yield process
    process.stop()
