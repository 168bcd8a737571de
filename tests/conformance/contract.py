"""The backend contract as tests, written once.

A backend's test file provides a ``harness`` fixture (see harness.py) and builds its test class from
``suites(capabilities)``: the suites that match what the backend *declares* it can do. A backend that declares
no exit codes is checked on the wrapper path, one that cancels only queued jobs is checked to refuse a running
one clearly, and so on; nothing is skipped, so a declaration that is wrong fails here. ``TransportFaultContract``
(for backends that talk HTTP) is added by the file, since it depends on how the backend is reached.
"""

from __future__ import annotations

import random

import pytest

from syncd.backends import wrapper
from syncd.backends.base import CancelSupport, Capabilities, LogDelivery, RemoteRef, RemoteState
from syncd.engine.submission import submit_once
from syncd.errors import AuthError, PermanentError, TransientError


class Crash(BaseException):
    """Stands for kill -9: no handler of the backend sees it, nothing after it runs."""


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


def _delivered(harness, ref, spec):
    """The outputs a job delivers (the wrapper's files are syncd's own, never delivered)."""
    return {o.relpath: o for o in harness.backend.outputs(ref, spec) if not wrapper.is_wrapper_path(o.relpath)}


def _exit_code(harness, ref, spec, status) -> int | None:
    """The exit code the engine gets: from the status, or from the wrapper's exit file when the service gives none."""
    if harness.backend.capabilities.exit_codes:
        return status.exit_code
    assert status.exit_code is None, "a backend that declares no exit codes must not report one"
    exit_file = {o.relpath: o for o in harness.backend.outputs(ref, spec)}[wrapper.EXIT_FILE]
    return wrapper.parse_exit_code(exit_file.source.read_text())


class BackendContract:
    """What every backend does, whatever it declares."""

    def test_submit_succeeds_with_known_output_tree(self, harness):
        spec = harness.spec(["python3", "-c", TREE_SCRIPT])
        ref = harness.run(spec, {"notes.txt": b"input\n", "unchanged.txt": b"same\n"})
        status = harness.wait(ref)
        assert status.state is RemoteState.SUCCEEDED, status
        assert _exit_code(harness, ref, spec, status) == 0
        outputs = _delivered(harness, ref, spec)
        assert sorted(outputs) == sorted(
            [
                "notes.txt",
                "out/deep/er/still/leaf.txt",
                "out/empty.dat",
                "out/large.bin",
                "out/Übersicht café.txt",
            ]
        ), "created and changed files are outputs; an unchanged input is not"
        assert outputs["out/empty.dat"].size == 0
        assert outputs["out/large.bin"].source.read_bytes() == random.Random(5).randbytes(3 * 1024 * 1024)
        assert outputs["notes.txt"].source.read_text() == "input\ntouched\n"
        logs = harness.backend.logs(ref)
        assert logs.stdout is not None and "tree written" in logs.stdout.read_text()

    def test_outputs_follow_the_manifest_globs(self, harness):
        spec = harness.spec(
            "mkdir -p a/b && echo 1 > a/b/x.csv && echo 2 > a/y.txt && echo 3 > z.csv", outputs=["**/*.csv"]
        )
        ref = harness.run(spec)
        assert harness.wait(ref).state is RemoteState.SUCCEEDED
        assert sorted(_delivered(harness, ref, spec)) == ["a/b/x.csv", "z.csv"]

    def test_nonzero_exit_fails_with_exit_code_and_logs(self, harness):
        spec = harness.spec("echo to-out; echo to-err >&2; echo partial > partial.txt; exit 3")
        ref = harness.run(spec)
        status = harness.wait(ref)
        assert status.state is RemoteState.FAILED and _exit_code(harness, ref, spec, status) == 3, status
        logs = harness.backend.logs(ref)
        stdout = logs.stdout.read_text()
        if harness.backend.capabilities.separate_stderr:
            assert "to-out" in stdout and "to-err" not in stdout and "to-err" in logs.stderr.read_text()
        else:
            assert "to-out" in stdout and "to-err" in stdout, "merged stderr is in the stdout log"
        assert list(_delivered(harness, ref, spec)) == ["partial.txt"]

    def test_submit_then_crash_finds_the_job_by_key_and_never_runs_it_twice(self, harness):
        counter = harness.scratch / f"runs-{random.getrandbits(32)}.txt"
        spec = harness.spec(f"echo run >> {counter}; sleep 1")
        ref = harness.run(spec)
        fresh = harness.new_backend()  # the daemon restarted: nothing in memory survives
        found = fresh.find(spec)
        assert found is not None and found.remote_id == ref.remote_id and found.complete
        again = fresh.submit(spec)  # a retried submit of the same key is idempotent
        assert again.remote_id == ref.remote_id
        assert harness.wait(found, backend=fresh).state is RemoteState.SUCCEEDED
        assert counter.read_text() == "run\n", "the job ran more than once"

    def test_killed_after_the_service_accepted_before_anything_was_recorded_the_job_runs_once(
        self, harness, monkeypatch
    ):
        counter = harness.scratch / f"runs-{random.getrandbits(32)}.txt"
        spec = harness.spec(f"echo run >> {counter}")
        harness.stage(spec)
        name, is_accept = harness.accepts
        accepted = getattr(harness.backend, name)

        def accept_then_die(*args, **kwargs):
            answer = accepted(*args, **kwargs)
            if is_accept(*args, **kwargs):
                raise Crash
            return answer

        monkeypatch.setattr(harness.backend, name, accept_then_die)
        with pytest.raises(Crash):
            submit_once(harness.backend, spec)
        fresh = harness.new_backend()  # the restarted daemon: the engine's step again, on what survived
        ref, _ = submit_once(fresh, spec)
        assert harness.wait(ref, backend=fresh).state is RemoteState.SUCCEEDED
        assert counter.read_text() == "run\n", "the job ran more than once"

    def test_find_before_submit_reports_nothing(self, harness):
        spec = harness.spec("true")
        harness.stage(spec)
        assert harness.backend.find(spec) is None

    def test_poll_many_jobs_in_one_batch_or_one_request_each(self, harness):
        refs = [harness.run(harness.spec(f"exit {i % 3}")) for i in range(8)]
        for ref in refs:
            harness.wait(ref)
        before = harness.request_count() if harness.request_count else None
        statuses = harness.backend.poll(refs)
        if before is not None:
            expected = 1 if harness.backend.capabilities.batched_poll else len(refs)
            assert harness.request_count() - before == expected, "batched_poll says how many requests a poll sends"
        assert [statuses[r.remote_id].state for r in refs] == [
            RemoteState.SUCCEEDED if i % 3 == 0 else RemoteState.FAILED for i in range(8)
        ]

    def test_poll_unknown_ref_is_reported_unknown_not_raised(self, harness):
        ghost = harness.ghost_ref(harness)
        status = harness.backend.poll([ghost])[ghost.remote_id]
        assert status.state is RemoteState.UNKNOWN

    def test_resources_outside_the_declared_ones_are_refused_at_check(self, harness):
        unsupported = sorted({"cpus", "memory", "walltime", "gpus"} - harness.backend.capabilities.resources)
        problems = harness.backend.check(harness.spec("true", resources={name: 1 for name in unsupported}))
        assert sorted(p.split(":", 1)[0] for p in problems) == [f"resources.{name}" for name in unsupported]


