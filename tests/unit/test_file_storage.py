"""syncd.storage.file: directories that act as buckets."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.errors import PermanentError
from syncd.fsutil import TMP_DIR
from syncd.storage.base import ObjectInfo
from syncd.storage.file import FileStorage


def make_storage(tmp_path: Path, **extra) -> FileStorage:
    options = FileStorage.options_model.model_validate(
        {"type": "file", "root": str(tmp_path / "buckets"), **extra})
    return FileStorage("local", options)


@pytest.fixture
def storage(tmp_path) -> FileStorage:
    return make_storage(tmp_path)


@pytest.fixture
def src(tmp_path):
    def make(data: bytes, name: str = "src.bin") -> Path:
        path = tmp_path / "sources" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        return path
    return make


def keys(storage: FileStorage, bucket: str = "b", prefix: str = "") -> list[str]:
    return [o.key for o in storage.list(bucket, prefix)]


def test_options_root_relative_to_config_dir(tmp_path):
    options = FileStorage.options_model.model_validate({"type": "file", "root": "buckets"},
                                                       context={"base_dir": tmp_path})
    assert options.root == tmp_path / "buckets"
    assert options.create_buckets is True


def test_put_file_then_get_file_round_trip(storage, src, tmp_path):
    data = bytes(range(256)) * 5000
    info = storage.put_file("b", "job/in/data.bin", src(data))
    assert info.key == "job/in/data.bin" and info.size == len(data)
    assert (tmp_path / "buckets" / "b" / "job" / "in" / "data.bin").read_bytes() == data
    dest = tmp_path / "fetched.bin"
    got = storage.get_file("b", "job/in/data.bin", dest)
    assert dest.read_bytes() == data
    assert got == info
    assert keys(storage) == ["job/in/data.bin"]
    assert not any((tmp_path / "buckets" / "b" / TMP_DIR).iterdir())


def test_put_file_replaces_and_changes_etag(storage, src):
    first = storage.put_file("b", "k.txt", src(b"one"))
    second = storage.put_file("b", "k.txt", src(b"three", "other"))
    assert second.size == 5
    assert second.etag != first.etag
    assert storage.head("b", "k.txt") == second


def test_put_file_missing_source_is_permanent(storage, tmp_path):
    with pytest.raises(PermanentError, match="does not exist"):
        storage.put_file("b", "k.txt", tmp_path / "absent")


def test_get_file_missing_object_is_permanent(storage, tmp_path):
    storage.ensure_bucket("b")
    with pytest.raises(PermanentError, match="the object does not exist"):
        storage.get_file("b", "nope.txt", tmp_path / "dest")


def test_head_existing_missing_and_folder(storage, src):
    storage.put_file("b", "dir/file.txt", src(b"abc"))
    info = storage.head("b", "dir/file.txt")
    assert (info.key, info.size) == ("dir/file.txt", 3)
    assert info.modified is not None
    assert storage.head("b", "dir/missing.txt") is None
    assert storage.head("b", "dir") is None            # a folder is not an object
    assert storage.head("b", "dir/").etag == "dir"     # but it is a directory marker
    assert storage.head("b", "other/") is None


def test_delete_object_and_missing_is_not_an_error(storage, src):
    storage.put_file("b", "a.txt", src(b"a"))
    storage.delete("b", "a.txt")
    assert storage.head("b", "a.txt") is None
    storage.delete("b", "a.txt")
    assert keys(storage) == []


def test_directory_markers_put_list_head_delete(storage, src, tmp_path):
    info = storage.put_file("b", "job/empty/", src(b""))
    assert (info.key, info.size) == ("job/empty/", 0)
    assert (tmp_path / "buckets" / "b" / "job" / "empty").is_dir()
    storage.put_file("b", "job/file.txt", src(b"x"))
    assert keys(storage) == ["job/file.txt", "job/empty/"]
    assert storage.head("b", "job/empty/") is not None
    storage.delete("b", "job/empty/")
    assert keys(storage) == ["job/file.txt"]


def test_list_with_prefix(storage, src):
    for key in ["job1/a.txt", "job1/sub/b.txt", "job10/c.txt", "job2/d.txt", "top.txt"]:
        storage.put_file("b", key, src(b"x"))
    assert keys(storage, prefix="job1/") == ["job1/a.txt", "job1/sub/b.txt"]
    assert keys(storage, prefix="job1") == ["job1/a.txt", "job1/sub/b.txt", "job10/c.txt"]
    assert keys(storage, prefix="job1/sub/") == ["job1/sub/b.txt"]
    assert keys(storage, prefix="job1/s") == ["job1/sub/b.txt"]
    assert keys(storage, prefix="nothing/") == []
    assert len(keys(storage)) == 5


def test_list_hides_temporary_folder(storage, src, tmp_path):
    storage.put_file("b", "a.txt", src(b"a"))
    tmp = tmp_path / "buckets" / "b" / TMP_DIR
    (tmp / "abc.part").write_bytes(b"partial upload")
    assert keys(storage) == ["a.txt"]


def test_list_skips_symlinks_and_special_files(storage, src, tmp_path):
    storage.put_file("b", "real.txt", src(b"r"))
    (tmp_path / "buckets" / "b" / "link.txt").symlink_to(tmp_path / "buckets" / "b" / "real.txt")
    assert keys(storage) == ["real.txt"]


def test_list_missing_bucket_is_created_by_default(storage, tmp_path):
    assert keys(storage, "fresh") == []
    assert (tmp_path / "buckets" / "fresh").is_dir()


def test_list_missing_bucket_without_create_is_permanent(tmp_path):
    storage = make_storage(tmp_path, create_buckets=False)
    with pytest.raises(PermanentError, match="does not exist"):
        list(storage.list("absent", ""))


def test_list_refuses_prefix_that_leaves_the_bucket(storage, src, tmp_path):
    storage.put_file("other", "secret.txt", src(b"s"))
    storage.ensure_bucket("b")
    with pytest.raises(PermanentError):
        list(storage.list("b", "../"))


@pytest.mark.parametrize("bucket", ["", ".hidden", "a/b", "..", "nul\x00"])
def test_bucket_names_refused(storage, src, bucket):
    with pytest.raises(PermanentError, match="bucket name"):
        storage.put_file(bucket, "k.txt", src(b"x"))


@pytest.mark.parametrize("key", [
    "", "/abs.txt", "../escape.txt", "a/../../b", "a//b", "./a", "a/./b", "a\\b", "a\x00b", "..",
    f"{TMP_DIR}/x.part",
])
@pytest.mark.parametrize("operation", ["put", "get", "head", "delete"])
def test_check_key_refusals_raise_permanent_error(storage, src, tmp_path, key, operation):
    source = src(b"x")
    storage.ensure_bucket("b")
    with pytest.raises(PermanentError):
        if operation == "put":
            storage.put_file("b", key, source)
        elif operation == "get":
            storage.get_file("b", key, tmp_path / "dest")
        elif operation == "head":
            storage.head("b", key)
        else:
            storage.delete("b", key)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "buckets" / "escape.txt").exists()


def test_fetch_many_by_default_fetches_each_and_yields_a_failure_instead_of_raising(storage, src, tmp_path):
    info = storage.put_file("b", "job/a.txt", src(b"alpha"))
    gone = ObjectInfo("job/gone.txt", 3, "nope")
    outcomes = list(storage.fetch_many("b", [(info, tmp_path / "a"), (gone, tmp_path / "g")]))
    assert [(expected, dest) for expected, dest, _ in outcomes] == [(info, tmp_path / "a"), (gone, tmp_path / "g")]
    assert outcomes[0][2] == info and (tmp_path / "a").read_bytes() == b"alpha"
    assert isinstance(outcomes[1][2], PermanentError)
