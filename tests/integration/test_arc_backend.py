"""The ARC backend's own cases against a real A-REX: what the conformance suite does not ask of every backend."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests

from syncd.backends.arc import ArcBackend, ArcOptions, api
from syncd.backends.base import RemoteRef, RemoteState, StagingArea
from syncd.errors import AuthError, TransientError
from syncd.storage.file import FileStorage
from tests.conformance.harness import Harness
from tests.integration.conftest import make_storage
from tests.support.arc import ArcSite

pytestmark = pytest.mark.arc


def backend_for(site: ArcSite, tmp_path, **overrides) -> tuple[ArcBackend, Harness]:
    options = ArcOptions.model_validate(site.backend_section(**overrides))
    backend = ArcBackend("arc", options, tmp_path / "work")
    harness = Harness(
        backend=backend,
        new_backend=lambda: ArcBackend("arc", options, tmp_path / "work"),
        scratch=site.scratch("integration"),
        poll_interval=0.3,
        timeout=90,
    )
    return backend, harness


def named(backend: ArcBackend, key: str) -> list[str]:
    """The ids of the user's jobs named ``key`` (through the REST interface, as any client sees them)."""
    listed = api.job_ids(backend._json("GET", "jobs", "listing the user's jobs"))
    infos = backend._bulk("info", listed, "reading names") if listed else {}
    return [i for i, e in infos.items() if api.text(api.activity(e).get("Name")) == key]


class FailingUploads(ArcBackend):
    """Dies (as the daemon would) after the CE created the job and one file went up."""

    def _send(self, method, url, what, **kw):
        if method == "PUT" and getattr(self, "puts", 0) >= 1:
            raise TransientError("the daemon died here")
        if method == "PUT":
            self.puts = getattr(self, "puts", 0) + 1
        return super()._send(method, url, what, **kw)


def test_a_crash_between_creating_the_job_and_its_last_upload_still_runs_one_job_once(arc_site, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path)
    counter = harness.scratch / "runs.txt"
    spec = harness.spec(f"cat data.txt >> {counter}", outputs=[])
    harness.stage(spec, {"data.txt": b"run\n"})
    dying = FailingUploads("arc", backend.options, tmp_path / "work")
    with pytest.raises(TransientError):
        dying.submit(spec)
    fresh = harness.new_backend()  # the daemon restarted
    found = fresh.find(spec)
    assert found is not None and not found.complete, "created but not all inputs are up: an unfinished ref"
    ref = fresh.submit(spec)  # what the engine does with an unfinished ref
    assert ref.remote_id == found.remote_id
    assert fresh.find(spec).complete
    assert harness.wait(ref, backend=fresh).state is RemoteState.SUCCEEDED
    assert counter.read_text() == "run\n"
    assert named(fresh, spec.submit_key) == [ref.remote_id]


def test_an_answer_lost_before_the_id_was_written_is_found_by_name(arc_site, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path)
    spec = harness.spec("echo once")
    ref = harness.run(spec)
    marker = tmp_path / "work" / spec.submit_key / "ctrl" / "submitted.json"
    marker.write_text(json.dumps({"asked": True}))  # the daemon died after asking, before the id was written
    other = harness.run(harness.spec("true"))  # another job of the same user
    fresh = harness.new_backend()
    found = fresh.find(spec)
    assert found is not None and found.remote_id == ref.remote_id != other.remote_id
    assert fresh.submit(spec).remote_id == ref.remote_id
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    assert named(fresh, spec.submit_key) == [ref.remote_id]


def _publish_failed_without_a_reason(document: Path) -> None:
    """What the information system was seen to publish for a job being killed: FAILED, and no Error."""
    text = document.read_text()
    assert "<State>arcrest:KILLED</State>" in text, text
    text = text.replace("<State>arcrest:KILLED</State>", "<State>arcrest:FAILED</State>")
    document.write_text("".join(line for line in text.splitlines(keepends=True) if "<Error>" not in line))