class CancelAnytimeContract:
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


class CancelWhileQueuedContract:
    def test_cancel_of_a_running_job_is_refused_clearly_and_the_job_runs_on(self, harness):
        spec = harness.spec("sleep 1; echo done > done.txt")
        ref = harness.run(spec)
        harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
        with pytest.raises(PermanentError):
            harness.backend.cancel(ref)
        assert harness.wait(ref).state is RemoteState.SUCCEEDED


class CancelNeverContract:
    def test_cancel_is_refused_clearly(self, harness):
        ref = harness.run(harness.spec("sleep 1"))
        with pytest.raises(PermanentError):
            harness.backend.cancel(ref)
        assert harness.wait(ref).state is RemoteState.SUCCEEDED


class NativeTimeoutContract:
    def test_timeout_stops_the_job_and_reports_timed_out(self, harness):
        spec = harness.spec("sleep 60", timeout=1.0)
        ref = harness.run(spec)
        status = harness.wait(ref)
        assert status.state is RemoteState.TIMED_OUT, status


class WrapperExitCodeContract:
    def test_an_argument_list_reaches_the_command_byte_for_byte_through_the_wrapper(self, harness):
        tricky = "a b'c\"$(echo no)`echo no`\n\n"
        spec = harness.spec(["sh", "-c", 'printf "%s" "$1" > arg.txt; exit 7', "x", tricky])
        ref = harness.run(spec)
        status = harness.wait(ref)
        assert _exit_code(harness, ref, spec, status) == 7
        assert _delivered(harness, ref, spec)["arg.txt"].source.read_text() == tricky


class StreamedLogsContract:
    def test_logs_are_readable_while_the_job_runs(self, harness):
        spec = harness.spec("echo early; sleep 30")
        ref = harness.run(spec)
        harness.wait(ref, until=lambda s: s.state is RemoteState.RUNNING)
        harness.wait_for(
            lambda: (logs := harness.backend.logs(ref)).stdout is not None and "early" in logs.stdout.read_text()
        )
        harness.backend.cancel(ref)


def suites(capabilities: Capabilities) -> tuple[type, ...]:
    """The contract suites a backend with these declared capabilities must pass."""
    found: list[type] = [BackendContract]
    found.append(
        {
            CancelSupport.ALWAYS: CancelAnytimeContract,
            CancelSupport.WHILE_QUEUED: CancelWhileQueuedContract,
            CancelSupport.NEVER: CancelNeverContract,
        }[capabilities.cancel]
    )
    if capabilities.native_timeout:
        found.append(NativeTimeoutContract)
    if not capabilities.exit_codes:
        found.append(WrapperExitCodeContract)
    if capabilities.logs is LogDelivery.STREAMED and capabilities.cancel is CancelSupport.ALWAYS:
        found.append(StreamedLogsContract)
    return tuple(found)


class TransportFaultContract:
    """Needs ``harness_faults``: a fixture giving (harness, FaultProxy) with the backend behind the proxy."""

    @pytest.mark.parametrize(
        "fault",
        [("status", 500), ("status", 502), ("status", 503), ("status", 429), "reset", "hang", "garbage", "truncated"],
    )
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
