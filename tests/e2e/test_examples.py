"""examples/local, used as its README says: copy the config, run syncd on it, move each sample job in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.harness import SYNCD, SyncdProcess

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "local"
EXAMPLE_JOBS = sorted(p for p in (EXAMPLES / "jobs").iterdir() if p.is_dir())
RUNTIME_FOLDERS = ("inbox", "outbox", "failed", "buckets", ".state")
SYNCD_FILES = {"syncd-stdout.txt", "syncd-stderr.txt", "syncd-result.json"}


def _copy_example(dest: Path) -> Path:
    """Copy examples/local without anything a local run of the example may have left in it."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        if Path(directory) == EXAMPLES:
            return [n for n in names if n in RUNTIME_FOLDERS or re.fullmatch(r"syncd-\w+\.log", n)]
        return []

    shutil.copytree(EXAMPLES, dest, ignore=ignore)
    return dest


def _delivered(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - SYNCD_FILES


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The example copied and running, with every sample job moved into its inbox; yields (daemon, site)."""
    site = _copy_example(tmp_path_factory.mktemp("examples") / "local")
    config = site / "syncd.yaml"
    text, replaced = re.subn(r"(?m)^(\s+settle:\s*)\S+", r"\g<1>0.3s", config.read_text())
    assert replaced == 1, "the example config has one settle: key"
    config.write_text(text)
    daemon = SyncdProcess(config).start()
    try:
        staging = site.parent / "staging"
        staging.mkdir()
        for job in EXAMPLE_JOBS:
            shutil.copytree(site / "jobs" / job.name, staging / job.name)  # cp -r jobs/<job> .
            os.rename(staging / job.name, daemon.inbox / job.name)  # && mv <job> inbox/
        yield daemon, site
    finally:
        assert daemon.stop() == 0, daemon.log()


@pytest.mark.parametrize("job", EXAMPLE_JOBS, ids=lambda p: p.name)
def test_validate_accepts_every_example_job(job):
    done = subprocess.run([*SYNCD, "validate", str(job)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"valid job '{job.name}'" in done.stdout


def test_validate_accepts_example_config():
    done = subprocess.run(
        [*SYNCD, "validate", str(EXAMPLES / "syncd.yaml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid config with 1 inbox(es)" in done.stdout


def test_examples_include_the_documented_jobs():
    assert {p.name for p in EXAMPLE_JOBS} >= {"hello", "nested-outputs", "fails-on-purpose", "with-env-and-timeout"}


@pytest.mark.parametrize("job", EXAMPLE_JOBS, ids=lambda p: p.name)
def test_example_job_delivers_result_record(example_run, job):
    daemon, _ = example_run
    result = daemon.result(job.name, timeout=30)
    assert result["job"] == job.name
    assert result["state"] in ("succeeded", "failed")
    folder = daemon.outbox / "results" / job.name
    assert (folder / "syncd-stdout.txt").is_file() and (folder / "syncd-stderr.txt").is_file()


def test_hello_uppercases_its_input(example_run):
    daemon, _ = example_run
    result = daemon.result("hello")
    folder = daemon.outbox / "results" / "hello"
    assert result["state"] == "succeeded" and result["exit_code"] == 0
    assert (folder / "HELLO.txt").read_text() == "HELLO, SYNCD\n"
    assert _delivered(folder) == {"HELLO.txt"}, "the unchanged input is not delivered"


def test_nested_outputs_delivers_exactly_the_globbed_files(example_run):
    daemon, _ = example_run
    result = daemon.result("nested-outputs")
    folder = daemon.outbox / "results" / "nested-outputs"
    expected = {"results/top.csv", "results/run-a/values.csv", "results/run-a/deep/more.csv", "summary.txt"}
    assert result["state"] == "succeeded", (folder / "syncd-stderr.txt").read_text()
    assert _delivered(folder) == expected
    assert {o["path"] for o in result["outputs"]} == expected
    assert (folder / "results" / "run-a" / "deep" / "more.csv").read_text() == "b\n2\n"
    assert (folder / "summary.txt").read_text() == "3 csv files\n"


def test_fails_on_purpose_reports_failure_with_stderr_and_partial_output(example_run):
    daemon, _ = example_run
    result = daemon.result("fails-on-purpose")
    folder = daemon.outbox / "results" / "fails-on-purpose"
    assert result["state"] == "failed"
    assert result["exit_code"] == 3
    assert "step 2 failed" in (folder / "syncd-stderr.txt").read_text()
    assert (folder / "syncd-stdout.txt").read_text() == "starting step 2\n"
    assert (folder / "partial.txt").read_text() == "step 1 of 2 done\n"
    assert [o["path"] for o in result["outputs"]] == ["partial.txt"]


def test_with_env_and_timeout_sees_its_variables(example_run):
    daemon, _ = example_run
    result = daemon.result("with-env-and-timeout")
    folder = daemon.outbox / "results" / "with-env-and-timeout"
    assert result["state"] == "succeeded", (folder / "syncd-stderr.txt").read_text()
    assert (folder / "env.txt").read_text().splitlines() == [
        "GREETING=hello from job.yaml",
        "ANSWER=42",
        "SYNCD_JOB_NAME=with-env-and-timeout",
    ]


def test_gitignore_keeps_runtime_folders_out_of_git(example_run):
    daemon, site = example_run
    for job in EXAMPLE_JOBS:
        daemon.result(job.name)
    created = [name for name in RUNTIME_FOLDERS if (site / name).exists()]
    assert {"inbox", "outbox", "buckets", ".state"} <= set(created), "the run created its folders"
    git = shutil.which("git")
    assert git, "git is needed to check .gitignore"
    subprocess.run([git, "init", "-q", str(site)], check=True)
    listed = subprocess.run(
        [git, "-C", str(site), "ls-files", "--others", "--exclude-standard"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    leaked = [p for p in listed if p.split("/")[0] in RUNTIME_FOLDERS]
    assert not leaked, f"runtime files not ignored: {leaked[:10]}"
    assert "syncd.yaml" in listed and "jobs/hello/job.yaml" in listed and ".gitignore" in listed


def test_readme_documents_the_run_and_drop_commands():
    readme = (EXAMPLES / "README.md").read_text()
    assert "syncd run -c examples/local/syncd.yaml" in readme
    assert re.search(r"cp -r examples/local/jobs/\S+ \S+\s*\\?\s*&& mv \S+ examples/local/inbox/", readme)


def test_example_config_matches_the_embedded_default():
    from syncd.templates import INIT_CONFIG

    def keys(text: str) -> list[str]:
        return [line.split("#")[0].rstrip() for line in text.splitlines() if line.split("#")[0].strip()]

    assert keys((EXAMPLES / "syncd.yaml").read_text()) == keys(INIT_CONFIG)
