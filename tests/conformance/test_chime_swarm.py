"""The chime-swarm backend passes the conformance suite against the frb-master emulator
(tests/support/chime_swarm_service.py)."""

from __future__ import annotations

import pytest

from syncd.backends.base import RemoteRef
from syncd.backends.chime_swarm import ChimeSwarmBackend, ChimeSwarmOptions
from syncd.backends.chime_swarm.api import SPAWN
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy


def chime_swarm_harness(service, tmp_path, url: str | None = None, **overrides) -> Harness:
    user = service.add_user()
    options = ChimeSwarmOptions.model_validate(
        {
            "type": "chime-swarm",
            "url": url or service.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "image": "chimefrb/syncd-test:latest",
            "work_folder": str(tmp_path / "site"),
            **overrides,
        }
    )
    backend = ChimeSwarmBackend("chime", options, tmp_path / "state")

    def ghost(harness: Harness) -> RemoteRef:
        # a job that ran and was removed, folder and all: the service no longer knows it
        ref = harness.run(harness.spec("true"))
        harness.wait(ref)
        harness.backend.cleanup(ref)
        return ref

    return Harness(
        backend=backend,
        new_backend=lambda: ChimeSwarmBackend("chime", options, tmp_path / "state"),
        scratch=tmp_path,
        poll_interval=0.05,
        timeout=60,
        request_count=lambda: backend.requests_sent,
        ghost_ref=ghost,
        accepts=("_call", lambda method, path, *args, **kw: method == "POST" and path == SPAWN),
    )


@pytest.fixture
def harness(chime_swarm_service, tmp_path):
    return chime_swarm_harness(chime_swarm_service, tmp_path)


@pytest.fixture
def harness_faults(chime_swarm_service, tmp_path):
    with FaultProxy(chime_swarm_service.url) as proxy:
        yield chime_swarm_harness(chime_swarm_service, tmp_path, url=proxy.url, request_timeout="1s"), proxy


class TestChimeSwarmBackend(*suites(ChimeSwarmBackend.capabilities), TransportFaultContract):
    pass
