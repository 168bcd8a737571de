"""The in-memory reference backend passes the conformance suite."""

from __future__ import annotations

import pytest

from syncd.backends.memory import MemoryBackend, MemoryService
from syncd.config import BackendOptions
from tests.conformance.contract import BackendContract, NativeTimeoutContract
from tests.conformance.harness import Harness


@pytest.fixture
def harness(tmp_path):
    options = BackendOptions(type="memory")
    service = MemoryService()
    root = tmp_path / "work"
    return Harness(backend=MemoryBackend("memory", options, root, service),
                   new_backend=lambda: MemoryBackend("memory", options, root, service), scratch=tmp_path,
                   poll_interval=0.05, timeout=30, request_count=lambda: service.requests)


class TestMemoryBackend(BackendContract, NativeTimeoutContract):
    pass
