"""The mirror engine over real S3 servers: byte-identical, incremental, verified, safe with hostile keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.delivery.index import DeliveryIndex
from syncd.delivery.outbox import Outbox
from syncd.errors import PermanentError
from syncd.fsutil import TMP_DIR
from tests.integration.conftest import bucket_contents, make_storage, mirror_into, tree

pytestmark = pytest.mark.s3


def put_objects(server, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client()
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)


MIXED = {
    "job/empty.txt": b"",
    "job/one": b"1",
    "job/données ✓/résumé final.txt": "çà et là".encode(),
    "job/with space.txt": b"spaces",
    "job/" + "/".join(f"level{i}" for i in range(25)) + "/deep.txt": b"deep",
    "job/bin/random.bin": os.urandom(300_000),
}


def test_mirror_round_trip_is_byte_identical(seaweedfs, storage, bucket, store, tmp_path):
    put_objects(seaweedfs, bucket, MIXED)
    seaweedfs.client().put_object(Bucket=bucket, Key="job/empty-folder/", Body=b"")
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out")
    assert report.failed == [] and report.refused == []
    assert tree(tmp_path / "out") == {k[len("job/") :]: v for k, v in MIXED.items()}
    assert (tmp_path / "out" / "empty-folder").is_dir()


def test_thousand_small_files_then_unchanged_resync_sends_no_get(seaweedfs, bucket, store, tmp_path, proxy_for):
    objects = {f"many/{i // 100:02d}/file-{i:04d}.dat": os.urandom(512 + i) for i in range(1000)}
    client = seaweedfs.client(max_pool_connections=32)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()))
    proxy = proxy_for(seaweedfs)
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint)
    first = mirror_into(store, storage, bucket, "many/", tmp_path / "out")
    assert len(first.fetched) == 1000 and first.failed == []
    assert tree(tmp_path / "out") == {k[len("many/") :]: v for k, v in objects.items()}
    assert proxy.count("GET", object_only=True) == 1000
    # Small objects go through Storage.fetch_many: one thread, keep-alive connections reused.
    assert proxy.connections <= storage.options.max_connections + 1  # + the LIST's own connection
    proxy.clear()
    again = mirror_into(store, storage, bucket, "many/", tmp_path / "out")
    assert again.fetched == [] and len(again.skipped) == 1000
    assert proxy.count("GET", object_only=True) == 0
    assert proxy.count("HEAD") == 0
    assert proxy.count() == 1  # one LIST page of 1,000 keys
    storage.close()


def test_small_object_batches_share_max_connections(seaweedfs, bucket, store, tmp_path, proxy_for):
    """Two mirrors at once stay within the storage's max_connections (+1 each for the batch that
    finds none free, +1 each for a LIST); a batch of three objects opens three, not max_connections."""
    put_objects(seaweedfs, bucket, {f"{side}/f{i:03d}.dat": os.urandom(700) for side in "ab" for i in range(150)})
    put_objects(seaweedfs, bucket, {f"c/f{i}.dat": b"x" * (i + 1) for i in range(3)})
    proxy = proxy_for(seaweedfs)
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint, max_connections=6)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda side: mirror_into(store, storage, bucket, f"{side}/", tmp_path / side), "ab"))
    assert [len(r.fetched) for r in reports] == [150, 150] and all(r.failed == [] for r in reports)
    assert proxy.connections <= 6 + 2 + 2
    proxy.clear()
    before = proxy.connections
    report = mirror_into(store, storage, bucket, "c/", tmp_path / "c")
    assert len(report.fetched) == 3
    assert proxy.connections - before <= 3 + 1


def test_changed_object_with_same_size_is_fetched_again(seaweedfs, storage, bucket, store, tmp_path):
    put_objects(seaweedfs, bucket, {"job/a.txt": b"AAAA", "job/b.txt": b"BBBB"})
    mirror_into(store, storage, bucket, "job/", tmp_path / "out")
    put_objects(seaweedfs, bucket, {"job/a.txt": b"ZZZZ"})  # same size, new content
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out")
    assert report.fetched == ["job/a.txt"] and report.skipped == ["job/b.txt"]
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"ZZZZ"


def test_file_already_in_place_is_adopted_without_download(seaweedfs, bucket, store, tmp_path, proxy_for):
    put_objects(seaweedfs, bucket, {"job/a.txt": b"same content"})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"same content")  # e.g. renamed just before a crash
    proxy = proxy_for(seaweedfs)
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint)
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out")
    assert report.skipped == ["job/a.txt"] and proxy.count("GET", object_only=True) == 0


def test_object_deleted_then_put_back_unchanged_is_adopted_without_download(
    seaweedfs, bucket, store, tmp_path, proxy_for
):
    """The run that no longer lists an object forgets its index row; the file stays, and if the same
    content comes back it is recognised by its MD5, not downloaded again."""
    put_objects(seaweedfs, bucket, {"job/a.txt": b"kept", "job/b.txt": b"comes back"})
    proxy = proxy_for(seaweedfs)
    storage = make_storage(seaweedfs, endpoint=proxy.endpoint)
    out = tmp_path / "out"
    mirror_into(store, storage, bucket, "job/", out)
    seaweedfs.client().delete_object(Bucket=bucket, Key="job/b.txt")
    report = mirror_into(store, storage, bucket, "job/", out)
    assert report.skipped == ["job/a.txt"] and report.deleted == []
    assert sorted(DeliveryIndex(store).under(f"{out}{os.sep}")) == [str(out / "a.txt")]
    assert tree(out) == {"a.txt": b"kept", "b.txt": b"comes back"}
    put_objects(seaweedfs, bucket, {"job/b.txt": b"comes back"})
    proxy.clear()
    report = mirror_into(store, storage, bucket, "job/", out)
    assert sorted(report.skipped) == ["job/a.txt", "job/b.txt"] and report.fetched == []
    assert proxy.count("GET", object_only=True) == 0
    assert sorted(DeliveryIndex(store).under(f"{out}{os.sep}")) == [str(out / "a.txt"), str(out / "b.txt")]
    storage.close()


def test_local_file_edited_or_removed_is_restored(seaweedfs, storage, bucket, store, tmp_path):
    put_objects(seaweedfs, bucket, {"job/a.txt": b"original", "job/b.txt": b"original"})
    out = tmp_path / "out"
    mirror_into(store, storage, bucket, "job/", out)
    (out / "a.txt").unlink()
    (out / "b.txt").write_bytes(b"edited")
    report = mirror_into(store, storage, bucket, "job/", out)
    assert sorted(report.fetched) == ["job/a.txt", "job/b.txt"]
    assert tree(out) == {"a.txt": b"original", "b.txt": b"original"}


def test_mirror_keeps_local_files_unless_delete_and_never_deletes_job_results(
    seaweedfs, storage, bucket, store, tmp_path
):
    put_objects(
        seaweedfs,
        bucket,
        {"lab/keep.txt": b"k", "lab/gone.txt": b"g", "lab/job1/out.txt": b"o", "lab/job1/syncd-result.json": b"{}"},
    )
    out = tmp_path / "out"
    mirror_into(store, storage, bucket, "lab/", out)
    (out / "mine.txt").write_bytes(b"a user's own file")
    client = seaweedfs.client()
    for key in ("lab/gone.txt", "lab/job1/out.txt", "lab/job1/syncd-result.json"):
        client.delete_object(Bucket=bucket, Key=key)
    report = mirror_into(store, storage, bucket, "lab/", out)
    assert report.deleted == [] and set(tree(out)) == {
        "keep.txt",
        "gone.txt",
        "mine.txt",
        "job1/out.txt",
        "job1/syncd-result.json",
    }
    report = mirror_into(store, storage, bucket, "lab/", out, delete=True)
    assert sorted(report.deleted) == ["gone.txt", "mine.txt"]
    assert set(tree(out)) == {"keep.txt", "job1/out.txt", "job1/syncd-result.json"}


def test_outbox_layout_is_bucket_then_key(seaweedfs, storage, bucket, store, tmp_path):
    put_objects(seaweedfs, bucket, {"job/x/y.txt": b"y"})
    box = Outbox(tmp_path / "outbox", store)
    box.prepare()
    report = box.mirror(storage, bucket, "job/")
    assert report.fetched == ["job/x/y.txt"]
    assert tree(box.root) == {f"{bucket}/job/x/y.txt": b"y"}


HOSTILE = [
    "job/../../escape.txt",
    "job/..",
    "job/./dot.txt",
    "job//double.txt",
    "/abs.txt",
    "job/back\\slash.txt",
    "job/CON",
    "job/aux.txt",
    "job/a:b.txt",
    "job/q?.txt",
    "job/trailing.",
    "job/trailing ",
    "job/ctl\x01.txt",
    f"job/{TMP_DIR}/sneaky.part",
    "job/README.md",
]


def test_hostile_keys_are_refused_and_never_written_outside(moto_s3, store, tmp_path):
    bucket = moto_s3.new_bucket("hostile")
    put_objects(
        moto_s3, bucket, {key: b"evil" for key in HOSTILE} | {"job/readme.md": b"case twin", "job/fine.txt": b"fine"}
    )
    listed = {o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(HOSTILE) <= listed, "the server must keep the keys as given for this test to mean anything"
    storage = make_storage(moto_s3)
    outside_before = {p for p in tmp_path.rglob("*")}
    report = mirror_into(store, storage, bucket, "", tmp_path / "out")
    refused = {key for key, _ in report.refused}
    assert refused == set(HOSTILE) - {"job/README.md"} | {"job/readme.md"} or refused == set(HOSTILE) - {
        "job/readme.md"
    }
    assert tree(tmp_path / "out") in (
        {"job/fine.txt": b"fine", "job/README.md": b"evil"},
        {"job/fine.txt": b"fine", "job/readme.md": b"case twin"},
    )
    created = {p for p in tmp_path.rglob("*")} - outside_before
    assert all(tmp_path / "out" in p.parents or p == tmp_path / "out" for p in created)
    assert not Path("/abs.txt").exists()


def test_file_folder_clash_is_a_permanent_error(moto_s3, store, tmp_path):
    bucket = moto_s3.new_bucket("clash")
    put_objects(moto_s3, bucket, {"job/a": b"file", "job/a/b": b"nested"})
    box = Outbox(tmp_path / "outbox", store)
    box.prepare()
    with pytest.raises(PermanentError, match="a file and a folder would share this path"):
        box.mirror(make_storage(moto_s3), bucket, "job/")
    assert not list((box.root / TMP_DIR).glob("*")) if (box.root / TMP_DIR).exists() else True


def test_mirror_with_moto_as_a_second_implementation(moto_s3, store, tmp_path):
    bucket = moto_s3.new_bucket("second")
    put_objects(moto_s3, bucket, MIXED)
    storage = make_storage(moto_s3)
    report = mirror_into(store, storage, bucket, "job/", tmp_path / "out")
    assert report.failed == []
    assert tree(tmp_path / "out") == {k[len("job/") :]: v for k, v in MIXED.items()}
    assert bucket_contents(moto_s3, bucket, "job/") == {k[len("job/") :]: v for k, v in MIXED.items()}


def test_parts_left_by_a_killed_run_are_removed_even_when_nothing_is_fetched(
    seaweedfs, storage, bucket, store, tmp_path
):
    put_objects(seaweedfs, bucket, {"job/a.txt": b"a"})
    out = tmp_path / "out"
    mirror_into(store, storage, bucket, "job/", out)
    (out / TMP_DIR).mkdir(exist_ok=True)
    dead = out / TMP_DIR / "999999999-0123abcd.part"  # no process has this pid
    dead.write_bytes(b"partial")
    mirror_into(store, storage, bucket, "job/", out)
    assert list((out / TMP_DIR).iterdir()) == []