def test_a_killed_job_published_as_failed_with_no_reason_is_cancelled(arc_site, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path)
    ref = harness.run(harness.spec("sleep 60"))
    harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
    backend.cancel(ref)
    assert harness.wait(ref).state is RemoteState.CANCELLED
    (document,) = (arc_site.dir / "control").rglob(f"job.{ref.remote_id}.xml")
    for _ in range(20):  # the provider rewrites the document every few seconds: poll between two rewrites
        _publish_failed_without_a_reason(document)
        published = document.stat().st_mtime_ns
        raw = api.status_of(backend._bulk("info", [ref.remote_id], "reading it raw")[ref.remote_id])
        status = backend.poll([ref])[ref.remote_id]
        if document.stat().st_mtime_ns == published:
            break
    else:
        pytest.fail("the information provider rewrote the job's document during every poll")
    assert (raw.state, raw.message) == (RemoteState.FAILED, api.NO_REASON), "the CE answered as it was seen to"
    assert (status.state, status.message) == (RemoteState.CANCELLED, "Job is canceled by external request")


def test_cleanup_removes_the_job_from_the_ce_and_its_local_folder(arc_site, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path)
    spec = harness.spec("echo bye")
    ref = harness.run(spec)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    backend.cleanup(ref)
    assert not (tmp_path / "work" / spec.submit_key).exists()
    harness.wait(ref, until=lambda s: s.state is RemoteState.UNKNOWN)  # cleaning is queued, then done
    backend.cleanup(ref)  # idempotent


def test_environment_values_and_names_reach_the_job_as_written(arc_site, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path)
    hostile = "</Value><Value>x</Value> & \"quotes\" 'single' $(echo no) ü"
    spec = harness.spec('printf "%s" "$HOSTILE" > env.txt', env={"HOSTILE": hostile})
    ref = harness.run(spec, {"in dir/ä b.txt": b"x"})
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    outputs = {o.relpath: o for o in backend.outputs(ref, spec)}
    assert sorted(outputs) == ["env.txt"], "an unchanged input with an odd name is not an output"
    assert outputs["env.txt"].source.read_text() == hostile


