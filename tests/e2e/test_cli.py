"""The ``syncd`` command line, run as a user runs it: a real process, real files, a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.harness import (
    SYNCD,
    SyncdProcess,
    drop_job,
    make_config,
    make_job,
    read_result,
    wait_for,
)

pytestmark = pytest.mark.e2e


def syncd(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``syncd ARGS`` with ``env`` as the whole environment (default: ours without SYNCD_CONFIG)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"}
    return subprocess.run([*SYNCD, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def job_state(config: Path, ref: str) -> str | None:
    done = syncd("status", "--json", "-c", str(config), ref)
    return json.loads(done.stdout)[0]["state"] if done.returncode == 0 else None


def pids_matching(marker: str) -> list[int]:
    done = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def alive(pid: int) -> bool:
    """True while ``pid`` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- syncd validate -------------------------------------------------------------------------------


def test_validate_accepts_valid_job_directory(tmp_path):
    job = make_job(
        tmp_path, "ok", {"command": "wc -l data/in.txt > count.txt", "timeout": "5m"}, {"data/in.txt": "a\nb\n"}
    )
    done = syncd("validate", str(job))
    assert done.returncode == 0, output(done)
    assert "valid job 'ok' with 1 input file(s)" in done.stdout


def test_validate_rejects_unknown_key_naming_line_and_known_keys(tmp_path):
    job = make_job(tmp_path, "typo", "command: echo hi\ntimeot: 5m\n")
    done = syncd("validate", str(job))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert str(job) in text
    assert "job.yaml:2" in text and "'timeot'" in text
    assert "unknown key" in text and "known keys:" in text and "timeout" in text.split("known keys:")[1]


def test_validate_rejects_missing_command_with_example(tmp_path):
    job = make_job(tmp_path, "nocmd", "name: nocmd\ntimeout: 5s\n")
    done = syncd("validate", str(job))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert "job.yaml" in text and "command" in text
    assert "required but missing" in text and 'e.g. command: "python run.py"' in text


def test_validate_rejects_symlink_leading_outside(tmp_path):
    (tmp_path / "secret.txt").write_text("not yours\n")
    job = make_job(tmp_path, "escape", {"command": "cat data.txt"}, {"ok.txt": "fine\n"})
    (job / "data.txt").symlink_to("../secret.txt")
    done = syncd("validate", str(job))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert "data.txt" in text and "../secret.txt" in text
    assert "outside the job directory" in text and "copy the file into the job directory" in text


def test_validate_rejects_input_glob_escaping_with_dotdot(tmp_path):
    job = make_job(tmp_path, "dotdot", {"command": "true", "inputs": ["../other/*.txt"]})
    done = syncd("validate", str(job))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert "job.yaml:" in text and "inputs" in text and "'..' would leave the job directory" in text


def test_validate_rejects_folder_without_job_yaml_saying_it_is_missing(tmp_path):
    job = make_job(tmp_path, "nomanifest", None, {"data.txt": "x\n"})
    done = syncd("validate", str(job))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert "job.yaml" in text
    assert "missing" in text or "no job.yaml" in text or "not found" in text, (
        f"a folder without job.yaml should be told it is missing, not that it is a folder or a link:\n{text}"
    )
    assert "command" in text, "the message should say what to write, e.g. command: ..."


def test_validate_accepts_valid_config(tmp_path):
    config = make_config(tmp_path / "site")
    done = syncd("validate", str(config))
    assert done.returncode == 0, output(done)
    assert "valid config with 1 inbox(es)" in done.stdout


def test_validate_rejects_invalid_config_with_file_line_and_dotted_path(tmp_path):
    config = make_config(tmp_path / "site")
    lines = config.read_text().splitlines()
    settle_line = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("settle:"))
    config.write_text(config.read_text().replace("settle:", "settel:"))
    done = syncd("validate", str(config))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert f"{config}:{settle_line}: inboxes.0.settel: unknown key 'settel'" in text
    assert "check its spelling or remove it" in text


def test_validate_rejects_config_naming_undefined_backend(tmp_path):
    config = make_config(tmp_path / "site", backend="slurm")
    done = syncd("validate", str(config))
    assert done.returncode == 1, output(done)
    assert f"{config}:" in done.stdout and "inboxes.0.backend: no backend named 'slurm'; defined: local" in done.stdout


# -- a finished site shared by the read-only commands (status, logs, ambiguous names) ------------------


