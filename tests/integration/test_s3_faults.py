"""Faults over real sockets: connections reset mid-transfer, and syncd killed with SIGKILL mid-mirror."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from syncd.fsutil import TMP_DIR
from tests.integration.conftest import make_storage, mirror_into, tree
from tests.support.harness import SYNCD, make_config, wait_for

pytestmark = pytest.mark.s3


def upload(server, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client(max_pool_connections=32)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))


def test_transfers_complete_and_verify_through_connection_resets(seaweedfs, bucket, store, tmp_path, proxy_for):
    objects = {f"job/small-{i:02d}.bin": os.urandom(300_000) for i in range(20)}
    objects["job/large.bin"] = os.urandom(24 * 1024 * 1024)
    upload(seaweedfs, bucket, objects)
    proxy = proxy_for(seaweedfs)
    proxy.faults.reset_every, proxy.faults.reset_after, proxy.faults.max_resets = 3, 100_000, 12
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint, part_size="8MiB", part_workers=3)
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out", attempts=10)
    assert report.failed == []
    assert proxy.resets > 0, "the proxy must have reset connections for this test to mean anything"
    assert tree(tmp_path / "out") == {k[len("job/") :]: v for k, v in objects.items()}
    storage.close()


def test_large_object_verifies_after_resets_in_the_middle_of_a_part(seaweedfs, bucket, store, tmp_path, proxy_for):
    # Resets after 3 MiB of a response fall past the client's read buffer, inside the part's
    # socket → file transfer (splice(2) on Linux); the part is fetched again and the file verifies.
    objects = {"job/large.bin": os.urandom(20 * 1024 * 1024 + 777)}
    upload(seaweedfs, bucket, objects)
    proxy = proxy_for(seaweedfs)
    proxy.faults.reset_every, proxy.faults.reset_after, proxy.faults.max_resets = 2, 3 * 1024 * 1024, 3
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint, part_size="8MiB", part_workers=3)
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out", attempts=10)
    assert report.failed == []
    assert proxy.resets > 0, "the proxy must have reset connections for this test to mean anything"
    assert tree(tmp_path / "out") == {"large.bin": objects["job/large.bin"]}
    assert not list((tmp_path / "out" / TMP_DIR).glob("*.part"))
    storage.close()


def sync_config(root, server, endpoint: str):
    options = server.storage_options(endpoint_url=endpoint, transfer_workers=4)
    return make_config(root, extra={"storages": {"local": {"type": "file", "root": "buckets"}, "s3": options}})


def test_kill_9_mid_mirror_then_rerun_leaves_an_identical_outbox(seaweedfs, bucket, tmp_path, proxy_for):
    objects = {f"run/{i // 50}/part-{i:03d}.dat": os.urandom(64 * 1024) for i in range(200)}
    objects["run/big/volume.raw"] = os.urandom(16 * 1024 * 1024)
    upload(seaweedfs, bucket, objects)
    proxy = proxy_for(seaweedfs)
    proxy.faults.delay_per_chunk = 0.01  # slow enough to be caught in the middle, even on a busy machine
    config = sync_config(tmp_path / "site", seaweedfs, proxy.endpoint)
    dest = tmp_path / "mirror"
    command = [*SYNCD, "sync", "-c", str(config), f"s3:{bucket}/run", str(dest), "--no-progress"]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(
        lambda: dest.exists() and sum(1 for _ in dest.rglob("*.dat")) >= 20 or victim.poll() is not None,
        timeout=60,
        interval=0.02,
        what="the first files to land",
    )
    assert victim.poll() is None, f"sync finished before it could be killed:\n{victim.stdout.read().decode()}"
    victim.kill()
    victim.wait()
    landed = set(tree(dest))
    assert 0 < len([k for k in landed if not k.startswith(TMP_DIR)]) < len(objects)
    for rel, data in tree(dest).items():  # whatever is at a final path is complete
        if not rel.startswith(TMP_DIR):
            assert data == objects[f"run/{rel}"], rel
    proxy.faults.delay_per_chunk = 0
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert tree(dest) == {k[len("run/") :]: v for k, v in objects.items()}
    assert not any((dest / TMP_DIR).glob("*")), "no partial file left behind"
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert "downloaded 0 file(s)" in again.stdout and f"unchanged {len(objects)}" in again.stdout


def test_sync_command_uploads_then_downloads_and_reports(seaweedfs, bucket, tmp_path):
    config = sync_config(tmp_path / "site", seaweedfs, seaweedfs.endpoint)
    source = tmp_path / "src"
    files = {"a.txt": b"a", "sub/b c.txt": b"bc", "empty": b"", "sub/deeper/d.bin": os.urandom(5000)}
    for rel, data in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    up = subprocess.run(
        [*SYNCD, "sync", "-c", str(config), str(source), f"s3:{bucket}/up"], capture_output=True, text=True, timeout=60
    )
    assert up.returncode == 0, up.stderr
    assert "uploaded 4 file(s)" in up.stdout
    again = subprocess.run(
        [*SYNCD, "sync", "-c", str(config), str(source), f"s3:{bucket}/up"], capture_output=True, text=True, timeout=60
    )
    assert "uploaded 0 file(s)" in again.stdout and "unchanged 4" in again.stdout
    down = subprocess.run(
        [*SYNCD, "sync", "-c", str(config), f"s3:{bucket}/up", str(tmp_path / "down")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    assert tree(tmp_path / "down") == files


def test_sync_command_names_a_missing_bucket_and_exits_nonzero(seaweedfs, tmp_path):
    config = sync_config(tmp_path / "site", seaweedfs, seaweedfs.endpoint)
    done = subprocess.run(
        [*SYNCD, "sync", "-c", str(config), "s3:no-such-bucket-xyz", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "no-such-bucket-xyz" in done.stderr and "does not exist" in done.stderr
    assert seaweedfs.secret_key not in done.stderr + done.stdout


def test_no_change_sync_starts_without_logging_progress_boto3_or_yaml(seaweedfs, bucket, tmp_path):
    # Start-up is most of a no-change sync's cost: loguru (asyncio), rich, boto3 and the thread pools
    # of large objects and uploads (concurrent.futures, which brings logging) load only when needed.
    # With its keys as ${VAR}s, the second sync also builds its config from the first's snapshot:
    # no PyYAML, and no pydantic validator (whose plugin lookup imports importlib.metadata).
    upload(seaweedfs, bucket, {f"set/f{i}.dat": os.urandom(100) for i in range(5)})
    options = seaweedfs.storage_options(access_key_id="${TEST_S3_KEY_ID}", secret_access_key="${TEST_S3_SECRET}")
    config = make_config(
        tmp_path / "site", extra={"storages": {"local": {"type": "file", "root": "buckets"}, "s3": options}}
    )
    env = {**os.environ, "TEST_S3_KEY_ID": seaweedfs.access_key, "TEST_S3_SECRET": seaweedfs.secret_key}
    command = [*SYNCD, "sync", "-c", str(config), f"s3:{bucket}/set", str(tmp_path / "down")]
    first = subprocess.run([*command, "--progress"], capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0 and "downloaded 5 file(s)" in first.stdout, first.stderr
    again = subprocess.run(
        [sys.executable, "-X", "importtime", *SYNCD[1:], *command[len(SYNCD) :], "--no-progress"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert again.returncode == 0 and "unchanged 5" in again.stdout, again.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in again.stderr.splitlines() if line.startswith("import time:")}
    assert loaded, "python -X importtime reported no imports"
    assert (
        not {
            "loguru",
            "asyncio",
            "rich",
            "boto3",
            "botocore",
            "concurrent.futures",
            "logging",
            "yaml",
            "importlib.metadata",
        }
        & loaded
    )


def test_sync_logs_in_syncds_format_when_it_has_something_to_say(seaweedfs, bucket, tmp_path):
    upload(seaweedfs, bucket, {"case/Report.txt": b"upper", "case/report.txt": b"lower"})
    config = sync_config(tmp_path / "site", seaweedfs, seaweedfs.endpoint)
    done = subprocess.run(
        [*SYNCD, "sync", "-c", str(config), f"s3:{bucket}/case", str(tmp_path / "down")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "refused 1" in done.stdout, done.stdout + done.stderr
    logged = [line for line in done.stderr.splitlines() if "refused remote object" in line]
    assert len(logged) == 1, done.stderr
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ERROR +refused remote object .*letter case", logged[0]), logged