def test_a_subject_the_ce_does_not_map_is_an_auth_error(arc_site, tmp_path):
    subprocess.run(
        ["arcctl", "-c", str(arc_site.dir / "arc.conf"), "test-ca", "--ca-dir", str(arc_site.ca_dir)]
        + ["--ca-id", "syncd", "usercert", "-n", "stranger", "--no-auth", "-f"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    backend, _ = backend_for(
        arc_site,
        tmp_path,
        certificate=str(tmp_path / "client-stranger-cert.pem"),
        key=str(tmp_path / "client-stranger-key.pem"),
    )
    with pytest.raises(AuthError):
        backend.probe()


class RecordingUploads(ArcBackend):
    """Remembers the session paths it PUT through the CE."""

    def _send(self, method, url, what, **kw):
        if method == "PUT":
            self.put_paths = [*getattr(self, "put_paths", []), unquote(url.split("/session/", 1)[1])]
        return super()._send(method, url, what, **kw)


def storage_backend(site: ArcSite, server, tmp_path, spec_of, **overrides):
    """A backend with ``inputs: storage``, a harness, and a spec whose staging area is in a new bucket."""
    backend, harness = backend_for(site, tmp_path, inputs="storage", **overrides)
    recording = RecordingUploads("arc", backend.options, tmp_path / "work")
    harness = replace(harness, backend=recording)
    storage = make_storage(server)
    bucket = server.new_bucket("arc-in")
    spec = spec_of(harness)
    return recording, harness, replace(spec, staging=StagingArea.for_job(storage, bucket, "lab", spec.job_id))


@pytest.mark.s3
def test_inputs_from_the_inbox_storage_are_fetched_by_the_job_not_uploaded_through_the_ce(
    arc_site, seaweedfs, tmp_path
):
    command = 'cat "in dir/ä b.txt" ./-n.txt > joined.txt; echo changed >> ./-n.txt'
    backend, harness, spec = storage_backend(arc_site, seaweedfs, tmp_path, lambda h: h.spec(command))
    assert backend.capabilities.stages_to_storage and backend.check(spec) == []
    files = {"in dir/ä b.txt": b"first\n", "-n.txt": b"second\n", "same.txt": b"left alone\n"}
    ref = harness.run(spec, files)
    assert harness.wait(ref).state is RemoteState.SUCCEEDED
    assert not set(backend.put_paths) & set(files), f"inputs went through the CE: {backend.put_paths}"
    assert all(p.startswith(".syncd/") for p in backend.put_paths)
    staged = {o.key for o in spec.staging.storage.list(spec.staging.bucket, spec.staging.inputs)}
    assert staged == {spec.staging.input_key(name) for name in files}
    outputs = {o.relpath: o.source.read_bytes() for o in backend.outputs(ref, spec)}
    assert outputs == {"joined.txt": b"first\nsecond\n", "-n.txt": b"second\nchanged\n"}, "same.txt is unchanged"


@pytest.mark.s3
def test_an_input_gone_from_the_storage_fails_the_job_with_its_name(arc_site, seaweedfs, tmp_path):
    backend, harness, spec = storage_backend(
        arc_site, seaweedfs, tmp_path, lambda h: h.spec("cat data.txt"), input_url_expiry="2h"
    )
    harness.stage(spec, {"data.txt": b"soon gone\n"})
    (url,) = [p.read_text() for p in (tmp_path / "work").rglob("*.url")]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["7200"], "the URL lives as input_url_expiry says"
    spec.staging.storage.delete(spec.staging.bucket, spec.staging.input_key("data.txt"))
    ref = backend.submit(spec)
    status = harness.wait(ref)
    assert (status.state, status.exit_code) == (RemoteState.FAILED, 121)
    logs = backend.logs(ref)
    assert logs.stderr is not None and "cannot fetch input data.txt" in logs.stderr.read_text()


@pytest.mark.s3
def test_inputs_auto_fetches_from_an_s3_storage_and_uploads_from_a_folder_storage(arc_site, seaweedfs, tmp_path):
    backend, harness = backend_for(arc_site, tmp_path, inputs="auto")
    storage = make_storage(seaweedfs)
    folders = FileStorage("folder", FileStorage.options_model.model_validate({"type": "file", "root": str(tmp_path)}))
    for name, staging_storage, by_url in (("s3", storage, True), ("folder", folders, False)):
        spec = harness.spec("cat data.txt")
        spec = replace(spec, staging=StagingArea.for_job(staging_storage, f"auto-{name}", "lab", spec.job_id))
        harness.stage(spec, {"data.txt": b"auto\n"})
        work = tmp_path / "work" / spec.submit_key
        assert bool(list(work.rglob("*.url"))) is by_url, f"{name}: inputs fetched by URL only from S3"
        assert (next(work.rglob("data.txt"), None) is None) is by_url, f"{name}: uploaded through the CE otherwise"
    storage.close()


@pytest.mark.s3
def test_arex_own_data_staging_cannot_fetch_an_s3_url_presigned_for_get(arc_site, seaweedfs, tmp_path):
    """Why ``inputs: storage`` has the job fetch its inputs: A-REX's data staging asks a source with PROPFIND, then
    HEAD, before it GETs it, and a signature made for GET refuses both. If this starts passing, the CE could fetch
    the inputs itself (a delegation, ``arc_site.delegate()``, and a source URL per input in the description)."""
    storage = make_storage(seaweedfs)
    bucket = seaweedfs.new_bucket("arc-dtr")
    storage.put_file(bucket, "in.txt", _file(tmp_path / "in.txt", b"from s3\n"))
    url = storage.presign(bucket, "in.txt", method="GET", expires=600)
    assert requests.get(url, timeout=10).content == b"from s3\n", "the URL itself works"
    delegation = arc_site.delegate()
    description = api.adl(
        name="dtr-probe", executable="/bin/cat", arguments=["in.txt"], stdout="out", stderr="err", env={}, inputs=[]
    )
    tree = ET.fromstring(description)
    staging = tree.find(f"{{{api.ADL_NS}}}DataStaging")
    assert staging is not None
    wanted = ET.SubElement(staging, f"{{{api.ADL_NS}}}InputFile")
    ET.SubElement(wanted, f"{{{api.ADL_NS}}}Name").text = "in.txt"
    source = ET.SubElement(wanted, f"{{{api.ADL_NS}}}Source")
    ET.SubElement(source, f"{{{api.ADL_NS}}}URI").text = url
    ET.SubElement(source, f"{{{api.ADL_NS}}}DelegationID").text = delegation
    backend, harness = backend_for(arc_site, tmp_path)
    created = api.entries(
        backend._json(
            "POST", "jobs?action=new", "submitting", data=ET.tostring(tree), headers={"Content-Type": "application/xml"}
        )
    )
    ref = RemoteRef(created[0].id, {"key": "dtr-probe"})
    status = harness.wait(ref)
    assert status.state is RemoteState.FAILED
    assert "Failed checking source replica" in status.message, status.message
    assert "Failed to obtain information about file" in status.message, status.message


def _file(path, content: bytes):
    path.write_bytes(content)
    return path