@pytest.fixture(scope="module")
def finished_site(tmp_path_factory):
    """A daemon that has run 'greet' (prints to stdout and stderr), 'nonl' (no final newlines), two 'twin's."""
    config = make_config(tmp_path_factory.mktemp("cli") / "site")
    daemon = SyncdProcess(config).start()
    try:
        drop_job(daemon.inbox, "greet", {"command": "echo GREET_STDOUT_LINE; echo GREET_STDERR_LINE >&2"})
        drop_job(daemon.inbox, "twin", {"command": "echo first"})
        drop_job(daemon.inbox, "nonl", {"command": "printf NO_TRAILING_NEWLINE; printf ERR_NO_NEWLINE >&2"})
        daemon.result("greet")
        daemon.result("nonl")
        daemon.result("twin")
        drop_job(daemon.inbox, "twin", {"command": "echo second"})
        daemon.result("twin-2")
        yield daemon
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_status_reads_syncd_yaml_in_current_directory(finished_site):
    done = syncd("status", "--json", cwd=finished_site.root)
    assert done.returncode == 0, output(done)
    assert "greet" in {job["name"] for job in json.loads(done.stdout)}


def test_status_reads_config_from_syncd_config_env_before_current_directory(finished_site, tmp_path):
    # The current directory has a syncd.yaml of its own (never run); $SYNCD_CONFIG must win over it.
    make_config(tmp_path / "other")
    env = {**{k: v for k, v in os.environ.items() if k != "SYNCD_CONFIG"}, "SYNCD_CONFIG": str(finished_site.config)}
    done = syncd("status", "--json", cwd=tmp_path / "other", env=env)
    assert done.returncode == 0, output(done)
    assert "greet" in {job["name"] for job in json.loads(done.stdout)}


def test_status_without_config_names_the_missing_syncd_yaml(tmp_path):
    done = syncd("status", cwd=tmp_path)
    assert done.returncode != 0
    assert str(tmp_path / "syncd.yaml") in done.stderr and "syncd init" in done.stderr


def test_status_json_of_one_job_includes_events(finished_site):
    done = syncd("status", "--json", "-c", str(finished_site.config), "greet")
    assert done.returncode == 0, output(done)
    [job] = json.loads(done.stdout)
    assert job["name"] == "greet" and job["state"] == "succeeded" and job["exit_code"] == 0
    changes = [(e["from"], e["to"]) for e in job["events"] if e["to"]]
    assert changes[-1][1] == "succeeded"
    assert {"claimed", "staging", "submitted", "collecting", "succeeded"} <= {to for _, to in changes}
    assert all(e["at"] and isinstance(e["message"], str) for e in job["events"])


def test_status_without_state_says_to_start_the_daemon(tmp_path):
    config = make_config(tmp_path / "fresh")
    done = syncd("status", "-c", str(config))
    assert done.returncode == 1, output(done)
    assert "no state yet" in done.stderr and f"syncd run -c {config}" in done.stderr
    assert not (tmp_path / "fresh" / ".state" / "syncd.db").exists(), "status must not create the state"


def test_cancel_of_ambiguous_name_lists_the_ids(finished_site):
    jobs = json.loads(syncd("status", "--json", "-c", str(finished_site.config)).stdout)
    twin_ids = [j["id"] for j in jobs if j["name"] == "twin"]
    assert len(twin_ids) == 2
    done = syncd("cancel", "-c", str(finished_site.config), "twin")
    assert done.returncode == 1, output(done)
    assert "2 jobs are named 'twin'" in done.stderr
    for job_id in twin_ids:
        assert job_id in done.stderr
    for job_id in twin_ids:  # nothing was requested of either job
        [job] = json.loads(syncd("status", "--json", "-c", str(finished_site.config), job_id).stdout)
        assert not [e for e in job["events"] if "cancel" in e["message"]], job["events"]


def test_status_by_id_picks_one_of_two_jobs_with_the_same_name(finished_site):
    jobs = json.loads(syncd("status", "--json", "-c", str(finished_site.config)).stdout)
    first = next(j for j in jobs if j["name"] == "twin")
    done = syncd("status", "--json", "-c", str(finished_site.config), first["id"])
    assert done.returncode == 0, output(done)
    assert [j["id"] for j in json.loads(done.stdout)] == [first["id"]]


def test_logs_prints_events_then_stdout_and_stderr(finished_site):
    done = syncd("logs", "-c", str(finished_site.config), "greet")
    assert done.returncode == 0, output(done)
    text = done.stdout
    assert "claimed from" in text and "→ succeeded" in text
    assert "----- stdout" in text and "GREET_STDOUT_LINE" in text
    assert "----- stderr" in text and "GREET_STDERR_LINE" in text
    assert (
        text.index("→ succeeded")
        < text.index("----- stdout")
        < text.index("GREET_STDOUT_LINE")
        < text.index("----- stderr")
        < text.index("GREET_STDERR_LINE")
    )


