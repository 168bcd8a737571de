"""The local backend passes the conformance suite."""

from __future__ import annotations

import pytest

from syncd.backends.local import LocalBackend, LocalOptions
from tests.conformance.contract import BackendContract, NativeTimeoutContract
from tests.conformance.harness import Harness


@pytest.fixture
def harness(tmp_path):
    options = LocalOptions.model_validate({"type": "local", "max_parallel": 8})
    root = tmp_path / "work"
    return Harness(backend=LocalBackend("local", options, root),
                   new_backend=lambda: LocalBackend("local", options, root), scratch=tmp_path, timeout=30)


class TestLocalBackend(BackendContract, NativeTimeoutContract):
    pass
