"""syncd.delivery.outbox: safe outbox keys, incremental atomic mirroring, atomic JSON records."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.delivery.index import DeliveryIndex
from syncd.delivery.mirror import (
    Mirror,
    _holds_nothing,
    _proc_stat,
    _target_folder,
    _writer_tag,
    remove_dead_parts,
)
from syncd.delivery.outbox import Outbox, check_outbox_key
from syncd.errors import PermanentError, TransientError
from syncd.fsutil import TMP_DIR
from syncd.state.store import Store
from syncd.storage.base import ObjectInfo, Storage
from syncd.storage.file import FileStorage
from tests.support.harness import wait_for

# -- check_outbox_key -----------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "job/out.csv",
        "job/sub/deep/file.bin",
        "job/ünï cødé.txt",
        "job/with space.txt",
        "job/dir/",
        "job/.hidden",
        "job/a..b",
        "job/CONFIG.txt",
        "job/console",
        "job/auxiliary.txt",
        "job/COM",
        "job/LPT",
    ],
)
def test_check_outbox_key_accepts_safe_keys(key):
    assert check_outbox_key(key) is None


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("job\\..\\x", "backslash"),
        ("job/a\x00b", "NUL"),
        ("../escape", "'..' path segment"),
        ("job/../../escape", "'..' path segment"),
        ("job/./x", "'.' path segment"),
        ("job//x", "'//' path segment"),
        ("job/line\nbreak", "control characters"),
        ("job/tab\there", "control characters"),
        ("job/bell\x07", "control characters"),
        ("job/CON", "reserved device name"),
        ("job/con", "reserved device name"),
        ("job/aux.txt", "reserved device name"),
        ("job/LPT1", "reserved device name"),
        ("job/com3.log", "reserved device name"),
        ("NUL/x", "reserved device name"),
        ("job/name.", "cannot be stored on a Windows/SMB share"),
        ("job/name ", "cannot be stored on a Windows/SMB share"),
        ("job/dir./x", "cannot be stored on a Windows/SMB share"),
        *[(f"job/a{ch}b", "cannot be stored on a Windows/SMB share") for ch in '<>:"|?*'],
        ("job/.syncd-tmp/x", "reserved for syncd"),
    ],
)
def test_check_outbox_key_refuses_unsafe_keys(key, fragment):
    problem = check_outbox_key(key)
    assert problem is not None
    assert fragment in problem


# -- mirror ---------------------------------------------------------------------------


@pytest.fixture
def storage(tmp_path) -> FileStorage:
    root = tmp_path / "buckets"
    root.mkdir()
    options = FileStorage.options_model.model_validate({"type": "file", "root": str(root)})
    return FileStorage("local", options)


@pytest.fixture
def outbox(tmp_path, store) -> Outbox:
    box = Outbox(tmp_path / "outbox", store)
    box.prepare()
    return box


CONTENT = {
    "job1/out.csv": b"a,b\n1,2\n",
    "job1/logs/stdout.txt": b"hello\n",
    "job1/deep/er/still/x.bin": bytes(range(256)) * 100,
    "job1/données ✓/résumé.txt": "çà et là".encode(),
    "job1/with space.txt": b"spaces",
    "job1/empty.txt": b"",
}


def put_all(storage: Storage, tmp_path: Path, content: dict[str, bytes], bucket: str = "results") -> None:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for n, (key, data) in enumerate(content.items()):
        f = src / f"f{n}"
        f.write_bytes(data)
        storage.put_file(bucket, key, f)


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def tmp_leftovers(outbox: Outbox) -> list[Path]:
    tmp = outbox.root / TMP_DIR
    return list(tmp.iterdir()) if tmp.exists() else []


def test_mirror_copies_byte_identical(storage, outbox, tmp_path):
    put_all(storage, tmp_path, CONTENT)
    report = outbox.mirror(storage, "results", "job1/")
    assert sorted(report.fetched) == sorted(CONTENT)
    assert report.skipped == [] and report.refused == []
    assert report.bytes == sum(len(v) for v in CONTENT.values())
    mirrored = files_under(outbox.root / "results")
    assert mirrored == CONTENT
    assert tmp_leftovers(outbox) == []


def test_mirror_only_the_prefix(storage, outbox, tmp_path):
    put_all(storage, tmp_path, {"job1/a.txt": b"1", "job10/b.txt": b"2", "other/c.txt": b"3"})
    report = outbox.mirror(storage, "results", "job1/")
    assert report.fetched == ["job1/a.txt"]
    assert files_under(outbox.root / "results") == {"job1/a.txt": b"1"}


def test_mirror_unchanged_resync_skips_everything(storage, outbox, tmp_path):
    put_all(storage, tmp_path, CONTENT)
    outbox.mirror(storage, "results", "job1/")
    mtimes = {p: p.stat().st_mtime_ns for p in (outbox.root / "results").rglob("*") if p.is_file()}
    report = outbox.mirror(storage, "results", "job1/")
    assert report.fetched == []
    assert sorted(report.skipped) == sorted(CONTENT)
    assert report.bytes == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_mirror_refetches_changed_object(storage, outbox, tmp_path):
    put_all(storage, tmp_path, CONTENT)
    outbox.mirror(storage, "results", "job1/")
    new = tmp_path / "new.csv"
    new.write_bytes(b"a,b\n3,4\n5,6\n")
    storage.put_file("results", "job1/out.csv", new)
    report = outbox.mirror(storage, "results", "job1/")
    assert report.fetched == ["job1/out.csv"]
    assert len(report.skipped) == len(CONTENT) - 1
    assert (outbox.root / "results" / "job1" / "out.csv").read_bytes() == b"a,b\n3,4\n5,6\n"


@pytest.fixture
def copying_storage(tmp_path) -> FileStorage:
    """A file storage that copies instead of linking (``hard_links: false``)."""
    root = tmp_path / "copying-buckets"
    root.mkdir()
    options = FileStorage.options_model.model_validate({"type": "file", "root": str(root), "hard_links": False})
    return FileStorage("copying", options)


def test_mirror_refetches_file_deleted_or_edited_locally(copying_storage, outbox, tmp_path):
    """Without links the outbox holds copies: one edited in place is repaired from the bucket."""
    storage = copying_storage
    put_all(storage, tmp_path, {"job1/a.txt": b"original", "job1/b.txt": b"original"})
    outbox.mirror(storage, "results", "job1/")
    (outbox.root / "results" / "job1" / "a.txt").unlink()
    (outbox.root / "results" / "job1" / "b.txt").write_bytes(b"edited by someone")
    report = outbox.mirror(storage, "results", "job1/")
    assert sorted(report.fetched) == ["job1/a.txt", "job1/b.txt"]
    assert files_under(outbox.root / "results") == {"job1/a.txt": b"original", "job1/b.txt": b"original"}


def inode(path: Path) -> int:
    return path.stat().st_ino


@pytest.fixture
def no_reflinks(monkeypatch):
    """A filesystem without reflinks (ext4, tmpfs), wherever the tests run: FICLONE is refused."""
    import errno
    import fcntl

    def ioctl(fd, request, arg=0, *rest):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", ioctl)


def test_mirrored_outbox_files_are_not_a_second_copy_of_the_bucket_objects(storage, outbox, tmp_path, no_reflinks):
    """On one filesystem without reflinks an outbox file is a hard link to the bucket object."""
    put_all(storage, tmp_path, CONTENT)
    report = outbox.mirror(storage, "results", "job1/")
    assert sorted(report.fetched) == sorted(CONTENT)
    assert files_under(outbox.root / "results") == CONTENT
    bucket = tmp_path / "buckets" / "results"
    for key in CONTENT:  # empty ones too: a link is cheaper than a new file
        assert inode(outbox.root / "results" / key) == inode(bucket / key), key
    assert (bucket / "job1/out.csv").stat().st_nlink == 3  # the file put, the object, the outbox file
    assert tmp_leftovers(outbox) == []


def test_linked_outbox_file_replaced_is_refetched_but_edited_in_place_is_the_bucket_object(
    storage, outbox, tmp_path, no_reflinks
):
    """The cost of sharing an inode: an in-place write reaches the bucket object (README: hard_links)."""
    put_all(storage, tmp_path, {"job1/a.txt": b"original", "job1/b.txt": b"original"})
    outbox.mirror(storage, "results", "job1/")
    bucket = tmp_path / "buckets" / "results" / "job1"
    here = outbox.root / "results" / "job1"
    replacement = tmp_path / "replacement"
    replacement.write_bytes(b"replaced by someone")
    os.replace(replacement, here / "a.txt")  # as editors save: a new file under the old name
    (here / "b.txt").write_bytes(b"edited in place")
    report = outbox.mirror(storage, "results", "job1/")
    assert sorted(report.fetched) == ["job1/a.txt", "job1/b.txt"]
    assert (here / "a.txt").read_bytes() == b"original" and (bucket / "a.txt").read_bytes() == b"original"
    assert (here / "b.txt").read_bytes() == b"edited in place" == (bucket / "b.txt").read_bytes()
    assert tmp_leftovers(outbox) == [], "a fetch that is already the outbox file's inode leaves no part behind"


def test_a_delivery_repeated_after_a_crash_leaves_no_part_behind(storage, tmp_path, no_reflinks):
    """A crash after the outbox files were linked and before they were indexed: the next run fetches each
    object again as another link to the same inode, and rename() between two links of one inode does
    nothing, so the part must be removed by hand."""
    put_all(storage, tmp_path, CONTENT)
    first = Outbox(tmp_path / "outbox", Store(tmp_path / "first.db"))
    first.mirror(storage, "results", "job1/")
    again = Outbox(tmp_path / "outbox", Store(tmp_path / "after-crash.db"))  # an index that never saw them
    report = again.mirror(storage, "results", "job1/")
    assert report.fetched, "the new index knows none of the files: each is fetched again"
    assert files_under(again.root / "results") == CONTENT
    assert tmp_leftovers(again) == []


def test_mirror_copies_objects_the_daemon_does_not_own(storage, outbox, tmp_path, monkeypatch):
    put_all(storage, tmp_path, {"job1/a.txt": b"of a job's user"})
    bucket_object = tmp_path / "buckets" / "results" / "job1" / "a.txt"
    monkeypatch.setattr(os, "geteuid", lambda: bucket_object.stat().st_uid + 1)
    outbox.mirror(storage, "results", "job1/")
    mirrored = outbox.root / "results" / "job1" / "a.txt"
    assert mirrored.read_bytes() == b"of a job's user"
    assert inode(mirrored) != inode(bucket_object)


def test_mirror_creates_directory_markers(storage, outbox, tmp_path):
    storage.put_file("results", "job1/empty-dir/", tmp_path)
    put_all(storage, tmp_path, {"job1/a.txt": b"a"})
    outbox.mirror(storage, "results", "job1/")
    assert (outbox.root / "results" / "job1" / "empty-dir").is_dir()


def test_mirror_honours_exclude(storage, outbox, tmp_path):
    put_all(storage, tmp_path, {"job1/a.txt": b"a", "job1/syncd-result.json": b"{}"})
    report = outbox.mirror(storage, "results", "job1/", exclude=["job1/syncd-result.json"])
    assert report.fetched == ["job1/a.txt"]
    assert not (outbox.root / "results" / "job1" / "syncd-result.json").exists()


def test_mirror_refuses_case_colliding_key(storage, outbox, tmp_path):
    put_all(storage, tmp_path, {"job1/Report.txt": b"upper", "job1/report.txt": b"lower"})
    report = outbox.mirror(storage, "results", "job1/")
    assert report.fetched == ["job1/Report.txt"]
    assert len(report.refused) == 1
    key, problem = report.refused[0]
    assert key == "job1/report.txt"
    assert "letter case" in problem and "job1/Report.txt" in problem
    assert files_under(outbox.root / "results") == {"job1/Report.txt": b"upper"}


def test_mirror_refuses_smb_hostile_names_from_file_storage(storage, outbox, tmp_path):
    hostile = [
        "job1/aux.txt",
        "job1/CON",
        "job1/a:b",
        "job1/trailing.",
        "job1/trailing ",
        "job1/back\\slash",
        "job1/ctl\x01",
        "job1/q?.txt",
    ]
    bucket = storage.options.root / "results"
    (bucket / "job1").mkdir(parents=True)
    for key in hostile:  # files a remote bucket can hold but an SMB share cannot
        (bucket / key).write_bytes(b"x")
    put_all(storage, tmp_path, {"job1/ok.txt": b"ok"})
    report = outbox.mirror(storage, "results", "job1/")
    assert report.fetched == ["job1/ok.txt"]
    assert sorted(k for k, _ in report.refused) == sorted(hostile)
    assert files_under(outbox.root) == {"results/job1/ok.txt": b"ok"}


class KeyListStorage(Storage):
    """A remote that lists whatever keys it is given (as a hostile server could)."""

    def __init__(self, objects: dict[str, bytes]):
        super().__init__("hostile", None)  # type: ignore[arg-type]
        self.objects = objects

    def ensure_bucket(self, bucket: str) -> None:
        pass

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        for key, data in self.objects.items():
            if key.startswith(prefix):
                yield ObjectInfo(key, len(data), f"etag-{len(data)}")

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        return None

    def put_file(self, bucket: str, key: str, source: Path) -> ObjectInfo:
        raise NotImplementedError

    def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
        dest.write_bytes(self.objects[key])
        return ObjectInfo(key, len(self.objects[key]), f"etag-{len(self.objects[key])}")

    def delete(self, bucket: str, key: str) -> None:
        pass


def index_rows(outbox: Outbox, bucket: str = "results") -> list[str]:
    root = outbox.root / bucket
    return sorted(Path(p).relative_to(root).as_posix() for p in DeliveryIndex(outbox.store).under(f"{root}{os.sep}"))


def test_mirror_forgets_the_index_rows_of_objects_gone_from_the_bucket_and_keeps_their_files(outbox):
    """Without this, the index of a standing mirror grew with every object the bucket ever held."""
    remote = KeyListStorage({"job1/a.txt": b"a", "job1/b.txt": b"bb", "job1/sub/c.txt": b"ccc"})
    outbox.mirror(remote, "results", "job1/")
    assert index_rows(outbox) == ["job1/a.txt", "job1/b.txt", "job1/sub/c.txt"]
    del remote.objects["job1/b.txt"], remote.objects["job1/sub/c.txt"]
    report = outbox.mirror(remote, "results", "job1/")
    assert report.skipped == ["job1/a.txt"] and report.fetched == [] and report.deleted == []
    assert index_rows(outbox) == ["job1/a.txt"]
    assert files_under(outbox.root / "results") == {"job1/a.txt": b"a", "job1/b.txt": b"bb", "job1/sub/c.txt": b"ccc"}


def test_a_mirror_of_job1_leaves_the_index_rows_of_job10_alone(outbox):
    remote = KeyListStorage({"job1/a.txt": b"a", "job10/b.txt": b"b"})
    outbox.mirror(remote, "results", "job10/")
    outbox.mirror(remote, "results", "job1/")
    assert index_rows(outbox) == ["job1/a.txt", "job10/b.txt"]
    again = outbox.mirror(remote, "results", "job10/")
    assert again.fetched == [] and again.skipped == ["job10/b.txt"]


def test_the_index_rows_of_objects_a_run_excludes_or_refuses_are_kept(outbox):
    remote = KeyListStorage({"job1/a.txt": b"a", "job1/b.txt": b"b"})
    outbox.mirror(remote, "results", "job1/")
    report = outbox.mirror(remote, "results", "job1/", exclude={"job1/b.txt"})
    assert report.skipped == ["job1/a.txt"]
    assert index_rows(outbox) == ["job1/a.txt", "job1/b.txt"]
    # A key that now differs only by case from one listed before it is refused, not gone.
    collides = KeyListStorage({"job1/A.txt": b"A", "job1/a.txt": b"a", "job1/b.txt": b"b"})
    report = outbox.mirror(collides, "results", "job1/")
    assert [key for key, _ in report.refused] == ["job1/a.txt"]
    assert "job1/a.txt" in index_rows(outbox)


def test_a_listing_that_fails_part_way_forgets_nothing(outbox):
    objects = {"job1/a.txt": b"a", "job1/b.txt": b"b", "job1/c.txt": b"c"}
    outbox.mirror(KeyListStorage(objects), "results", "job1/")

    class BreaksAfterOne(KeyListStorage):
        def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
            yield next(super().list(bucket, prefix))
            raise TransientError("connection reset while listing")

    with pytest.raises(TransientError):
        outbox.mirror(BreaksAfterOne(objects), "results", "job1/")
    assert index_rows(outbox) == ["job1/a.txt", "job1/b.txt", "job1/c.txt"]


def test_mirror_never_writes_hostile_keys_outside_outbox(outbox, tmp_path):
    hostile = [
        "../../escape.txt",
        "job1/../../../escape2.txt",
        "/tmp/abs.txt",
        "job1//x",
        "job1/./y",
        "job1/..",
        f"job1/{TMP_DIR}/z",
        "job1/nul\x00.txt",
        "..\\..\\win.txt",
        "../up/",
    ]
    remote = KeyListStorage({k: b"evil" for k in hostile} | {"job1/fine.txt": b"fine"})
    before = {p for p in tmp_path.rglob("*") if outbox.root not in p.parents}
    report = outbox.mirror(remote, "results", "")
    after = {p for p in tmp_path.rglob("*") if outbox.root not in p.parents}
    assert report.fetched == ["job1/fine.txt"]
    assert sorted(k for k, _ in report.refused) == sorted(hostile)
    assert after == before
    assert files_under(outbox.root) == {"results/job1/fine.txt": b"fine"}
    assert not Path("/tmp/abs.txt").exists() or Path("/tmp/abs.txt").read_bytes() != b"evil"


@pytest.mark.parametrize(
    "objects",
    [
        {"job1/a": b"file", "job1/a/b": b"nested"},  # the file arrives first
        {"job1/a/b": b"nested", "job1/a": b"file"},  # the folder arrives first
    ],
)
def test_mirror_file_folder_clash_is_permanent_error(outbox, objects):
    remote = KeyListStorage(objects)
    with pytest.raises(PermanentError, match="a file and a folder would share this path"):
        outbox.mirror(remote, "results", "job1/")
    assert tmp_leftovers(outbox) == []


def test_prepare_removes_crash_leftovers(tmp_path, store):
    box = Outbox(tmp_path / "outbox", store)
    (box.root / TMP_DIR).mkdir(parents=True)
    (box.root / TMP_DIR / "abc.part").write_bytes(b"partial")
    box.prepare()
    assert not any((box.root / TMP_DIR).glob("*")), "no partial file left behind"
    assert box.root.is_dir()


def test_dead_writers_parts_are_removed_even_when_their_pid_is_taken_again(tmp_path):
    tmp = tmp_path / TMP_DIR
    tmp.mkdir()
    mine = _writer_tag(os.getpid())
    pid, started = mine.split(".")
    live = tmp / f"{mine}-abc-0.part"
    reused = tmp / f"{pid}.{int(started) - 1}-abc-0.part"  # this pid, but an earlier process's
    gone = tmp / "999999999.5-abc-0.part"
    untagged_gone = tmp / "999999999-abc-0.part"  # a name from a system without start times
    foreign = tmp / "notes.part"
    child = subprocess.Popen(["sleep", "0.2"])
    zombie = tmp / f"{_writer_tag(child.pid)}-abc-0.part"  # exited, not yet reaped by its parent
    wait_for(lambda: _proc_stat(child.pid)[0] == "Z", timeout=10, what="the child to exit")
    for path in (live, reused, gone, untagged_gone, foreign, zombie):
        path.write_bytes(b"partial")
    remove_dead_parts(tmp)
    child.wait()
    assert sorted(p.name for p in tmp.iterdir()) == sorted([live.name, foreign.name])


def test_a_mirror_looks_for_dead_writers_parts_once_per_interval(storage, outbox, tmp_path, monkeypatch):
    """A daemon mirrors once per job: it does not read the temporary folder (and each writer's /proc entry)
    every time, but a dead writer's part is still removed at the next look."""
    from syncd.delivery import mirror as mirror_module

    put_all(storage, tmp_path, CONTENT)
    tmp = outbox.root / TMP_DIR
    tmp.mkdir(parents=True, exist_ok=True)
    first, second = tmp / "999999999.5-abc-0.part", tmp / "999999999.5-abc-1.part"  # no process has this pid
    first.write_bytes(b"partial")
    outbox.mirror(storage, "results", "job1/")
    assert not first.exists(), "the first run removes a dead writer's part"
    second.write_bytes(b"partial")
    outbox.mirror(storage, "results", "job1/")
    assert second.exists(), "looked for again only after the interval"
    monkeypatch.setattr(mirror_module, "DEAD_PARTS_SWEEP", 0.0)
    outbox.mirror(storage, "results", "job1/")
    assert not second.exists()


# -- put_file -------------------------------------------------------------------------


def a_record(folder: Path, data: dict) -> Path:
    source = folder / f"record-{len(list(folder.iterdir()))}.json"
    source.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return source


def test_put_file_places_the_record_as_a_link_on_the_outboxs_filesystem(outbox, tmp_path):
    data = {"job": "données", "state": "succeeded", "files": ["a", "b"], "exit_code": 0}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = a_record(scratch, data)
    dest = outbox.put_file("results", "job1/syncd-result.json", source)
    assert dest == outbox.root / "results" / "job1" / "syncd-result.json"
    assert json.loads(dest.read_text(encoding="utf-8")) == data
    assert oct(dest.stat().st_mode & 0o777) == oct(0o644)
    assert os.path.samefile(dest, source)  # one file on one disk, not a second copy
    source.unlink()
    assert json.loads(dest.read_text(encoding="utf-8")) == data
    assert tmp_leftovers(outbox) == []


def test_put_file_asks_a_filesystem_without_reflinks_once(outbox, tmp_path, monkeypatch):
    """A refused reflink costs a new file and its removal: the outbox remembers the refusal."""
    import errno
    import fcntl

    calls: list[int] = []

    def ioctl(fd, request, arg=0, *rest):
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fcntl, "ioctl", ioctl)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for n in range(3):
        source = a_record(scratch, {"n": n})
        dest = outbox.put_file("results", f"job{n}/syncd-result.json", source)
        assert os.path.samefile(dest, source)
    assert len(calls) == 1
    assert tmp_leftovers(outbox) == []


