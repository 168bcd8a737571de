"""Jobs through the real daemon: names, nesting, binary outputs, slow copies, failures, rejections."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from tests.support.harness import drop_job, read_result, wait_for

pytestmark = pytest.mark.e2e


def test_run_names_with_spaces_and_non_ascii_deliver_to_their_own_folder(daemon):
    name = "Messung Öl 2026 — été"
    drop_job(
        daemon.inbox,
        name,
        {"command": "cat 'données brutes.txt' > 'résultat final.txt'"},
        {"données brutes.txt": "ça marche\n"},
    )
    result = daemon.result(name)
    assert result["state"] == "succeeded", result
    assert (daemon.outbox / "results" / name / "résultat final.txt").read_text() == "ça marche\n"


def test_run_nested_inputs_and_outputs_keep_their_relative_paths(daemon):
    files = {f"data/level{i}/part{i}.txt": f"payload {i}\n" for i in range(3)}
    files["data/deep/er/still/file.csv"] = "a,b\n"
    command = (
        "mkdir -p out/x/y && cat data/*/part*.txt > out/x/y/all.txt && cp data/deep/er/still/file.csv out/copy.csv"
    )
    drop_job(daemon.inbox, "nested", {"command": command}, files)
    result = daemon.result("nested")
    out = daemon.outbox / "results" / "nested"
    assert result["state"] == "succeeded"
    assert (out / "out/x/y/all.txt").read_text() == "payload 0\npayload 1\npayload 2\n"
    assert (out / "out/copy.csv").read_text() == "a,b\n"
    assert sorted(o["path"] for o in result["outputs"]) == ["out/copy.csv", "out/x/y/all.txt"]


def test_run_binary_output_of_5_mib_arrives_byte_for_byte(daemon):
    command = [
        "python3",
        "-c",
        "import random; r = random.Random(7); open('blob.bin', 'wb').write(r.randbytes(5 * 1024 * 1024))",
    ]
    drop_job(daemon.inbox, "binary", {"command": command})
    result = daemon.result("binary")
    import random

    expected = random.Random(7).randbytes(5 * 1024 * 1024)
    delivered = (daemon.outbox / "results" / "binary" / "blob.bin").read_bytes()
    assert result["state"] == "succeeded"
    assert hashlib.sha256(delivered).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_run_slow_copy_straight_into_the_inbox_does_not_start_early(config_factory):
    from tests.support.harness import SyncdProcess

    site = config_factory(settle="1.5s")
    daemon = SyncdProcess(site).start()
    try:
        job = daemon.inbox / "slow"
        job.mkdir()
        (job / "job.yaml").write_text('command: "wc -l < data.txt > count.txt"\n')
        with open(job / "data.txt", "w") as out:  # a copy that trickles in, like a slow network drive
            for line in range(8):
                out.write(f"line {line}\n")
                out.flush()
                time.sleep(0.4)
                assert (job / "job.yaml").exists(), "claimed while the copy was still being written"
        result = daemon.result("slow")
        assert result["state"] == "succeeded"
        assert (daemon.outbox / "results" / "slow" / "count.txt").read_text().strip() == "8"
    finally:
        daemon.stop()


def test_run_ready_marker_skips_the_settle_wait(config_factory):
    from tests.support.harness import SyncdProcess

    site = config_factory(settle="30s")
    daemon = SyncdProcess(site).start()
    try:
        drop_job(daemon.inbox, "quick", {"command": "echo ok > ok.txt"}, {".ready": ""})
        result = daemon.result("quick", timeout=20)
        assert result["state"] == "succeeded"
    finally:
        daemon.stop()


def test_run_failing_command_delivers_exit_code_stderr_and_outputs(daemon):
    command = "echo partial > partial.txt; echo 'something broke' >&2; exit 3"
    drop_job(daemon.inbox, "broken", {"command": command})
    result = daemon.result("broken")
    out = daemon.outbox / "results" / "broken"
    assert result["state"] == "failed"
    assert result["exit_code"] == 3
    assert "something broke" in (out / "syncd-stderr.txt").read_text()
    assert (out / "partial.txt").read_text() == "partial\n"


BAD_MANIFESTS = {
    "invalid-yaml": ("command: [unclosed\n", "not valid YAML"),
    "missing-command": ("name: nothing-to-do\n", "command: required"),
    "unknown-key": ("command: 'true'\ncomand2: x\n", "unknown key 'comand2'"),
    "wrong-type": ("command: 'true'\nretries: many\n", "retries"),
    "escaping-glob": ("command: 'true'\ninputs: ['../secret.txt']\n", "'..' would leave the job directory"),
    "absolute-glob": ("command: 'true'\ninputs: ['/etc/passwd']\n", "absolute paths are not allowed"),
    "not-a-mapping": ("- just\n- a list\n", "must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_run_bad_manifest_is_rejected_with_report_and_files_kept(daemon, case):
    text, expected = BAD_MANIFESTS[case]
    drop_job(daemon.inbox, case, text, {"input.dat": b"\x00\x01keep me"})
    failed = daemon.root / "failed" / case
    wait_for(lambda: (failed / "syncd-error.json").exists(), timeout=20, what=f"{case} to be rejected")
    assert (failed / "job.yaml").read_text() == text, "the user's manifest must be untouched"
    assert (failed / "input.dat").read_bytes() == b"\x00\x01keep me"
    report = json.loads((failed / "syncd-error.json").read_text())
    assert report["state"] == "rejected"
    assert any(expected in problem for problem in report["problems"]), report["problems"]
    error_text = (failed / "ERROR.txt").read_text()
    assert expected in error_text and "move this folder back into the inbox" in error_text
    assert not (daemon.outbox / "results" / case).exists(), "a rejected job is never run"
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert [j["state"] for j in status if j["name"] == case] == ["rejected"]


def test_run_symlink_to_a_file_outside_is_rejected_and_never_copied(daemon, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    staging = daemon.root / "staging-link"
    staging.mkdir()
    (staging / "job.yaml").write_text('command: "cat link.txt > leaked.txt"\n')
    os.symlink(secret, staging / "link.txt")
    os.rename(staging, daemon.inbox / "link-job")
    failed = daemon.root / "failed" / "link-job"
    wait_for(lambda: (failed / "syncd-error.json").exists(), timeout=20, what="rejection")
    assert "leads outside the job directory" in (failed / "ERROR.txt").read_text()
    assert os.readlink(failed / "link.txt") == str(secret), "the user's link is kept as it was"
    for root, _dirs, files in os.walk(daemon.root):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and name != "syncd.db" and not name.endswith((".log", "-wal", "-shm")):
                with open(path, "rb") as handle:
                    assert b"TOP-SECRET-CONTENT" not in handle.read(), f"secret copied into {path}"


def test_run_same_name_twice_gets_a_second_folder_and_never_overwrites(daemon):
    drop_job(daemon.inbox, "twin", {"command": "echo first > which.txt"})
    first = daemon.result("twin")
    drop_job(daemon.inbox, "twin", {"command": "echo second > which.txt"})
    second = daemon.result("twin-2")
    assert (daemon.outbox / "results" / "twin" / "which.txt").read_text() == "first\n"
    assert (daemon.outbox / "results" / "twin-2" / "which.txt").read_text() == "second\n"
    assert first["id"] != second["id"]
    assert second["folder"] == "twin-2" and "twin/" in second["note"]
    assert read_result(daemon.outbox / "results" / "twin") == first


def test_run_many_jobs_respect_max_parallel_and_all_finish(config_factory):
    from tests.support.harness import SyncdProcess

    site = config_factory(max_parallel=2)
    daemon = SyncdProcess(site).start()
    try:
        marker_dir = daemon.root / "concurrency"
        marker_dir.mkdir()
        command = (
            f"touch {marker_dir}/$SYNCD_JOB_ID; ls {marker_dir} | wc -l > seen.txt; sleep 0.5; "
            f"rm {marker_dir}/$SYNCD_JOB_ID"
        )
        for i in range(6):
            drop_job(daemon.inbox, f"par{i}", {"command": command})
        results = [daemon.result(f"par{i}", timeout=60) for i in range(6)]
        assert all(r["state"] == "succeeded" for r in results)
        peaks = [int((daemon.outbox / "results" / f"par{i}" / "seen.txt").read_text()) for i in range(6)]
        assert max(peaks) <= 2, f"more than max_parallel jobs ran at once: {peaks}"
    finally:
        daemon.stop()


def test_run_sigterm_leaves_running_job_running_and_restart_collects_it(config_factory):
    from tests.support.harness import SyncdProcess

    site = config_factory()
    daemon = SyncdProcess(site).start()
    drop_job(daemon.inbox, "survivor", {"command": "sleep 3; echo done > done.txt"})
    wait_for(lambda: "submitted to backend" in daemon.log(), timeout=20, what="submission")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10, "SIGTERM must stop syncd within a few seconds"
    again = SyncdProcess(site).start()
    try:
        result = again.result("survivor", timeout=30)
        assert result["state"] == "succeeded"
        assert (again.outbox / "results" / "survivor" / "done.txt").read_text() == "done\n"
    finally:
        again.stop()
