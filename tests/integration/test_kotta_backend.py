"""The Kotta backend's own cases against the emulator: what the conformance suite does not ask of every backend."""

from __future__ import annotations

import io
import json
import tarfile
from urllib.parse import parse_qs, urlsplit

import pytest

from syncd.backends import wrapper
from syncd.backends.base import RemoteState, StagingArea
from syncd.backends.kotta import KottaBackend, KottaOptions
from syncd.errors import AuthError
from tests.conformance.harness import Harness
from tests.integration.conftest import make_storage
from tests.support.kotta_service import BUCKET

pytestmark = pytest.mark.s3


def backend_for(service, tmp_path, user=None, **overrides) -> tuple[KottaBackend, Harness, dict]:
    user = user or service.add_user()
    options = KottaOptions.model_validate(
        {
            "type": "kotta",
            "url": service.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "default_walltime": "1h",
            **overrides,
        }
    )
    backend = KottaBackend("kotta", options, tmp_path / "work")
    return (
        backend,
        Harness(
            backend=backend,
            new_backend=lambda: KottaBackend("kotta", options, tmp_path / "work"),
            scratch=tmp_path,
            poll_interval=0.1,
            timeout=60,
        ),
        user,
    )


def delivered(backend, ref, spec) -> dict:
    return {o.relpath: o for o in backend.outputs(ref, spec) if not wrapper.is_wrapper_path(o.relpath)}


def test_poll_sends_one_list_per_cycle_and_reads_status_only_for_jobs_that_just_ended(kotta_service, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path)
    kotta_service.hold()
    try:
        refs = [harness.run(harness.spec("true")) for _ in range(3)]
        lists, statuses = kotta_service.count("/rest/v1/list_tasks"), kotta_service.count("/rest/v1/status_task")
        assert {s.state for s in backend.poll(refs).values()} == {RemoteState.QUEUED}
        assert (
            kotta_service.count("/rest/v1/list_tasks") - lists,
            kotta_service.count("/rest/v1/status_task") - statuses,
        ) == (1, 0)
    finally:
        kotta_service.hold(False)
    for ref in refs:
        harness.wait(ref)
    statuses = kotta_service.count("/rest/v1/status_task")
    backend.poll(refs)
    assert kotta_service.count("/rest/v1/status_task") == statuses, "an ended job's status is read once"


def test_find_looks_for_the_name_when_the_answer_to_submit_was_lost(kotta_service, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path)
    spec = harness.spec("echo once")
    ref = harness.run(spec)
    marker = tmp_path / "work" / spec.submit_key / "submitted.json"
    marker.write_text('{"asked": 1}')  # the daemon died after asking, before the id was written
    for _ in range(2):
        other = harness.run(harness.spec("true"))  # newer jobs of the same user come first in the search
    found = harness.new_backend().find(spec)
    assert found is not None and found.remote_id == ref.remote_id and other.remote_id != ref.remote_id
    assert len(kotta_service.named(spec.submit_key)) == 1


