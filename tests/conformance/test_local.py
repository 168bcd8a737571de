"""The local backend passes the conformance suite."""

from __future__ import annotations

import pytest

from syncd.backends.local import LocalBackend, LocalOptions
from tests.conformance.contract import suites
from tests.conformance.harness import Harness


def _ghost(harness: Harness):
    """A job of a backend with another work folder, removed once it ended: this backend never knew it."""
    other = LocalBackend("other", harness.backend.options, harness.scratch / "other-work")
    spec = harness.spec("true")
    other.stage(spec, [])
    ref = other.submit(spec)
    harness.wait(ref, backend=other)
    other.cleanup(ref)
    return ref


@pytest.fixture
def harness(tmp_path):
    options = LocalOptions.model_validate({"type": "local", "max_parallel": 8})
    root = tmp_path / "work"
    return Harness(
        backend=LocalBackend("local", options, root),
        new_backend=lambda: LocalBackend("local", options, root),
        scratch=tmp_path,
        timeout=30,
        ghost_ref=_ghost,
        accepts=("_start_runner", lambda *args: True),
    )


class TestLocalBackend(*suites(LocalBackend.capabilities)):
    pass
