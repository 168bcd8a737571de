"""The ARC backend passes the conformance suite against a real A-REX (scripts/arc-site, fork LRMS)."""

from __future__ import annotations

import pytest

from syncd.backends.arc import ArcBackend, ArcOptions
from syncd.backends.base import RemoteRef
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.arc import ArcSite, TlsFaultProxy

pytestmark = pytest.mark.arc


def arc_harness(site: ArcSite, tmp_path, url: str | None = None, **overrides) -> Harness:
    options = ArcOptions.model_validate(site.backend_section(**({"url": url} if url else {}), **overrides))
    backend = ArcBackend("arc", options, tmp_path / "work")
    return Harness(
        backend=backend,
        new_backend=lambda: ArcBackend("arc", options, tmp_path / "work"),
        scratch=site.scratch("conformance"),  # jobs run as the site's mapped user
        poll_interval=0.3,
        timeout=90,
        request_count=lambda: backend.requests_sent,
        # an id of the right shape that no job has
        ghost_ref=lambda h: RemoteRef("0" * 56, {"key": "ghost"}),
        accepts=("_json", lambda method, path, *args, **kw: method == "POST" and path == "jobs?action=new"),
    )


@pytest.fixture
def harness(arc_site, tmp_path):
    return arc_harness(arc_site, tmp_path)


@pytest.fixture
def harness_faults(arc_site, tmp_path):
    with TlsFaultProxy(arc_site) as proxy:
        yield arc_harness(arc_site, tmp_path, url=proxy.url, request_timeout="2s"), proxy


class TestArcBackend(*suites(ArcBackend.capabilities), TransportFaultContract):
    pass
