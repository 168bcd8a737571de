"""syncd.storage.file: directories that act as buckets."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from syncd import fsutil
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import TMP_DIR
from syncd.storage.base import ObjectInfo, Storage
from syncd.storage.file import FileStorage


def make_storage(tmp_path: Path, **extra) -> FileStorage:
    options = FileStorage.options_model.model_validate({"type": "file", "root": str(tmp_path / "buckets"), **extra})
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
    options = FileStorage.options_model.model_validate(
        {"type": "file", "root": "buckets"}, context={"base_dir": tmp_path}
    )
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


@pytest.mark.parametrize("removed", ["the temporary folder", "the bucket"])
def test_a_write_after_the_buckets_folders_were_removed_makes_them_again(storage, src, tmp_path, removed):
    """The temporary folder is made once per storage, not asked for at every write: one an admin removed
    since (alone, or with the whole bucket) is made again, and the write succeeds."""
    import shutil

    bucket = tmp_path / "buckets" / "b"
    storage.put_file("b", "one", src(b"first", "s1"))
    shutil.rmtree(bucket / TMP_DIR if removed == "the temporary folder" else bucket)
    info = storage.put_file("b", "two", src(b"second", "s2"))
    assert info.size == 6 and (bucket / "two").read_bytes() == b"second"
    assert not any((bucket / TMP_DIR).iterdir())
    with pytest.raises(PermanentError, match="does not exist"):
        storage.put_file("b", "three", tmp_path / "no-such-source")
    assert not any((bucket / TMP_DIR).iterdir())


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
    assert storage.head("b", "dir") is None  # a folder is not an object
    assert storage.head("b", "dir/").etag == "dir"  # but it is a directory marker
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


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs.txt",
        "../escape.txt",
        "a/../../b",
        "a//b",
        "./a",
        "a/./b",
        "a\\b",
        "a\x00b",
        "..",
        f"{TMP_DIR}/x.part",
    ],
)
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


# -- no second copy on one disk: reflink, hard link, verified copy ------------------------------


@pytest.fixture
def placed(monkeypatch) -> list[str]:
    """How each file was placed by the storage ("reflink", "link" or "copy"), in order."""
    import syncd.storage.file as file_module

    seen: list[str] = []
    real = file_module.place_file

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(file_module, "place_file", spy)
    return seen


@pytest.fixture
def fake_reflink_calls(monkeypatch) -> list[int]:
    """fcntl.ioctl refusing FICLONE like a filesystem without reflinks (EOPNOTSUPP); the calls it saw."""
    import fcntl

    calls: list[int] = []

    def ioctl(fd, request, arg=0, *rest):
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    return calls


def object_path(tmp_path: Path, key: str, bucket: str = "b") -> Path:
    return tmp_path / "buckets" / bucket / key


def test_put_file_of_a_daemon_owned_file_on_one_filesystem_is_not_a_second_copy(storage, src, tmp_path, placed):
    source = src(b"results " * 1000)
    info = storage.put_file("b", "job/out.txt", source)
    stored = object_path(tmp_path, "job/out.txt")
    assert placed == ["reflink"] or (placed == ["link"] and stored.stat().st_ino == source.stat().st_ino)
    assert stored.read_bytes() == b"results " * 1000
    assert info == storage.head("b", "job/out.txt") and info.size == 8000
    assert not any((tmp_path / "buckets" / "b" / TMP_DIR).iterdir())


def test_put_file_links_when_reflinks_are_refused(storage, src, tmp_path, fake_reflink_calls, placed):
    source = src(b"linked")
    storage.put_file("b", "k", source)
    assert fake_reflink_calls == [fsutil.FICLONE]
    assert placed == ["link"]
    assert object_path(tmp_path, "k").stat().st_ino == source.stat().st_ino
    assert source.stat().st_nlink == 2


def test_a_filesystem_without_reflinks_is_asked_once(storage, src, fake_reflink_calls):
    for n in range(3):
        storage.put_file("b", f"k{n}", src(b"x", f"s{n}"))
    assert fake_reflink_calls == [fsutil.FICLONE]


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP])
def test_put_file_copies_and_verifies_when_a_link_is_refused(
    storage, src, tmp_path, monkeypatch, fake_reflink_calls, placed, code
):
    verified = []
    real_copy = fsutil.copy_verified

    def spy(source, dest):
        verified.append(real_copy(source, dest))
        return verified[-1]

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fsutil, "copy_verified", spy)
    monkeypatch.setattr(os, "link", refuse)
    data = os.urandom(300_000)
    source = src(data)
    info = storage.put_file("b", "k", source)
    stored = object_path(tmp_path, "k")
    assert placed == ["copy"]
    assert stored.stat().st_ino != source.stat().st_ino and source.stat().st_nlink == 1
    assert stored.read_bytes() == data and info.size == len(data)
    assert verified == [hashlib.md5(data).hexdigest()]


def test_put_file_from_another_filesystem_is_copied(storage, tmp_path, placed):
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm writable on a filesystem other than the test's")
    data = os.urandom(50_000)
    source = shm / f"syncd-test-{os.getpid()}-{tmp_path.name}"
    source.write_bytes(data)
    try:
        storage.put_file("b", "k", source)
        assert placed == ["copy"]  # EXDEV for the reflink and for the link
        assert object_path(tmp_path, "k").read_bytes() == data and source.stat().st_nlink == 1
    finally:
        source.unlink()


def test_a_link_error_other_than_cannot_is_reported(storage, src, monkeypatch, fake_reflink_calls):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(TransientError, match="no space left"):
        storage.put_file("b", "k", src(b"x"))


def test_put_file_copies_a_file_owned_by_another_user(storage, src, tmp_path, monkeypatch, placed):
    source = src(b"a job's result")
    monkeypatch.setattr(os, "geteuid", lambda: source.stat().st_uid + 1)  # the daemon is someone else
    storage.put_file("b", "k", source)
    assert placed == ["reflink"] or placed == ["copy"]
    assert object_path(tmp_path, "k").stat().st_ino != source.stat().st_ino
    assert object_path(tmp_path, "k").read_bytes() == b"a job's result"


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_put_file_copies_a_file_others_may_write(storage, src, tmp_path, placed, mode):
    source = src(b"shared")
    source.chmod(mode)
    storage.put_file("b", "k", source)
    assert placed in (["reflink"], ["copy"])
    assert object_path(tmp_path, "k").stat().st_ino != source.stat().st_ino


def test_hard_links_false_copies(tmp_path, src, fake_reflink_calls, placed):
    storage = make_storage(tmp_path, hard_links=False)
    source = src(b"copy me")
    storage.put_file("b", "k", source)
    assert placed == ["copy"]
    assert object_path(tmp_path, "k").stat().st_ino != source.stat().st_ino


def test_a_name_swapped_for_another_file_before_the_link_is_copied_not_linked(
    storage, src, tmp_path, monkeypatch, fake_reflink_calls
):
    source = src(b"what was opened")
    other = src(b"someone else's", "other")
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda a, b, **kw: real_link(other, b, **kw))
    storage.put_file("b", "k", source)
    stored = object_path(tmp_path, "k")
    assert stored.read_bytes() == b"what was opened"
    assert stored.stat().st_ino not in (source.stat().st_ino, other.stat().st_ino)


def test_a_reflink_is_tried_first_and_then_nothing_else(storage, src, tmp_path, monkeypatch):
    import fcntl

    def clone(fd, request, arg=0, *rest):  # a filesystem that clones: the data shows up in the new file
        assert request == fsutil.FICLONE
        os.lseek(arg, 0, os.SEEK_SET)
        os.write(fd, os.read(arg, 1 << 20))
        return 0

    def no_link(*args, **kwargs):
        raise AssertionError("a hard link after a reflink")

    monkeypatch.setattr(fcntl, "ioctl", clone)
    monkeypatch.setattr(os, "link", no_link)
    source = src(b"cloned")
    info = storage.put_file("b", "k", source)
    assert object_path(tmp_path, "k").read_bytes() == b"cloned" and info.size == 6
    assert object_path(tmp_path, "k").stat().st_ino != source.stat().st_ino


def test_replacing_an_object_with_a_file_of_the_same_mtime_and_size_changes_the_etag(storage, src, tmp_path):
    first, second = src(b"version 1", "v1"), src(b"version 2", "v2")
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))
    one = storage.put_file("b", "k", first)
    two = storage.put_file("b", "k", second)
    assert object_path(tmp_path, "k").read_bytes() == b"version 2"
    assert two.etag != one.etag  # a link would keep the mtime, hence the ETag: the second one is copied
    assert object_path(tmp_path, "k").stat().st_ino != second.stat().st_ino


def test_get_file_links_the_object_and_never_writes_into_an_existing_dest(storage, src, tmp_path, placed):
    storage.put_file("b", "k", src(b"object"))
    bystander = tmp_path / "bystander"
    bystander.write_bytes(b"not to be touched")
    dest = tmp_path / "dest"
    os.link(bystander, dest)  # dest is a name of another file
    info = storage.get_file("b", "k", dest)
    assert dest.read_bytes() == b"object" and info.size == 6
    assert bystander.read_bytes() == b"not to be touched"
    assert placed[1] == "reflink" or dest.stat().st_ino == object_path(tmp_path, "k").stat().st_ino


def test_get_file_into_a_missing_folder_says_so(storage, src, tmp_path):
    storage.put_file("b", "k", src(b"x"))
    with pytest.raises(PermanentError, match="folder .* does not exist"):
        storage.get_file("b", "k", tmp_path / "nowhere" / "dest")


def test_get_file_copies_an_object_of_another_user(storage, src, tmp_path, monkeypatch):
    storage.put_file("b", "k", src(b"theirs"))
    monkeypatch.setattr(os, "geteuid", lambda: object_path(tmp_path, "k").stat().st_uid + 1)
    storage.get_file("b", "k", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == b"theirs"
    assert (tmp_path / "dest").stat().st_ino != object_path(tmp_path, "k").stat().st_ino


# -- copy -------------------------------------------------------------------------------


@pytest.mark.parametrize("dst_bucket", ["b", "other"])
def test_copy_shares_the_file_and_returns_the_copys_info(storage, src, tmp_path, placed, dst_bucket):
    storage.put_file("b", "job/in.txt", src(b"payload"))
    info = storage.copy("b", "job/in.txt", dst_bucket, "copies/ünï cødé with space.txt")
    copy = object_path(tmp_path, "copies/ünï cødé with space.txt", dst_bucket)
    assert copy.read_bytes() == b"payload"
    assert info == storage.head(dst_bucket, "copies/ünï cødé with space.txt") and info.size == 7
    assert placed[1] == "reflink" or copy.stat().st_ino == object_path(tmp_path, "job/in.txt").stat().st_ino
    assert storage.head("b", "job/in.txt").size == 7  # the source stays
    assert not any((tmp_path / "buckets" / dst_bucket / TMP_DIR).iterdir())


def test_copy_onto_itself_changes_nothing(storage, src, tmp_path):
    before = storage.put_file("b", "k", src(b"same"))
    assert storage.copy("b", "k", "b", "k") == before
    assert object_path(tmp_path, "k").read_bytes() == b"same"
    assert not any((tmp_path / "buckets" / "b" / TMP_DIR).iterdir())


def test_copy_of_a_missing_object_is_permanent_and_names_the_key(storage):
    storage.ensure_bucket("b")
    with pytest.raises(PermanentError, match="job/absent.txt does not exist"):
        storage.copy("b", "job/absent.txt", "b", "dst.txt")
    assert storage.head("b", "dst.txt") is None


def test_copy_of_a_directory_marker(storage, src, tmp_path):
    storage.put_file("b", "job/empty/", src(b""))
    assert storage.copy("b", "job/empty/", "b", "copy/empty/").etag == "dir"
    assert (tmp_path / "buckets" / "b" / "copy" / "empty").is_dir()
    with pytest.raises(PermanentError, match="directory marker"):
        storage.copy("b", "job/empty/", "b", "file.txt")


class Plain(FileStorage):
    """A storage with only the base class's copy and presign."""

    copy = Storage.copy
    presign = Storage.presign


