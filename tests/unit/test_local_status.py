"""What the local backend says of a job from its control folder alone, in each state a runner can leave it."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from syncd.backends.base import RemoteRef, RemoteState
from syncd.backends.local import LocalBackend, LocalOptions


@pytest.fixture
def backend(tmp_path):
    options = LocalOptions.model_validate({"type": "local"})
    local = LocalBackend("local", options, tmp_path / "work")
    yield local
    local.close()


def status_of(backend: LocalBackend, key: str):
    return backend.poll([RemoteRef(key)])[key]


def test_each_state_of_a_control_folder_is_told_apart(backend, tmp_path):
    ctrl = tmp_path / "work" / "syncd-a" / "ctrl"
    assert status_of(backend, "syncd-a").state == RemoteState.UNKNOWN  # never staged here
    ctrl.mkdir(parents=True)
    assert status_of(backend, "syncd-a").state == RemoteState.QUEUED  # the runner has not claimed it yet
    (ctrl / "claim").write_text("not a pid")
    lost = status_of(backend, "syncd-a")
    assert (lost.state, lost.native) == (RemoteState.FAILED, "lost")  # claimed, no runner holds its lock
    assert "died without recording an exit status" in (lost.message or "")
    held = os.open(ctrl / "alive.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert status_of(backend, "syncd-a").state == RemoteState.RUNNING
    finally:
        os.close(held)
    (ctrl / "status.json").write_text(json.dumps({"exit_code": 0, "started": 1.0, "ended": 2.0}))
    done = status_of(backend, "syncd-a")
    assert (done.state, done.exit_code, done.started, done.ended) == (RemoteState.SUCCEEDED, 0, 1.0, 2.0)
    (ctrl / "status.json").write_text(json.dumps({"exit_code": None, "cancelled": True}))
    assert status_of(backend, "syncd-a").state == RemoteState.CANCELLED


def test_a_file_where_the_control_folder_should_be_is_unknown_not_an_error(backend, tmp_path):
    attempt = tmp_path / "work" / "syncd-b"
    attempt.mkdir(parents=True)
    (attempt / "ctrl").write_text("not a folder")
    assert status_of(backend, "syncd-b").state == RemoteState.UNKNOWN
