"""The CHIME/FRB Workflow backend's wire shapes and launcher, without a service."""

from __future__ import annotations

import os
import subprocess

import pydantic
import pytest

from syncd.backends import wrapper
from syncd.backends.base import RemoteState
from syncd.backends.chime_workflow import ChimeWorkflowOptions, api, launcher


@pytest.mark.parametrize(
    ("doc", "state"),
    [
        ({"status": "created"}, RemoteState.QUEUED),
        ({"status": "queued"}, RemoteState.QUEUED),
        ({"status": "running", "start": 1.0}, RemoteState.RUNNING),
        ({"status": "success", "start": 1.0, "stop": 2.0}, RemoteState.SUCCEEDED),
        ({"status": "failure", "start": 1.0, "stop": 2.0, "timeout": 60}, RemoteState.FAILED),
        ({"status": "failure", "start": 1.0, "stop": 61.0, "timeout": 60}, RemoteState.TIMED_OUT),
        (
            {"status": "failure", "start": 1.0, "stop": 99.0, "timeout": 60, "results": {"error": "x"}},
            RemoteState.FAILED,
        ),
        ({"status": "paused"}, RemoteState.UNKNOWN),
    ],
)
def test_state_of_each_status_a_work_carries(doc, state):
    status = api.state_of(doc)
    assert status.state is state and status.native == doc["status"] and status.exit_code is None
    assert status.started == doc.get("start") and status.ended == doc.get("stop")


def test_a_failure_after_a_cancel_claimed_the_job_is_cancelled():
    assert api.state_of({"status": "failure"}, cancelled=True).state is RemoteState.CANCELLED
    assert api.state_of({"status": "success"}, cancelled=True).state is RemoteState.SUCCEEDED


def test_the_work_has_one_tag_no_retries_and_leaves_products_in_place():
    fields = {"pipeline": "p", "site": "s", "user": "u", "parameters": {"a": 1}, "timeout": 60, "priority": 3}
    payload = api.work(command=["/bin/sh", "/x/launch.sh"], tag="syncd-k", **fields)
    assert payload["tags"] == ["syncd-k"] and payload["retries"] == 0 and payload["function"] is None
    assert payload["config"]["archive"]["products"] == "bypass" and payload["status"] == "created"
    assert payload["id"] is None and isinstance(payload["creation"], float)


def test_view_projects_the_fields_and_drops_mongo_ids():
    body = api.view({"tags": {"$in": ["a"]}}, ("id", "status"), skip=500)
    assert body == {
        "query": {"tags": {"$in": ["a"]}},
        "projection": {"id": True, "status": True, "_id": False},
        "skip": 500,
        "limit": api.VIEW_LIMIT,
    }
    assert api.documents([{"id": "a"}, {"no": "id"}, 3]) == [{"id": "a"}]
    with pytest.raises(ValueError):
        api.documents({"detail": "x"})


def test_the_runners_own_record_is_told_from_a_pipelines_results():
    command = ["/bin/sh", "/x/launch.sh"]
    assert api.is_runner_default({"args": command, "stdout": [], "stderr": [], "returncode": 0}, command)
    assert not api.is_runner_default({"args": command, "stdout": [], "stderr": [], "returncode": 0, "n": 1}, command)
    assert not api.is_runner_default({"error": "boom"}, command)


def _stage(tmp_path, command, env):
    ctrl, work = tmp_path / "job" / "ctrl", tmp_path / "job" / "work"
    work.mkdir(parents=True)
    ctrl.mkdir()
    wrapper.write(work, command)
    launcher.write(ctrl, env)
    return ctrl, work


def test_the_launcher_runs_in_work_with_the_environment_and_separate_logs(tmp_path):
    ctrl, work = _stage(
        tmp_path, 'echo "$GREETING" > out.txt; echo said; echo oops >&2; exit 4', {"GREETING": "a $b\n"}
    )
    done = subprocess.run(["/bin/sh", str(ctrl / launcher.SCRIPT_NAME)], cwd="/", capture_output=True)
    assert done.returncode == 4 and done.stdout == done.stderr == b"", "the runner sees nothing of the job's output"
    assert (work / "out.txt").read_text() == "a $b\n\n"
    assert (ctrl / "stdout.txt").read_text() == "said\n" and (ctrl / "stderr.txt").read_text() == "oops\n"
    assert wrapper.parse_exit_code((work / wrapper.EXIT_FILE).read_text()) == 4
    assert launcher.started(ctrl) and not launcher.claim_for_cancel(ctrl), "started: a cancel comes too late"


def test_a_cancel_that_claims_first_keeps_the_command_from_running(tmp_path):
    ctrl, work = _stage(tmp_path, "echo ran > ran.txt", {})
    assert launcher.claim_for_cancel(ctrl) and launcher.claim_for_cancel(ctrl), "claiming again is harmless"
    done = subprocess.run(["/bin/sh", str(ctrl / launcher.SCRIPT_NAME)], capture_output=True)
    assert done.returncode == launcher.CANCELLED_EXIT and not (work / "ran.txt").exists()
    assert launcher.cancelled(ctrl) and not launcher.started(ctrl)


def test_the_launcher_names_no_job_and_stale_environment_files_go(tmp_path):
    ctrl, _ = _stage(tmp_path, "true", {"A": "1", "B": "2"})
    launcher.write(ctrl, {"A": "1"})
    assert sorted(os.listdir(ctrl / launcher.ENV_FOLDER)) == ["A"]
    assert (ctrl / launcher.SCRIPT_NAME).read_text() == launcher.SCRIPT


def test_options_need_a_token_source_and_a_valid_pipeline(tmp_path):
    base = {"type": "chime-workflow", "url": "http://h:8004", "site": "s", "user": "u", "work_dir": str(tmp_path)}
    ChimeWorkflowOptions.model_validate({**base, "pipeline": "p-1", "token_env": "WORKFLOW_TOKEN"})
    with pytest.raises(pydantic.ValidationError):
        ChimeWorkflowOptions.model_validate({**base, "pipeline": "p-1"})
    with pytest.raises(pydantic.ValidationError):
        ChimeWorkflowOptions.model_validate({**base, "pipeline": "no spaces", "token": "t"})
    with pytest.raises(pydantic.ValidationError):
        ChimeWorkflowOptions.model_validate({**base, "pipeline": "p", "token": "t", "default_timeout": "4d"})