def test_put_file_copies_what_it_may_not_link(outbox, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = a_record(scratch, {"v": 1})
    source.chmod(0o666)  # others may write it: a link would let them change the delivered record
    dest = outbox.put_file("results", "job1/syncd-result.json", source)
    assert not os.path.samefile(dest, source)
    assert json.loads(dest.read_text()) == {"v": 1}
    assert tmp_leftovers(outbox) == []


def test_put_file_replaces_atomically(outbox, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    dest = outbox.put_file("results", "job1/syncd-result.json", a_record(scratch, {"v": 1}))
    old_inode = dest.stat().st_ino
    with open(dest, encoding="utf-8") as reader:  # a reader holding the old record
        outbox.put_file("results", "job1/syncd-result.json", a_record(scratch, {"v": 2, "pad": "x" * 10000}))
        assert json.loads(reader.read()) == {"v": 1}  # never truncated or half-written under the reader
    assert dest.stat().st_ino != old_inode
    assert json.loads(dest.read_text()) == {"v": 2, "pad": "x" * 10000}
    assert tmp_leftovers(outbox) == []
    assert sorted(p.name for p in dest.parent.iterdir()) == ["syncd-result.json"]


def test_mirror_recreates_a_folder_removed_while_it_runs(outbox):
    # The mirror creates each destination folder once per run; one removed behind its back is made again.
    class RemovesTheFolder(KeyListStorage):
        transfer_workers = 1

        def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
            if key == "job1/sub/b.txt":
                import shutil

                shutil.rmtree(outbox.root / "results" / "job1" / "sub")
            return super().get_file(bucket, key, dest)

    remote = RemovesTheFolder({"job1/sub/a.txt": b"a", "job1/sub/b.txt": b"b"})
    report = outbox.mirror(remote, "results", "job1/")
    assert report.failed == []
    assert files_under(outbox.root) == {"results/job1/sub/b.txt": b"b"}
    assert tmp_leftovers(outbox) == []


def test_mirror_reports_each_object_and_records_the_index_in_batches(storage, store, tmp_path, monkeypatch):
    import syncd.delivery.mirror as mirror_module

    monkeypatch.setattr(mirror_module, "INDEX_BATCH", 7)  # several batches while workers still add folders
    content = {f"job1/d{i % 5}/f{i:03d}.txt": f"{i}".encode() for i in range(60)}
    put_all(storage, tmp_path, content)
    done: list[tuple[str, int]] = []
    report = Mirror(store, fsync=True).run(
        storage,
        "results",
        "job1/",
        tmp_path / "out",
        tmp_dir=tmp_path / "out" / TMP_DIR,
        strip="job1/",
        check_key=check_outbox_key,
        on_done=lambda key, size: done.append((key, size)),
    )
    assert sorted(done) == sorted((key, len(data)) for key, data in content.items())
    assert sorted(report.fetched) == sorted(content) and report.bytes == sum(map(len, content.values()))
    again = Mirror(store).run(
        storage,
        "results",
        "job1/",
        tmp_path / "out",
        tmp_dir=tmp_path / "out" / TMP_DIR,
        strip="job1/",
        check_key=check_outbox_key,
    )
    assert again.fetched == [] and len(again.skipped) == len(content), "every file was in the index"


@pytest.mark.parametrize("threads", [1, 8], ids=["in-the-callers-thread", "in-threads"])
def test_mirror_reports_a_failed_object_and_raises_a_bug(tmp_path, store, threads):
    class Failing(KeyListStorage):
        def transfer_threads(self, count: int, total_bytes: int) -> int:
            return min(threads, count)

        def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
            if key.endswith("bad"):
                raise PermanentError("bad object")
            if key.endswith("bug"):
                raise ZeroDivisionError("a bug")
            return super().get_file(bucket, key, dest)

    engine = Mirror(store, attempts=1)

    def run(remote):
        return engine.run(
            remote,
            "results",
            "job1/",
            tmp_path / "out",  # noqa: E731
            tmp_dir=tmp_path / "out" / TMP_DIR,
            strip="job1/",
            check_key=check_outbox_key,
        )

    report = run(Failing({"job1/ok": b"ok", "job1/bad": b"x"}))
    assert report.fetched == ["job1/ok"] and [key for key, _ in report.failed] == ["job1/bad"]
    with pytest.raises(ZeroDivisionError):
        run(Failing({"job1/ok2": b"ok", "job1/bug": b"x"}))
    assert (tmp_path / "out" / "ok2").read_bytes() == b"ok", "the other objects still landed"


def test_mirror_that_fails_itself_returns_only_after_its_workers_stop(store, tmp_path):
    import threading
    import time

    class Slow(KeyListStorage):
        transfer_workers = 4

        def get_file(self, bucket: str, key: str, dest: Path) -> ObjectInfo:
            time.sleep(0.05)
            return super().get_file(bucket, key, dest)

    def progress_fails(key: str, size: int) -> None:
        raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError, match="progress display"):
        Mirror(store).run(
            Slow({f"job1/f{i:03d}": b"x" for i in range(40)}),
            "results",
            "job1/",
            tmp_path / "out",
            tmp_dir=tmp_path / "out" / TMP_DIR,
            strip="job1/",
            check_key=check_outbox_key,
            on_done=progress_fails,
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("syncd-mirror")], "no worker left writing"
    assert len(list((tmp_path / "out").glob("f*"))) < 40, "workers stopped taking objects"


# -- small objects fetched together (Storage.fetch_many) --------------------------------------


class BatchStorage(KeyListStorage):
    """Fetches in batches: fails the objects in ``fail``, and gives up altogether after ``give_up_after``."""

    batch_fetch = True

    def __init__(self, objects: dict[str, bytes], fail: set[str], give_up_after: int):
        super().__init__(objects)
        self.fail, self.give_up_after = fail, give_up_after
        self.alone: list[str] = []

    def fetch_many(self, bucket, items):
        for n, (info, dest) in enumerate(items):
            if n == self.give_up_after:
                dest.write_bytes(b"half")  # taken, partly written, never answered
                raise TransientError("the connection pool is gone")
            if info.key in self.fail:
                dest.write_bytes(b"partial")
                yield info, dest, TransientError("reset by peer")
            else:
                yield info, dest, self.get_file(bucket, info.key, dest)

    def fetch(self, bucket, key, dest, expected=None):
        self.alone.append(key)
        return super().fetch(bucket, key, dest, expected)


def test_objects_a_batch_fails_or_never_reaches_are_fetched_one_by_one_once(outbox):
    objects = {f"job1/f{i:02d}.txt": f"content {i}".encode() for i in range(30)}
    objects["job1/big.bin"] = b"x" * (2 * 1024 * 1024)  # above the batch size: never in a batch
    objects["job1/empty.txt"] = b""
    remote = BatchStorage(objects, fail={"job1/f03.txt", "job1/f07.txt"}, give_up_after=20)
    report = outbox.mirror(remote, "results", "")
    assert report.failed == []
    assert sorted(report.fetched) == sorted(objects)
    assert files_under(outbox.root / "results") == objects
    small = [k for k in objects if 0 < len(objects[k]) <= 1024 * 1024]  # in listing order
    alone = {"job1/f03.txt", "job1/f07.txt", "job1/big.bin"} | set(small[20:])
    assert sorted(remote.alone) == sorted(alone), "each object the batch did not deliver is fetched alone, once"
    assert tmp_leftovers(outbox) == []


def test_a_file_folder_clash_in_a_batch_is_still_a_permanent_error(outbox):
    remote = BatchStorage({"job1/a": b"file", "job1/a/b": b"nested"}, fail=set(), give_up_after=99)
    with pytest.raises(PermanentError, match="a file and a folder would share this path"):
        outbox.mirror(remote, "results", "job1/")
    assert remote.alone == []
    assert tmp_leftovers(outbox) == []


@pytest.mark.parametrize("prefix, strip", [("job07/", ""), ("data/job07/", "data/")])
def test_mirror_reads_only_the_index_rows_under_its_prefix(storage, store, tmp_path, monkeypatch, prefix, strip):
    """A collect that read the delivery index of every file ever delivered to the bucket made memory and time
    grow per finished job (issue 5)."""
    top = prefix[: -len("job07/")]
    put_all(
        storage,
        tmp_path,
        {
            f"{top}job{n:02d}/{name}": f"{n}{name}".encode()
            for n in range(12)
            for name in ("out.txt", "stdout.txt", "stderr.txt")
        },
    )
    dest = tmp_path / "out"

    def mirror(job_prefix: str):
        return Mirror(store).run(
            storage, "results", job_prefix, dest, tmp_dir=dest / TMP_DIR, strip=strip, check_key=check_outbox_key
        )

    for n in range(12):
        assert len(mirror(f"{top}job{n:02d}/").fetched) == 3
    rows_read: list[int] = []
    under = DeliveryIndex.under
    monkeypatch.setattr(DeliveryIndex, "under", lambda self, p: rows_read.append(len(found := under(self, p))) or found)
    again = mirror(prefix)
    assert again.fetched == [] and len(again.skipped) == 3, "the rows it needs were read"
    assert rows_read == [3], "only this prefix's rows, not the 36 of the whole bucket"


def test_a_first_mirror_skips_looking_for_files_only_when_the_folder_holds_nothing(tmp_path):
    assert _holds_nothing(tmp_path / "missing")
    (tmp_path / "fresh" / TMP_DIR).mkdir(parents=True)  # a killed run's temporary folder is not content
    assert _holds_nothing(tmp_path / "fresh")
    (tmp_path / "fresh" / "a.txt").write_text("kept")
    assert not _holds_nothing(tmp_path / "fresh")
    (tmp_path / "file").write_text("not a folder")
    assert not _holds_nothing(tmp_path / "file")  # each object then reports the problem


@pytest.mark.parametrize(
    "prefix, strip, folder",
    [
        ("job1/", "", "job1"),
        ("job1//", "", "job1"),
        ("data/job1/", "data/", "job1"),
        ("data/a/job1/", "data/", "a/job1"),
        ("data/a/job1", "data/", "a"),  # also starts a/job10's keys
        ("data/job1", "data/", ""),
        ("data/", "data/", ""),
        ("other/job1/", "data/", ""),  # keys that keep their full name
        ("", "", ""),
    ],
)
def test_the_folder_a_mirror_writes_into_holds_every_path_it_can_write(tmp_path, prefix, strip, folder):
    assert _target_folder(tmp_path, prefix, strip) == tmp_path / folder


def test_a_first_mirror_of_one_job_reads_its_own_folder_not_the_outbox(storage, store, tmp_path, monkeypatch):
    """Reading the bucket's outbox folder, which holds a folder per job ever delivered, cost a read of up to
    32 KiB of names per job."""
    put_all(storage, tmp_path, {f"job{n}/out.txt": f"out {n}".encode() for n in range(3)})
    dest = tmp_path / "out"
    mirror = Mirror(store)
    for n in range(2):
        mirror.run(storage, "results", f"job{n}/", dest, tmp_dir=tmp_path / TMP_DIR, check_key=check_outbox_key)
    scanned: list[Path] = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path: scanned.append(Path(path)) or scandir(path))
    stats: list[Path] = []
    stat = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, **kw: stats.append(self) or stat(self, **kw))
    report = mirror.run(storage, "results", "job2/", dest, tmp_dir=tmp_path / TMP_DIR, check_key=check_outbox_key)
    assert report.fetched == ["job2/out.txt"] and (dest / "job2" / "out.txt").read_text() == "out 2"
    assert dest / "job2" in scanned and dest not in scanned
    assert dest / "job2" / "out.txt" not in stats, "a folder found empty needs no look at each file"


