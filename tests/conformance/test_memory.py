"""The memory backend passes the conformance suite as the reference backend and as each kind of remote service."""

from __future__ import annotations

import pytest

from syncd.backends.base import CancelSupport, Capabilities, LogDelivery
from syncd.backends.memory import MemoryBackend, MemoryService
from syncd.config import BackendOptions
from tests.conformance.contract import suites
from tests.conformance.harness import Harness

VARIANTS = {
    "Reference": Capabilities(native_timeout=True, logs=LogDelivery.STREAMED),
    # like a remote job service: no exit codes, cancel only while queued, logs at the end, one request per job
    "RemoteLike": Capabilities(
        batched_poll=False,
        cancel=CancelSupport.WHILE_QUEUED,
        exit_codes=False,
        separate_stderr=False,
        multi_step_submit=True,
    ),
    "NoCancel": Capabilities(cancel=CancelSupport.NEVER, exit_codes=False),
}


@pytest.fixture
def harness(request, tmp_path) -> Harness:
    capabilities = request.cls.capabilities
    options, root, service = BackendOptions(type="memory"), tmp_path / "work", MemoryService(capabilities=capabilities)

    def ghost(harness: Harness):  # a job of another service instance: this one never heard of it
        spec = harness.spec("true")
        other = MemoryBackend("other", options, tmp_path / "other", MemoryService(capabilities=capabilities))
        other.stage(spec, [])
        return other.submit(spec)

    return Harness(
        backend=MemoryBackend("memory", options, root, service),
        new_backend=lambda: MemoryBackend("memory", options, root, service),
        scratch=tmp_path,
        poll_interval=0.05,
        timeout=30,
        request_count=lambda: service.requests,
        ghost_ref=ghost,
        accepts=("_stepped", lambda step, job: step == "created"),
    )


for _name, _capabilities in VARIANTS.items():
    globals()[f"TestMemory{_name}"] = type(f"TestMemory{_name}", suites(_capabilities), {"capabilities": _capabilities})