def test_logs_starts_each_stream_header_on_its_own_line(finished_site):
    done = syncd("logs", "-c", str(finished_site.config), "nonl")
    assert done.returncode == 0, output(done)
    lines = done.stdout.splitlines()
    assert any(line.startswith("----- stdout") for line in lines)
    assert any(line.startswith("----- stderr") for line in lines), (
        f"stdout without a final newline runs into the stderr header:\n{done.stdout}"
    )
    assert "NO_TRAILING_NEWLINE" in lines and "ERR_NO_NEWLINE" in lines
    assert done.stdout.endswith("\n")


def test_logs_of_unknown_job_says_how_to_list_jobs(finished_site):
    done = syncd("logs", "-c", str(finished_site.config), "no-such-job")
    assert done.returncode == 1
    assert "no job with id or name 'no-such-job'" in done.stderr and "syncd status" in done.stderr


# -- commands that act on a running daemon --------------------------------------------------------------


def test_cancel_stops_running_job_and_kills_its_process_group(daemon):
    marker = f"MARKER_{uuid.uuid4().hex}"
    drop_job(daemon.inbox, "long", {"command": f"sleep 60; echo {marker}"})
    [shell] = wait_for(lambda: pids_matching(marker), timeout=15, what="the job's shell to start")
    [sleeper] = wait_for(lambda: children(shell), timeout=5, what="the job's sleep to start")
    wait_for(lambda: job_state(daemon.config, "long") == "running", timeout=10, what="state running")
    done = syncd("cancel", "-c", str(daemon.config), "long")
    assert done.returncode == 0, output(done)
    assert "cancel requested" in done.stdout
    result = daemon.result("long", timeout=20)
    assert result["state"] == "cancelled"
    folder = daemon.outbox / "results" / "long"
    assert (folder / "syncd-stdout.txt").read_text() == ""  # the echo after sleep never ran
    wait_for(lambda: not pids_matching(marker), timeout=10, what="the job's shell to be gone")
    wait_for(lambda: not alive(sleeper), timeout=10, what="the job's sleep to be gone")
    assert job_state(daemon.config, "long") == "cancelled"


def test_retry_reruns_failed_job_into_new_folder(daemon):
    # Fails on attempt 1, succeeds on attempt 2: the re-run really ran the command again.
    command = 'echo "attempt $SYNCD_ATTEMPT" > out.txt; test "$SYNCD_ATTEMPT" = 2'
    drop_job(daemon.inbox, "flaky", {"command": command})
    first = daemon.result("flaky")
    assert first["state"] == "failed" and first["exit_code"] == 1 and first["attempts"] == 1
    first_folder = daemon.outbox / "results" / "flaky"
    first_record = (first_folder / "syncd-result.json").read_bytes()
    done = syncd("retry", "-c", str(daemon.config), "flaky")
    assert done.returncode == 0, output(done)
    second = daemon.result("flaky-2")
    assert second["state"] == "succeeded" and second["exit_code"] == 0
    assert second["attempts"] == 2 and second["id"] == first["id"] and second["folder"] == "flaky-2"
    assert (daemon.outbox / "results" / "flaky-2" / "out.txt").read_text() == "attempt 2\n"
    assert (first_folder / "syncd-result.json").read_bytes() == first_record
    assert (first_folder / "out.txt").read_text() == "attempt 1\n"
    assert read_result(first_folder)["attempts"] == 1


def test_timeout_in_manifest_ends_job_timed_out(daemon):
    marker = f"MARKER_{uuid.uuid4().hex}"
    drop_job(daemon.inbox, "slow", {"command": f"sleep 30; echo {marker}", "timeout": "1s"})
    result = daemon.result("slow", timeout=20)
    assert result["state"] == "timed_out"
    assert result["exit_code"] != 0
    assert not pids_matching(marker), "the timed-out command is stopped"
    assert job_state(daemon.config, "slow") == "timed_out"


def test_validate_given_the_manifest_file_checks_its_job_directory(tmp_path):
    job = make_job(tmp_path, "by-file", "command: echo hi\ntimeout: 0s\n")
    done = syncd("validate", str(job / "job.yaml"))
    assert done.returncode == 1, output(done)
    text = output(done)
    assert "storages" not in text, "a manifest must not be checked as a daemon config"
    assert "job.yaml:2: timeout: must be more than 0, e.g. 30s or 2h" in text
