"""The Qarnot backend passes the conformance suite against the Qarnot emulator (tests/support/qarnot_service.py)."""

from __future__ import annotations

import uuid

import pytest

from syncd.backends.base import RemoteRef
from syncd.backends.qarnot import QarnotBackend, QarnotOptions
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy

pytestmark = pytest.mark.s3


def qarnot_harness(emulator, tmp_path, url: str | None = None, **overrides) -> Harness:
    """A backend of its own name (so its tag selects only this test's tasks) on the session's emulator."""
    section = emulator.backend_section(**overrides)
    if url:
        section["cluster_url"] = url
    options, name = QarnotOptions.model_validate(section), f"conf-{uuid.uuid4().hex[:8]}"
    backend = QarnotBackend(name, options, tmp_path / "work")
    return Harness(
        backend=backend,
        new_backend=lambda: QarnotBackend(name, options, tmp_path / "work"),
        scratch=tmp_path,
        poll_interval=0.1,
        timeout=30,
        request_count=lambda: backend.requests_sent,
        ghost_ref=lambda harness: RemoteRef(str(uuid.uuid4()), {}),
        accepts=("_call", lambda method, path, *args, **kw: method == "POST" and path == "/tasks"),
    )


@pytest.fixture
def harness(qarnot, tmp_path):
    return qarnot_harness(qarnot, tmp_path)


@pytest.fixture
def harness_faults(qarnot, tmp_path):
    with FaultProxy(qarnot.url) as proxy:
        yield qarnot_harness(qarnot, tmp_path, url=proxy.url, request_timeout="1s"), proxy


class TestQarnotBackend(*suites(QarnotBackend.capabilities), TransportFaultContract):
    pass