def test_unchanged_inputs_are_not_uploaded_twice(kotta_service, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path)
    spec = harness.spec("cat big.bin small.txt > both.bin", outputs=["both.bin"])
    files = {"big.bin": b"b" * (1024 * 1024 + 1), "small.txt": b"s\n"}
    harness.stage(spec, files)
    uploads = kotta_service.count("/rest/v1/upload_url")
    assert uploads >= 2
    harness.stage(spec, files)  # staging again after a crash: the same files were written again, same content
    assert kotta_service.count("/rest/v1/upload_url") == uploads, "the control archive and big.bin are up there"
    ref = backend.submit(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    (both,) = delivered(backend, ref, spec).values()
    assert both.source.read_bytes() == files["big.bin"] + files["small.txt"]


def test_inputs_come_from_the_inbox_storage_by_presigned_url(kotta_service, seaweedfs, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path, inputs="storage", input_url_expiry="2h")
    assert backend.capabilities.stages_to_storage
    storage = make_storage(seaweedfs)
    bucket = seaweedfs.new_bucket("kotta-in")
    spec = harness.spec("sort data/numbers.txt > sorted.txt", outputs=["sorted.txt"])
    spec = type(spec)(**{**vars(spec), "staging": StagingArea.for_job(storage, bucket, "lab", spec.job_id)})
    ref = harness.run(spec, {"data/numbers.txt": b"3\n1\n2\n"})
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    assert delivered(backend, ref, spec)["sorted.txt"].source.read_bytes() == b"1\n2\n3\n"
    assert [o.key for o in storage.list(bucket, "lab/_inputs/")] == [f"lab/_inputs/{spec.job_id}/data/numbers.txt"]
    uploaded = [
        k["Key"]
        for k in seaweedfs.client().list_objects_v2(Bucket=BUCKET, Prefix="uploads/").get("Contents", [])
        if spec.submit_key in k["Key"]
    ]
    assert [k.rsplit("/", 1)[1] for k in uploaded] == ["syncd-control.tar"], "only the control archive"
    archive = seaweedfs.client().get_object(Bucket=BUCKET, Key=uploaded[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.startswith("control/fetch/")]
        url = tar.extractfile(member).read().decode()
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["7200"], "the URL lives as input_url_expiry says"


def test_an_expired_access_token_with_a_refresh_token_submits_and_polls_job_by_job(kotta_service, tmp_path):
    user = kotta_service.add_user()
    kotta_service.expire(user["access_token"])
    backend, harness, _ = backend_for(kotta_service, tmp_path, user)
    backend.probe()  # list_tasks refuses the access token; upload_url takes the refresh token
    ref = harness.run(harness.spec("echo fine"))  # upload_url and submit_task exchange the refresh token
    statuses = kotta_service.count("/rest/v1/status_task")
    assert harness.wait(ref).state is RemoteState.SUCCEEDED, "status_task needs no token"
    assert kotta_service.count("/rest/v1/status_task") > statuses


def test_refused_tokens_are_auth_errors_and_a_token_file_is_read_afresh(kotta_service, tmp_path):
    first_call = len(kotta_service.calls)
    user = kotta_service.add_user()
    kotta_service.expire(user["access_token"])
    token = tmp_path / "credentials.json"
    token.write_text(json.dumps({"access_token": user["access_token"], "refresh_token": "Atzr|revoked"}))
    token.chmod(0o600)
    backend, harness, _ = backend_for(
        kotta_service, tmp_path, user, access_token={"token_file": str(token)}, refresh_token={"token_file": str(token)}
    )
    with pytest.raises(AuthError, match="invalid_grant"):
        backend.probe()
    with pytest.raises(AuthError, match="refused the tokens"):
        harness.run(harness.spec("true"))
    fresh = kotta_service.new_access_token(user["user_id"])
    token.write_text(json.dumps({"access_token": fresh, "refresh_token": user["refresh_token"]}))
    ref = harness.run(harness.spec("true"))
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    assert all(not call["cookie"] for call in kotta_service.calls[first_call:]), "syncd sends no session cookie"


def test_a_cancel_from_kottas_web_ui_ends_the_job_cancelled(kotta_service, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path)
    spec = harness.spec("echo started; sleep 60")
    ref = harness.run(spec)
    harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
    kotta_service.web_cancel(ref.remote_id)
    status = harness.wait(ref)
    assert status.state is RemoteState.CANCELLED and "cancelled in Kotta" in status.message
    assert delivered(backend, ref, spec) == {}, "nothing was packed: no outputs"


def test_outputs_with_names_that_leave_the_folder_are_reported_never_written(kotta_service, tmp_path):
    backend, harness, _ = backend_for(kotta_service, tmp_path)
    spec = harness.spec(["python3", "-c", "open('evil.txt', 'w').write('x')"])
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    # A worker that packs what it should not: the archive in Kotta's bucket is replaced.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name in ("../../escaped.txt", "fine.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    kotta_service.s3.client().put_object(
        Bucket=BUCKET, Key=f"outputs/{ref.remote_id}/syncd-outputs.tar", Body=raw.getvalue()
    )
    found = delivered(backend, ref, spec)
    assert found["../../escaped.txt"].source is None and found["fine.txt"].source.read_bytes() == b"x"
    assert not list(tmp_path.rglob("escaped.txt"))
