"""The CHIME/FRB Workflow backend against the buckets emulator: what the conformance suite does not cover."""

from __future__ import annotations

import pytest

from syncd.backends.base import RemoteState
from syncd.backends.chime_workflow import ChimeWorkflowBackend, ChimeWorkflowOptions
from syncd.errors import AuthError
from tests.conformance.harness import Harness
from tests.conformance.test_chime_workflow import chime_workflow_harness
from tests.support.chime_workflow_service import ChimeWorkflowService


def test_a_retried_deposit_finds_the_work_by_tag_and_duplicates_are_deleted_while_queued(
    chime_workflow_service, tmp_path
):
    harness = chime_workflow_harness(chime_workflow_service, tmp_path)
    spec = harness.spec(f"echo once >> {tmp_path / 'runs.txt'}")
    chime_workflow_service.hold()
    try:
        harness.stage(spec)
        first = harness.backend.submit(spec)
        deposits = [c for c in chime_workflow_service.calls if c["path"] == "/work" and c["method"] == "POST"]
        # the service's own client retries a deposit whose answer it lost: the same Work, twice more
        body = deposits[-1]["body"]
        chime_workflow_service.deposit(body, False)
        chime_workflow_service.deposit(body, False)
        assert len(chime_workflow_service.tagged(spec.submit_key)) == 3
        again = harness.new_backend().submit(spec)
        assert again.remote_id == first.remote_id
        assert [d["id"] for d in chime_workflow_service.tagged(spec.submit_key)] == [first.remote_id]
    finally:
        chime_workflow_service.hold(False)
    assert harness.wait(first).state is RemoteState.SUCCEEDED
    assert (tmp_path / "runs.txt").read_text() == "once\n"
    harness.backend.cleanup(first)
    assert chime_workflow_service.tagged(spec.submit_key) == [] and not (tmp_path / "shared" / spec.submit_key).exists()


def test_a_queued_job_is_cancelled_by_deleting_its_work(chime_workflow_service, tmp_path):
    harness = chime_workflow_harness(chime_workflow_service, tmp_path)
    spec = harness.spec("echo ran > ran.txt")
    chime_workflow_service.hold()
    try:
        ref = harness.run(spec)
        assert harness.backend.poll([ref])[ref.remote_id].state is RemoteState.QUEUED
        harness.backend.cancel(ref)
        harness.backend.cancel(ref)
        assert chime_workflow_service.get(ref.remote_id) is None
        assert harness.backend.poll([ref])[ref.remote_id].state is RemoteState.CANCELLED
    finally:
        chime_workflow_service.hold(False)
    assert not (tmp_path / "shared" / spec.submit_key / "work" / "ran.txt").exists()


def test_results_and_products_of_a_pipeline_function_are_delivered(tmp_path):
    product = tmp_path / "site" / "candidates.h5"

    secret = tmp_path / "elsewhere" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the outbox\n")

    def pipeline(syncd_job_name, **_):
        product.parent.mkdir(exist_ok=True)
        product.write_text(f"made for {syncd_job_name}\n")
        return {"candidates": 3}, [str(product), str(secret), "relative.h5"], []

    service = ChimeWorkflowService(tmp_path / "service", runners=1, function=pipeline).start()
    try:
        harness = chime_workflow_harness(service, tmp_path, products_dirs=[str(product.parent)])
        spec = harness.spec("true")
        ref = harness.run(spec)
        assert harness.wait(ref).state is RemoteState.SUCCEEDED
        outputs = {o.relpath: o for o in harness.backend.outputs(ref, spec)}
        assert sorted(outputs) == ["_workflow/products/candidates.h5", "_workflow/results.json"], (
            "only products under work_dir or products_dirs are read"
        )
        assert '"candidates": 3' in outputs["_workflow/results.json"].source.read_text()
        delivered = outputs["_workflow/products/candidates.h5"].source
        assert delivered == product, "products: bypass, so the runner leaves them where the pipeline made them"
        assert delivered.read_text() == f"made for {spec.name}\n"
    finally:
        service.stop()


def test_one_view_per_poll_whatever_the_number_of_jobs(chime_workflow_service, tmp_path):
    harness = chime_workflow_harness(chime_workflow_service, tmp_path)
    refs = [harness.run(harness.spec("true")) for _ in range(5)]
    before = len(chime_workflow_service.calls)
    harness.backend.poll(refs)
    (call,) = [c for c in chime_workflow_service.calls[before:] if c["path"] == "/view"]
    assert call["path"] == "/view" and sorted(call["body"]["query"]["tags"]["$in"]) == sorted(
        r.handle["key"] for r in refs
    )
    for ref in refs:
        harness.wait(ref)


def test_a_refused_token_is_an_auth_error_and_a_token_file_is_read_afresh(chime_workflow_service, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("wrong\n")
    token_file.chmod(0o600)
    harness: Harness = chime_workflow_harness(chime_workflow_service, tmp_path, token=None, token_file=str(token_file))
    with pytest.raises(AuthError) as caught:
        harness.backend.probe()
    assert "workflow buckets" in str(caught.value)
    token_file.write_text(chime_workflow_service.token)
    harness.backend.probe()
    options = ChimeWorkflowOptions.model_validate(
        {**harness.backend.options.model_dump(), "token_file": None, "token": "wrong"}
    )
    with pytest.raises(AuthError):
        ChimeWorkflowBackend("w", options, tmp_path).poll([])
