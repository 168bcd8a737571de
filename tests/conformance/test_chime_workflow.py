"""The CHIME/FRB Workflow backend passes the conformance suite against the buckets emulator and its site runner
(tests/support/chime_workflow_service.py)."""

from __future__ import annotations

import uuid

import pytest

from syncd.backends.base import RemoteRef
from syncd.backends.chime_workflow import ChimeWorkflowBackend, ChimeWorkflowOptions
from tests.conformance.contract import TransportFaultContract, suites
from tests.conformance.harness import Harness
from tests.support.http_faults import FaultProxy


def chime_workflow_harness(service, tmp_path, url: str | None = None, **overrides) -> Harness:
    options = ChimeWorkflowOptions.model_validate(
        {
            "type": "chime-workflow",
            "url": url or service.url,
            "token": service.token,
            "pipeline": "syncd-jobs",
            "site": "local",
            "user": "conformance",
            "work_dir": str(tmp_path / "shared"),
            **overrides,
        }
    )
    backend = ChimeWorkflowBackend("chime-workflow", options, tmp_path / "work")
    return Harness(
        backend=backend,
        new_backend=lambda: ChimeWorkflowBackend("chime-workflow", options, tmp_path / "work"),
        scratch=tmp_path,
        poll_interval=0.1,
        timeout=30,
        request_count=lambda: backend.requests_sent,
        # a Work of nobody's: an id the bucket never gave, under a tag no job carries
        ghost_ref=lambda h: RemoteRef("0" * 24, {"key": f"syncd-ghost-{uuid.uuid4().hex[:8]}"}),
        accepts=("_call", lambda method, route, *args, **kw: method == "POST" and route == "/work"),
    )


@pytest.fixture
def harness(chime_workflow_service, tmp_path):
    return chime_workflow_harness(chime_workflow_service, tmp_path)


@pytest.fixture
def harness_faults(chime_workflow_service, tmp_path):
    with FaultProxy(chime_workflow_service.url) as proxy:
        yield chime_workflow_harness(chime_workflow_service, tmp_path, url=proxy.url, request_timeout="1s"), proxy


class TestChimeWorkflowBackend(*suites(ChimeWorkflowBackend.capabilities), TransportFaultContract):
    pass
