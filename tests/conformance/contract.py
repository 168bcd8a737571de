"""The backend contract as tests, written once. Each backend's test file subclasses these mixins
and provides a ``harness`` fixture (see harness.py). Mixins are chosen by capability:
``BackendContract`` for every backend, ``NativeTimeoutContract`` for backends that stop a job at
its timeout themselves, ``TransportFaultContract`` for backends that talk over HTTP.
"""

from __future__ import annotations

import random

import pytest

from syncd.backends.base import RemoteRef, RemoteState
from syncd.errors import AuthError, PermanentError, TransientError

TREE_SCRIPT = r"""
import os, random
os.makedirs("out/deep/er/still", exist_ok=True)
open("out/deep/er/still/leaf.txt", "w").write("leaf\n")
open("out/Übersicht café.txt", "w", encoding="utf-8").write("non-ascii\n")
open("out/empty.dat", "wb").close()
open("out/large.bin", "wb").write(random.Random(5).randbytes(3 * 1024 * 1024))
open("notes.txt", "a").write("touched\n")
print("tree written")
"""


class BackendContract:
    def test_submit_succeeds_with_known_output_tree(self, harness):
        spec = harness.spec(["python3", "-c", TREE_SCRIPT])
        ref = harness.run(spec, {"notes.txt": b"input\n", "unchanged.txt": b"same\n"})
        status = harness.wait(ref)
        assert status.state is RemoteState.SUCCEEDED, status
        assert status.exit_code == 0
        outputs = {o.relpath: o for o in harness.backend.outputs(ref, spec)}
        assert sorted(outputs) == sorted([
            "notes.txt", "out/deep/er/still/leaf.txt", "out/empty.dat", "out/large.bin", "out/Übersicht café.txt",
        ]), "created and changed files are outputs; an unchanged input is not"
        assert outputs["out/empty.dat"].size == 0
        assert outputs["out/large.bin"].source.read_bytes() == random.Random(5).randbytes(3 * 1024 * 1024)
        assert outputs["notes.txt"].source.read_text() == "input\ntouched\n"
        logs = harness.backend.logs(ref)
        assert logs.stdout is not None and "tree written" in logs.stdout.read_text()

    def test_outputs_follow_the_manifest_globs(self, harness):
        spec = harness.spec("mkdir -p a/b && echo 1 > a/b/x.csv && echo 2 > a/y.txt && echo 3 > z.csv",
                            outputs=["**/*.csv"])
        ref = harness.run(spec)
        assert harness.wait(ref).state is RemoteState.SUCCEEDED
        assert sorted(o.relpath for o in harness.backend.outputs(ref, spec)) == ["a/b/x.csv", "z.csv"]

    def test_nonzero_exit_fails_with_exit_code_and_logs(self, harness):
        spec = harness.spec("echo to-out; echo to-err >&2; echo partial > partial.txt; exit 3")
        ref = harness.run(spec)
        status = harness.wait(ref)
        assert status.state is RemoteState.FAILED and status.exit_code == 3, status
        logs = harness.backend.logs(ref)
        assert "to-out" in logs.stdout.read_text() and "to-err" in logs.stderr.read_text()
        assert [o.relpath for o in harness.backend.outputs(ref, spec)] == ["partial.txt"]

    def test_cancel_running_job_twice_and_after_it_ended_is_harmless(self, harness):
        spec = harness.spec("echo started; sleep 120")
        ref = harness.run(spec)
        harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
        harness.backend.cancel(ref)
        harness.backend.cancel(ref)
        status = harness.wait(ref)
        assert status.state is RemoteState.CANCELLED, status
        harness.backend.cancel(ref)  # after the end: no error
        assert harness.backend.poll([ref])[ref.remote_id].state is RemoteState.CANCELLED

    def test_submit_then_crash_finds_the_job_by_key_and_never_runs_it_twice(self, harness):
        counter = harness.scratch / f"runs-{random.getrandbits(32)}.txt"
        spec = harness.spec(f"echo run >> {counter}; sleep 1")
        ref = harness.run(spec)
        fresh = harness.new_backend()  # the daemon restarted: nothing in memory survives
        found = fresh.find(spec)
        assert found is not None and found.remote_id == ref.remote_id
        again = fresh.submit(spec)  # a retried submit of the same key is idempotent
        assert again.remote_id == ref.remote_id
        assert harness.wait(found, backend=fresh).state is RemoteState.SUCCEEDED
        assert counter.read_text() == "run\n", "the job ran more than once"

    def test_find_before_submit_reports_nothing(self, harness):
        spec = harness.spec("true")
        harness.stage(spec)
        assert harness.backend.find(spec) is None

    def test_poll_many_jobs_in_one_batch(self, harness):
        refs = [harness.run(harness.spec(f"exit {i % 3}")) for i in range(8)]
        for ref in refs:
            harness.wait(ref)
        before = harness.request_count() if harness.request_count else None
        statuses = harness.backend.poll(refs)
        if before is not None:
            assert harness.request_count() - before == 1, "one poll request must cover every job"
        assert [statuses[r.remote_id].exit_code for r in refs] == [i % 3 for i in range(8)]
        assert [statuses[r.remote_id].state for r in refs] == [
            RemoteState.SUCCEEDED if i % 3 == 0 else RemoteState.FAILED for i in range(8)]

    def test_poll_unknown_id_is_reported_unknown_not_raised(self, harness):
        ghost = RemoteRef("999999", {"dir": str(harness.scratch / "nowhere"), "key": "syncd-ghost"})
        status = harness.backend.poll([ghost])["999999"]
        assert status.state is RemoteState.UNKNOWN


class NativeTimeoutContract:
    def test_timeout_stops_the_job_and_reports_timed_out(self, harness):
        spec = harness.spec("sleep 60", timeout=1.0)
        ref = harness.run(spec)
        status = harness.wait(ref)
        assert status.state is RemoteState.TIMED_OUT, status


class TransportFaultContract:
    """Needs ``harness_faults``: a fixture giving (harness, FaultProxy) with the backend behind the proxy."""

    @pytest.mark.parametrize("fault", [("status", 500), ("status", 502), ("status", 503), ("status", 429),
                                       "reset", "hang", "garbage", "truncated"])
    def test_transport_faults_are_transient(self, harness_faults, fault):
        harness, proxy = harness_faults
        ref = harness.run(harness.spec("true"))
        proxy.inject(fault)
        with pytest.raises(TransientError):
            harness.backend.poll([ref])
        assert harness.wait(ref).state is RemoteState.SUCCEEDED, "the next request goes through"

    def test_retry_after_is_passed_on(self, harness_faults):
        harness, proxy = harness_faults
        proxy.inject(("status", 429))
        with pytest.raises(TransientError) as caught:
            harness.backend.poll([RemoteRef("1", {})])
        assert caught.value.retry_after == 1.0

    @pytest.mark.parametrize("code", [400, 404, 422])
    def test_client_errors_are_permanent(self, harness_faults, code):
        harness, proxy = harness_faults
        proxy.inject(("status", code))
        with pytest.raises(PermanentError) as caught:
            harness.backend.poll([RemoteRef("1", {})])
        assert not isinstance(caught.value, AuthError)

    @pytest.mark.parametrize("code", [401, 403])
    def test_refused_credentials_are_auth_errors(self, harness_faults, code):
        harness, proxy = harness_faults
        proxy.inject(("status", code), times=2)
        with pytest.raises(AuthError):
            harness.backend.poll([RemoteRef("1", {})])
