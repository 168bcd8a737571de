"""The Qarnot backend's own cases against the emulator: each refusal, staging once, paging, delivery, cleanup."""

from __future__ import annotations

import time
import uuid

import pytest

from syncd.backends import wrapper
from syncd.backends.base import JobSpec, RemoteState, StagingArea
from syncd.backends.qarnot import QarnotBackend, QarnotOptions
from syncd.errors import AccountError, AuthError, PermanentError, TransientError
from syncd.intake.manifest import InputFile
from syncd.storage.s3.storage import S3Storage, S3StorageOptions

pytestmark = pytest.mark.s3


@pytest.fixture
def backend(qarnot, tmp_path):
    options = QarnotOptions.model_validate(qarnot.backend_section())
    made = QarnotBackend(f"it-{uuid.uuid4().hex[:8]}", options, tmp_path / "work")
    yield made
    made.close()


def spec(command="true", staging=None, **extra) -> JobSpec:
    job_id = uuid.uuid4().hex[:10]
    return JobSpec(
        job_id=job_id,
        name=f"it-{job_id}",
        submit_key=f"syncd-{job_id}",
        attempt=1,
        command=command,
        staging=staging,
        **extra,
    )


def wait(backend, ref):
    for _ in range(300):
        status = backend.poll([ref])[ref.remote_id]
        if status.state.terminal:
            return status
        time.sleep(0.05)
    raise AssertionError("the task did not end")


def test_out_of_credits_is_an_account_refusal_that_pauses(backend, qarnot):
    backend.stage(job := spec(), [])
    qarnot.account(credits=0)
    with pytest.raises(AccountError, match="not enough credits"):
        backend.submit(job)


def test_no_matching_hardware_is_permanent_for_the_job(backend):
    backend.stage(job := spec(resources={"cpus": 100000}), [])
    with pytest.raises(PermanentError, match="hardware constraints") as caught:
        backend.submit(job)
    assert not isinstance(caught.value, AuthError)


def test_task_quota_reached_is_transient_with_a_wait(backend, qarnot):
    backend.stage(job := spec(), [])
    qarnot.account(max_task=0)
    with pytest.raises(TransientError, match="as many tasks") as caught:
        backend.submit(job)
    assert caught.value.retry_after and caught.value.retry_after >= 30


@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_unavailable_are_transient_with_retry_after(backend, qarnot, status):
    backend.stage(job := spec(), [])
    qarnot.fail_next(status, "busy", method="POST", path="/tasks", retry_after="7")
    with pytest.raises(TransientError) as caught:
        backend.submit(job)
    assert caught.value.retry_after == 7.0
    assert backend.find(job) is None, "nothing was submitted"


def test_check_says_what_qarnot_cannot_honour(backend):
    problems = backend.check(spec(resources={"walltime": 60, "gpus": 2, "cpus": 2}))
    assert [p.split(":")[0] for p in problems] == ["resources.walltime", "resources.gpus"]
    assert "timeout" in problems[0]


def test_unchanged_inputs_are_not_uploaded_twice(backend, qarnot, tmp_path, seaweedfs):
    source = tmp_path / "in.txt"
    source.write_text("input\n")
    job = spec()
    backend.stage(job, [InputFile("in.txt", source, 6)])
    client = seaweedfs.client()
    key = f"{job.job_id}/in.txt"
    first = client.head_object(Bucket=backend.options.resource_bucket, Key=key)["LastModified"]
    time.sleep(1.1)
    backend.stage(job, [InputFile("in.txt", source, 6)])
    assert client.head_object(Bucket=backend.options.resource_bucket, Key=key)["LastModified"] == first
    source.write_text("changed\n")
    backend.stage(job, [InputFile("in.txt", source, 8)])
    assert client.get_object(Bucket=backend.options.resource_bucket, Key=key)["Body"].read() == b"changed\n"


def test_one_poll_pages_through_every_task_of_the_backend(backend, qarnot):
    refs = []
    for _ in range(7):
        backend.stage(job := spec(), [])
        refs.append(backend.submit(job))
    qarnot.account(page_size=3)
    before = backend.requests_sent
    statuses = backend.poll(refs)
    assert backend.requests_sent - before == 3 and all(
        statuses[r.remote_id].state is not RemoteState.UNKNOWN for r in refs
    )


def test_outputs_on_the_same_s3_are_objects_to_copy_and_cleanup_removes_everything(backend, qarnot, seaweedfs):
    storage = S3Storage("s3", S3StorageOptions.model_validate(seaweedfs.storage_options(create_buckets=True)))
    staging = StagingArea.for_job(storage, seaweedfs.new_bucket("qout"), "", uuid.uuid4().hex[:8])
    job = spec("echo made > made.txt", staging=staging)
    backend.stage(job, [])
    ref = backend.submit(job)
    assert wait(backend, ref).state is RemoteState.SUCCEEDED
    outputs = {o.relpath: o for o in backend.outputs(ref, job)}
    assert sorted(outputs) == [wrapper.EXIT_FILE, "made.txt"]
    made = outputs["made.txt"]
    assert made.source is None and made.remote is not None and made.remote.bucket == ref.handle["results"]
    backend.cleanup(ref)
    backend.cleanup(ref)  # idempotent
    assert backend.find(job) is None
    buckets = {b["Name"] for b in seaweedfs.client().list_buckets()["Buckets"]}
    assert ref.handle["results"] not in buckets
    assert not list(
        seaweedfs.client()
        .list_objects_v2(Bucket=backend.options.resource_bucket, Prefix=ref.handle["inputs"])
        .get("Contents", [])
    )
