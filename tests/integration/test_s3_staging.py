"""A backend reaches syncd's S3 storage: inputs staged in the bucket and fetched by presigned URL, outputs the
service left in the bucket copied server-side into the results folder, the staging area removed afterwards."""

from __future__ import annotations

import pytest

from syncd.backends.memory import MemoryService
from tests.integration.conftest import bucket_contents
from tests.unit.test_engine_contract import World

pytestmark = pytest.mark.s3


@pytest.fixture
def s3_world(seaweedfs, tmp_path):
    made: list[World] = []

    def build(service: MemoryService) -> tuple[World, str]:
        bucket = seaweedfs.new_bucket()
        storages = {"local": {"type": "file", "root": "buckets"}, "s3": seaweedfs.storage_options()}
        made.append(World(tmp_path, service, storages=storages, storage="s3", bucket=bucket, prefix="lab"))
        return made[-1], bucket

    yield build
    for world in made:
        world.close()


def test_inputs_by_presigned_url_and_outputs_copied_inside_the_bucket(s3_world, seaweedfs):
    w, bucket = s3_world(MemoryService(inputs_by_url=True, outputs_to="storage"))
    job_id = w.drop(
        "via-s3",
        {"command": "mkdir -p out && tr a-z A-Z < data/in.txt > out/up.txt"},
        files={"data/in.txt": "hello by url\n"},
    )
    w.pump_until(lambda: w.job(job_id).state == "succeeded" and w.job(job_id).finished, timeout=60)
    assert w.outbox(job_id, "out/up.txt").read_text() == "HELLO BY URL\n"
    job = w.job(job_id)
    keys = sorted(bucket_contents(seaweedfs, bucket))
    assert f"{job.folder}/out/up.txt" in keys and f"{job.folder}/syncd-result.json" in keys
    assert not [k for k in keys if "/_inputs/" in k or "/_outputs/" in k], f"staging area left behind: {keys}"


def test_outputs_the_service_put_in_the_results_folder_are_recorded_in_place(s3_world, seaweedfs):
    w, bucket = s3_world(MemoryService(outputs_to="results"))
    job_id = w.drop("in-place", {"command": "echo here > here.txt"})
    w.pump_until(lambda: w.job(job_id).state == "succeeded", timeout=60)
    assert w.outbox(job_id, "here.txt").read_text() == "here\n"
    assert [o["path"] for o in w.result(job_id)["outputs"]] == ["here.txt"]
