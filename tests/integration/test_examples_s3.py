"""examples/s3 works against a real S3 server: a job's results go through the bucket, and the
standing mirror brings another system's prefix into the outbox."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.harness import SyncdProcess, drop_job, wait_for

pytestmark = [pytest.mark.s3, pytest.mark.e2e]
EXAMPLE = Path(__file__).parents[2] / "examples" / "s3"


def test_examples_s3_config_runs_a_job_and_the_standing_mirror(tmp_path, seaweedfs):
    site = tmp_path / "s3-example"
    shutil.copytree(EXAMPLE, site)
    config = site / "syncd.yaml"
    text = config.read_text().replace("settle: 2s", "settle: 0.3s").replace("every: 5m", "every: 1s")
    config.write_text(text + "http: {listen: '127.0.0.1:0'}\n")
    client = seaweedfs.client()
    for bucket in ("instrument", "results"):
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    client.put_object(Bucket="instrument", Key="runs/2026-11-21/scan.dat", Body=b"scan data")
    env = {
        "S3_ENDPOINT": seaweedfs.endpoint,
        "S3_ACCESS_KEY": seaweedfs.access_key,
        "S3_SECRET_KEY": seaweedfs.secret_key,
    }
    daemon = SyncdProcess(config, env=env).start()
    try:
        drop_job(daemon.inbox, "via-s3", {"command": "echo through the bucket > out.txt"})
        result = daemon.result("via-s3", timeout=60)
        mirrored = site / "outbox" / "instrument" / "runs" / "2026-11-21" / "scan.dat"
        wait_for(mirrored.exists, timeout=30, what="the standing mirror")
    finally:
        daemon.stop()
    assert result["state"] == "succeeded"
    assert (site / "outbox" / "results" / "via-s3" / "out.txt").read_text() == "through the bucket\n"
    remote = client.get_object(Bucket="results", Key="via-s3/out.txt")["Body"].read()
    assert remote == b"through the bucket\n", "the result went through the bucket"
    assert mirrored.read_bytes() == b"scan data"
    assert seaweedfs.secret_key not in daemon.log()
