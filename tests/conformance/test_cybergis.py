"""The CyberGIS-Compute backend passes the conformance suite against the gateway emulator: results read where the
HPC's folders are mounted, and results brought by Globus (the suite reads outputs at once: it waits out NotReady)."""

from __future__ import annotations

import time

import pytest

from syncd.backends.base import RemoteRef
from syncd.backends.cybergis import CybergisBackend, CybergisOptions
from syncd.errors import NotReady
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy

pytestmark = pytest.mark.cybergis


class Patient(CybergisBackend):
    def outputs(self, ref, spec):
        while True:
            try:
                return super().outputs(ref, spec)
            except NotReady:
                time.sleep(0.05)


def cybergis_harness(service, tmp_path, url=None, globus=False, **overrides) -> Harness:
    data, kind = tmp_path / "data", Patient if globus else CybergisBackend
    where = (
        {"globus_endpoint": service.HOST_ENDPOINT, "globus_path": str(data)}
        if globus
        else {"server_data_path": str(data), "results_path": str(service.root / "hpc")}
    )
    options = CybergisOptions.model_validate(
        {
            "type": "cybergis",
            "url": url or service.url,
            "jupyterhub_host": service.HUB,
            "token": service.TOKEN,
            "hpc": service.HPC,
            "runner": service.RUNNER,
            "data_path": str(data),
            "globus_poll": "0.05s",
            **where,
            **overrides,
        }
    )
    backend = kind("cybergis", options, tmp_path / "state")
    return Harness(
        backend=backend,
        new_backend=lambda: kind("cybergis", options, tmp_path / "state"),
        scratch=tmp_path,
        poll_interval=0.1,
        timeout=30,
        request_count=lambda: backend.requests_sent,
        ghost_ref=lambda harness: RemoteRef("1700000000AbCdE", {"key": "syncd-never-submitted"}),
        accepts=("_request", lambda method, route, *args, **kw: method == "POST" and route == "/job"),
    )


@pytest.fixture
def harness(request, cybergis_service, tmp_path):
    return cybergis_harness(cybergis_service, tmp_path, globus=request.cls.globus)


@pytest.fixture
def harness_faults(cybergis_service, tmp_path):
    with FaultProxy(cybergis_service.url) as proxy:
        yield cybergis_harness(cybergis_service, tmp_path, url=proxy.url, request_timeout="1s"), proxy


class TestCybergisMounted(*suites(CybergisBackend.capabilities), TransportFaultContract):
    globus = False


class TestCybergisGlobus(*suites(CybergisBackend.capabilities)):
    globus = True
