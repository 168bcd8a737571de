"""The ARC backend against a real A-REX whose LRMS is the project's real Slurm cluster."""

from __future__ import annotations

from dataclasses import replace

import pytest

from syncd.backends.arc import ArcBackend, ArcOptions
from syncd.backends.base import RemoteState, StagingArea
from tests.conformance.harness import Harness
from tests.integration.conftest import make_storage

pytestmark = [pytest.mark.arc, pytest.mark.slurm]


@pytest.fixture
def harness(arc_slurm_site, tmp_path):
    options = ArcOptions.model_validate(arc_slurm_site.backend_section())
    backend = ArcBackend("arc", options, tmp_path / "work")
    return Harness(
        backend=backend,
        new_backend=lambda: ArcBackend("arc", options, tmp_path / "work"),
        scratch=arc_slurm_site.scratch("slurm"),
        poll_interval=0.3,
        timeout=120,
    )


def test_jobs_run_on_slurm_with_outputs_exit_codes_and_cancel(harness, slurm_cluster):
    ok = harness.spec('echo "$SLURM_JOB_ID" > slurm-id.txt; cat in.txt', resources={"cpus": 1})
    failing = harness.spec("echo partial > partial.txt; exit 3")
    stopped = harness.spec("echo begun; sleep 120")
    refs = [harness.run(ok, {"in.txt": b"input\n"}), harness.run(failing), harness.run(stopped)]
    harness.wait(refs[2], until=lambda s: s.state is RemoteState.RUNNING)
    harness.backend.cancel(refs[2])
    statuses = {r.remote_id: harness.wait(r) for r in refs}
    first, second, third = (statuses[r.remote_id] for r in refs)
    assert first.state is RemoteState.SUCCEEDED and first.exit_code == 0, first
    outputs = {o.relpath: o for o in harness.backend.outputs(refs[0], ok)}
    slurm_id = outputs["slurm-id.txt"].source.read_text().strip()
    assert slurm_id.isdigit(), "the job ran under Slurm"
    assert "in.txt" not in outputs
    assert "input" in harness.backend.logs(refs[0]).stdout.read_text()
    assert second.state is RemoteState.FAILED and second.exit_code == 3, second
    assert third.state is RemoteState.CANCELLED, third


@pytest.mark.s3
def test_inputs_from_the_inbox_storage_are_fetched_on_the_slurm_node(
    arc_slurm_site, slurm_cluster, seaweedfs, tmp_path
):
    options = ArcOptions.model_validate(arc_slurm_site.backend_section(inputs="storage"))
    backend = ArcBackend("arc", options, tmp_path / "work")
    harness = Harness(
        backend=backend,
        new_backend=lambda: ArcBackend("arc", options, tmp_path / "work"),
        scratch=arc_slurm_site.scratch("slurm-s3"),
        poll_interval=0.3,
        timeout=120,
    )
    spec = harness.spec('echo "$SLURM_JOB_ID" > slurm-id.txt; sort "data/in put.txt" > sorted.txt')
    bucket = seaweedfs.new_bucket("arc-slurm-in")
    spec = replace(spec, staging=StagingArea.for_job(make_storage(seaweedfs), bucket, "lab", spec.job_id))
    ref = harness.run(spec, {"data/in put.txt": b"b\na\n"})
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    outputs = {o.relpath: o.source.read_bytes() for o in backend.outputs(ref, spec)}
    assert outputs["sorted.txt"] == b"a\nb\n" and outputs["slurm-id.txt"].strip().isdigit(), outputs
    assert "data/in put.txt" not in outputs, "an unchanged fetched input is not an output"
