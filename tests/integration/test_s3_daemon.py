"""The real ``syncd run`` with an S3 storage: a dropped job's results go through the bucket to the outbox,
and standing mirrors keep bucket prefixes mirrored on a schedule."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import bucket_contents, tree
from tests.support.harness import (
    SyncdProcess,
    drop_job,
    http_get,
    http_port,
    make_config,
    readyz,
    wait_for,
)

pytestmark = [pytest.mark.s3, pytest.mark.e2e]


def s3_site(root, server, bucket: str, **extra):
    storages = {"local": {"type": "file", "root": "buckets"}, "s3": server.storage_options(create_buckets=True)}
    return make_config(root, storage="s3", bucket=bucket, extra={"storages": storages, **extra})


def test_dropped_job_delivers_through_s3_into_the_outbox(seaweedfs, tmp_path):
    bucket = f"e2e-{tmp_path.name[-8:].lower().replace('_', '-')}"
    config = s3_site(tmp_path / "site", seaweedfs, bucket)
    daemon = SyncdProcess(config).start()
    try:
        drop_job(
            daemon.inbox,
            "analysis",
            {
                "command": "mkdir -p out/deep && tr a-z A-Z < in.txt > out/deep/up.txt"
                " && printf '' > out/empty.txt && echo done"
            },
            {"in.txt": "hello s3\n"},
        )
        record = daemon.result("analysis", bucket=bucket, timeout=60)
    finally:
        daemon.stop()
    assert record["state"] == "succeeded", daemon.log()
    folder = daemon.outbox / bucket / "analysis"
    assert (folder / "out" / "deep" / "up.txt").read_text() == "HELLO S3\n"
    assert (folder / "out" / "empty.txt").read_bytes() == b""
    assert (folder / "syncd-stdout.txt").read_text() == "done\n"
    remote = bucket_contents(seaweedfs, bucket, "analysis/")
    local = tree(folder)
    assert remote == local  # the result record is in both, written last
    assert seaweedfs.secret_key not in daemon.log()


def test_standing_mirror_keeps_a_prefix_mirrored(seaweedfs, tmp_path):
    bucket = seaweedfs.new_bucket("standing")
    client = seaweedfs.client()
    client.put_object(Bucket=bucket, Key="instrument/run1/data.csv", Body=b"1,2\n")
    mirrors = [
        {
            "name": "instrument",
            "storage": "s3",
            "bucket": bucket,
            "prefix": "instrument/",
            "outbox": "mirrored",
            "every": "1s",
        }
    ]
    config = s3_site(tmp_path / "site", seaweedfs, bucket, mirrors=mirrors)
    daemon = SyncdProcess(config).start()
    target = daemon.root / "mirrored" / bucket / "instrument"
    try:
        wait_for(lambda: (target / "run1" / "data.csv").exists(), timeout=30, what="the first mirror pass")
        client.put_object(Bucket=bucket, Key="instrument/run2/data.csv", Body=b"3,4\n")
        client.put_object(Bucket=bucket, Key="instrument/run1/data.csv", Body=b"9,9\n")
        wait_for(
            lambda: (target / "run2" / "data.csv").exists() and (target / "run1" / "data.csv").read_bytes() == b"9,9\n",
            timeout=30,
            what="the next pass",
        )
        client.put_object(Bucket=bucket, Key="instrument/run3/COM1", Body=b"x")  # a device name on SMB
        wait_for(lambda: "refused remote object" in daemon.log(), timeout=30, what="the refusal to be logged")
    finally:
        daemon.stop()
    assert tree(target) == {"run1/data.csv": b"9,9\n", "run2/data.csv": b"3,4\n"}


def test_standing_mirror_with_wrong_credentials_logs_and_daemon_stays_up(seaweedfs, tmp_path):
    bucket = seaweedfs.new_bucket("badcreds")
    storages = {
        "local": {"type": "file", "root": "buckets"},
        "bad": seaweedfs.storage_options(secret_access_key="wrong-secret-value-123"),
    }
    mirrors = [{"name": "m", "storage": "bad", "bucket": bucket, "outbox": "mirrored", "every": "1s"}]
    config = make_config(tmp_path / "site", extra={"storages": storages, "mirrors": mirrors})
    daemon = SyncdProcess(config).start()
    try:
        wait_for(lambda: "refused the credentials" in daemon.log(), timeout=30, what="the auth error")
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
    assert "wrong-secret-value-123" not in daemon.log()


@pytest.mark.parametrize("status", [503, 500])
def test_failing_s3_endpoint_costs_one_probe_per_interval_and_jobs_resume_exactly_once(
    seaweedfs, tmp_path, proxy_for, status
):
    """A storage answering 503 SlowDown (with Retry-After) or 500 to everything: syncd stops calling it after
    `circuit_after` failures, probes once per backoff interval, and every job finishes once it answers again."""
    proxy = proxy_for(seaweedfs)
    bucket = seaweedfs.new_bucket(f"breaker{status}")
    storages = {
        "local": {"type": "file", "root": "buckets"},
        "s3": seaweedfs.storage_options(endpoint_url=proxy.endpoint),
    }
    config = make_config(
        tmp_path / "site",
        storage="s3",
        bucket=bucket,
        max_parallel=6,
        extra={"storages": storages, "retry": {"initial": "0.5s", "max": "2s", "budget": "1h"}},
    )
    daemon = SyncdProcess(config).start()
    port = http_port(daemon)
    names = [f"job-{i:02d}" for i in range(10)]
    try:
        proxy.faults.answer = status
        for name in names:
            drop_job(daemon.inbox, name, {"command": f"echo {name} > out.txt"})
        wait_for(lambda: "storage s3 is not answering" in daemon.log(), timeout=30, what="the circuit to open")
        proxy.clear()
        window = 8.0
        time.sleep(window)
        calls = proxy.count()
        # Without a breaker each of the 10 jobs retries every 0.5–2 s: 49 calls in the window (measured).
        # With it: one probe per interval (0.25 s growing to 1–2 s) → at most ~10.
        assert calls <= 14, f"{calls} requests reached the failing endpoint in {window}s"
        code, body = readyz(port)
        assert code == 503 and "not answering" in body["problems"]["storage s3"]
        assert "storage s3 is not answering since" in daemon.cli("status").stdout
        assert 'syncd_circuit_open{service="storage s3"} 1.0' in http_get(port, "/metrics")[1]
        proxy.faults.answer = 0
        results = {name: daemon.result(name, bucket=bucket, timeout=60) for name in names}
        wait_for(lambda: readyz(port)[0] == 200, timeout=30, what="/readyz to recover")
        assert 'syncd_circuit_open{service="storage s3"} 0.0' in http_get(port, "/metrics")[1]
    finally:
        daemon.stop()
    assert {r["state"] for r in results.values()} == {"succeeded"}, results
    for name in names:
        assert (daemon.outbox / bucket / name / "out.txt").read_text() == f"{name}\n"
    assert sorted(p.name for p in (daemon.outbox / bucket).iterdir()) == names, "each job delivered once"
    assert "storage s3 answers again" in daemon.log()
    assert seaweedfs.secret_key not in daemon.log()


def test_kill_9_mid_mirror_in_the_daemon_then_restart_delivers_once_and_complete(seaweedfs, tmp_path, proxy_for):
    """Outputs go up to the bucket, then down into the outbox: kill -9 while they come down (throttled)."""
    proxy = proxy_for(seaweedfs)
    proxy.faults.delay_per_chunk = 0.3
    bucket = seaweedfs.new_bucket("midmirror")
    storages = {
        "local": {"type": "file", "root": "buckets"},
        "s3": seaweedfs.storage_options(endpoint_url=proxy.endpoint),
    }
    config = make_config(tmp_path / "site", storage="s3", bucket=bucket, extra={"storages": storages})
    ledger = tmp_path / "ledger.txt"
    daemon = SyncdProcess(config).start()
    folder = daemon.outbox / bucket / "many"
    command = f"echo run >> {ledger}; for i in $(seq 1 40); do head -c 150000 /dev/urandom > f$i.bin; done"
    try:
        drop_job(daemon.inbox, "many", {"command": command})
        wait_for(lambda: folder.is_dir() and any(folder.glob("f*.bin")), timeout=90, what="the mirror to start")
        daemon.kill9()
    finally:
        if daemon.proc.poll() is None:
            daemon.kill9()
    assert not (folder / "syncd-result.json").exists(), "killed before the record: the test hit the mirror"
    remote = bucket_contents(seaweedfs, bucket, "many/")
    partial = tree(folder)
    assert 0 < len(partial) < len(remote), "some files were mirrored, not all"
    for rel, data in partial.items():
        assert remote[rel] == data, f"{rel} is at its final path but not complete"

    proxy.faults.delay_per_chunk = 0.0
    daemon = SyncdProcess(config).start()
    try:
        record = daemon.result("many", bucket=bucket, timeout=90)
    finally:
        daemon.stop()
    assert record["state"] == "succeeded"
    assert ledger.read_text() == "run\n", "the job ran once"
    assert tree(folder) == bucket_contents(seaweedfs, bucket, "many/")
    assert len([p for p in folder.glob("f*.bin")]) == 40
    assert not list((daemon.outbox / ".syncd-tmp").glob("*")), "no partial file left behind"
    assert sorted(p.name for p in (daemon.outbox / bucket).iterdir()) == ["many"]
