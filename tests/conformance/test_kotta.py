"""The Cloud Kotta backend passes the conformance suite against the Kotta emulator (tests/support/kotta_service.py)."""

from __future__ import annotations

import pytest

from syncd.backends.kotta import KottaBackend, KottaOptions
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy

pytestmark = pytest.mark.s3


def kotta_harness(service, tmp_path, url: str | None = None, **overrides) -> Harness:
    user = service.add_user()  # a user of one's own: list_tasks shows this test's jobs only
    options = KottaOptions.model_validate(
        {
            "type": "kotta",
            "url": url or service.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "default_walltime": "1h",
            **overrides,
        }
    )
    backend = KottaBackend("kotta", options, tmp_path / "work")
    # the ghost: a job of another user, which this user's list never shows
    ghost = lambda h: (o := kotta_harness(service, tmp_path / "other")).run(o.spec("true"))  # noqa: E731
    return Harness(
        backend=backend,
        new_backend=lambda: KottaBackend("kotta", options, tmp_path / "work"),
        scratch=tmp_path,
        poll_interval=0.1,
        timeout=60,
        request_count=lambda: backend.requests_sent,
        ghost_ref=ghost,
        accepts=("_call", lambda method, route, *args, **kw: route == "submit_task"),
    )


@pytest.fixture
def harness(kotta_service, tmp_path):
    return kotta_harness(kotta_service, tmp_path)


@pytest.fixture
def harness_faults(kotta_service, tmp_path):
    with FaultProxy(kotta_service.url) as proxy:
        yield kotta_harness(kotta_service, tmp_path, url=proxy.url, request_timeout="1s"), proxy


class TestKottaBackend(*suites(KottaBackend.capabilities), TransportFaultContract):
    pass
