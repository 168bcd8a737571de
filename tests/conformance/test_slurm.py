"""The Slurm backend passes the conformance suite against a real slurmrestd (Slurm's own cases:
tests/integration/test_slurm_backend.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.backends.base import RemoteRef
from syncd.backends.slurm import SlurmBackend, SlurmOptions
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy

pytestmark = pytest.mark.slurm


def _ghost(harness: Harness) -> RemoteRef:
    """A job id far past the one the cluster just gave out: slurmctld never had it."""
    ref = harness.run(harness.spec("true"))
    return RemoteRef(str(int(ref.remote_id) + 50_000_000), {"dir": str(harness.scratch / "nowhere")})


def slurm_harness(cluster, tmp_path: Path, url: str | None = None, **overrides) -> Harness:
    section = cluster.backend_section(tmp_path / "shared", **overrides)
    if url:
        section["url"] = url
    options = SlurmOptions.model_validate(section)
    backend = SlurmBackend("slurm", options, tmp_path / "state")
    return Harness(
        backend=backend,
        new_backend=lambda: SlurmBackend("slurm", options, tmp_path / "state"),
        scratch=tmp_path,
        poll_interval=0.3,
        timeout=90,
        request_count=lambda: backend.requests_sent,
        ghost_ref=_ghost,
        accepts=("_request", lambda method, url, *args, **kw: method == "POST" and url.endswith("/job/submit")),
    )


@pytest.fixture
def harness(slurm_cluster, tmp_path):
    return slurm_harness(slurm_cluster, tmp_path)


@pytest.fixture
def harness_faults(slurm_cluster, tmp_path):
    with FaultProxy(slurm_cluster.url) as proxy:
        yield slurm_harness(slurm_cluster, tmp_path, url=proxy.url, request_timeout="1s", api_version="v0.0.38"), proxy


class TestSlurmBackend(*suites(SlurmBackend.capabilities), TransportFaultContract):
    pass