def test_mirror_into_a_folder_that_is_a_file_reports_each_object(storage, store, tmp_path):
    (tmp_path / "buckets" / "b" / "job").mkdir(parents=True)
    (tmp_path / "buckets" / "b" / "job" / "a.txt").write_text("A")
    (tmp_path / "out").write_text("a file where the outbox folder should be")
    report = Mirror(store).run(
        storage, "b", "job/", tmp_path / "out", tmp_dir=tmp_path / "tmp", strip="job/", check_key=check_outbox_key
    )
    assert [key for key, _ in report.failed] == ["job/a.txt"] and report.fetched == []
    assert (tmp_path / "out").read_text() == "a file where the outbox folder should be"


def test_put_file_makes_the_temporary_and_results_folders_when_they_are_missing(outbox, tmp_path):
    """They are made when a write finds them missing (not asked for at every write): at first, and again
    after someone removed them."""
    import shutil

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    first = outbox.put_file("results", "job1/syncd-result.json", a_record(scratch, {"n": 1}))
    shutil.rmtree(outbox.root / TMP_DIR)
    shutil.rmtree(outbox.root / "results")
    again = outbox.put_file("results", "job2/deep/syncd-result.json", a_record(scratch, {"n": 2}))
    assert json.loads(again.read_text(encoding="utf-8")) == {"n": 2}
    assert not first.exists() and again == outbox.root / "results" / "job2" / "deep" / "syncd-result.json"
    assert tmp_leftovers(outbox) == []
    with pytest.raises(PermanentError, match="No such file"):  # a missing record is not a missing folder
        outbox.put_file("results", "job3/syncd-result.json", scratch / "no such record")
