"""``syncd cancel`` says so when the job's backend cannot stop it (by the capability its type declares)."""

from __future__ import annotations

from click.testing import CliRunner

from syncd import plugins
from syncd.backends.base import CancelSupport, Capabilities
from syncd.backends.local import LocalBackend
from syncd.cli import main
from syncd.service.daemon import load
from syncd.state.store import Store
from tests.support.harness import make_config


class _NoCancel(LocalBackend):
    capabilities = Capabilities(cancel=CancelSupport.NEVER)


class _QueuedOnly(LocalBackend):
    capabilities = Capabilities(cancel=CancelSupport.WHILE_QUEUED)


def _running_job(tmp_path, state: str) -> tuple[str, Store]:
    path = make_config(tmp_path / "site")
    store = Store(load(path).db_path)
    store.create_job(
        id="j1",
        name="long",
        dir_name="long",
        inbox="default",
        backend="local",
        storage="local",
        bucket="results",
        spool_path=str(tmp_path / "spool" / "j1"),
    )
    store.update("j1", state=state, remote_id="r1")
    return str(path), store


def _cancel(monkeypatch, tmp_path, backend_type, state="running") -> str:
    path, store = _running_job(tmp_path, state)
    original = plugins.load
    monkeypatch.setattr(plugins, "load", lambda kind, name: backend_type if kind == "backend" else original(kind, name))
    result = CliRunner().invoke(main, ["cancel", "-c", path, "j1"])
    assert result.exit_code == 0, result.output
    assert store.get("j1").cancel_requested == 1, "the request is recorded either way"
    return result.output


def test_cancel_on_a_backend_that_cannot_cancel_says_what_will_happen(monkeypatch, tmp_path):
    output = _cancel(monkeypatch, tmp_path, _NoCancel)
    assert "note: backend local cannot cancel jobs" in output and "marked cancelled" in output


def test_cancel_of_a_started_job_on_a_queued_only_backend_says_so_but_not_of_a_queued_one(monkeypatch, tmp_path):
    assert "stops only queued jobs" in _cancel(monkeypatch, tmp_path / "a", _QueuedOnly, "running")
    assert "note:" not in _cancel(monkeypatch, tmp_path / "b", _QueuedOnly, "queued")


def test_cancel_on_a_backend_that_can_cancel_adds_no_note(monkeypatch, tmp_path):
    assert "note:" not in _cancel(monkeypatch, tmp_path, LocalBackend)


def test_cancel_of_an_ended_job_says_it_has_ended_and_exits_non_zero(tmp_path):
    path, store = _running_job(tmp_path, "succeeded")
    result = CliRunner().invoke(main, ["cancel", "-c", path, "j1"])
    assert result.exit_code == 1, result.output
    assert "has already ended (succeeded); nothing to cancel" in result.output
    assert "acts on it shortly" not in result.output
    assert store.get("j1").cancel_requested == 0, "no request is left for the daemon"
