"""The ARC backend's own cases against a real A-REX: what the conformance suite does not ask of every backend."""

from __future__ import annotations

import json
import subprocess

import pytest

from syncd.backends.arc import ArcBackend, ArcOptions, api
from syncd.backends.base import RemoteState
from syncd.errors import AuthError, TransientError
from tests.conformance.harness import Harness
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