def test_base_copy_streams_through_a_temporary_file(tmp_path, src):
    storage = Plain(
        "plain",
        FileStorage.options_model.model_validate(
            {"type": "file", "root": str(tmp_path / "buckets"), "hard_links": False}
        ),
    )
    data = os.urandom(100_000)
    storage.put_file("b", "a/src.bin", src(data))
    info = storage.copy("b", "a/src.bin", "c", "dst é.bin")
    assert object_path(tmp_path, "dst é.bin", "c").read_bytes() == data
    assert info == storage.head("c", "dst é.bin")
    with pytest.raises(PermanentError, match="does not exist"):
        storage.copy("b", "a/absent.bin", "c", "x")
    assert storage.head("c", "x") is None


# -- presign ----------------------------------------------------------------------------


def test_file_storage_has_no_urls(storage):
    with pytest.raises(PermanentError) as caught:
        storage.presign("b", "job/in.txt")
    message = str(caught.value)
    assert "'local'" in message and "type: file" in message and "no URLs" in message and "s3 storage" in message


def test_base_presign_refuses_naming_the_storage_and_what_to_do(tmp_path):
    storage = Plain("scratch", FileStorage.options_model.model_validate({"type": "file", "root": str(tmp_path)}))
    with pytest.raises(
        PermanentError,
        match=r"storage 'scratch' \(type: file\) cannot make a URL for b/k; "
        r"a backend whose service fetches inputs by URL needs an s3 storage",
    ):
        storage.presign("b", "k", "PUT", 60)


def test_a_jobs_few_small_files_move_in_the_callers_thread_many_or_large_ones_in_threads(storage):
    assert storage.transfer_threads(3, 10_000) == 1
    assert storage.transfer_threads(200, 200_000) == storage.transfer_workers
    assert storage.transfer_threads(2, 1 << 30) == 2
