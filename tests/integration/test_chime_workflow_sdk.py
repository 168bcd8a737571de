"""The official ``workflow-core`` client (from PyPI, unmodified) runs its own flows against the buckets emulator.

The client is installed by this test into ``.venv-sdk/workflow-core`` (git-ignored) with ``pip --target``, beside
our environment rather than in it: it is no dependency of syncd. Of its requirements only ``tenacity`` is missing
from the test environment (the rest, pydantic-settings, requests, click, rich, are there), so it goes into the same
folder, and the flows run in a child Python that sees that folder first. In CI (``CI=true``) a failed install is a
failure, like any skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

SDK_VERSION = "1.12.3"
ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / ".venv-sdk" / "workflow-core"

FLOWS = textwrap.dedent("""
    import json, sys, time
    from workflow.definitions.work import Work
    from workflow.http.buckets import Buckets

    tag, seen = sys.argv[1], {}
    buckets = Buckets(baseurl=sys.argv[2])

    def wait(work_id):
        while True:
            (doc,) = buckets.view({"id": work_id}, {"status": True, "results": True, "attempt": True})
            if doc["status"] in ("success", "failure"):
                return doc
            time.sleep(0.05)

    # deposit a command for the site runner, follow it with view
    work = Work(pipeline="syncd-jobs", site="local", user="sdk", command=["sh", "-c", "echo hi; echo oops >&2"],
                tags=[tag], retries=0)
    (ran,) = buckets.deposit([work.payload], return_ids=True)
    seen["ran"] = wait(ran)
    seen["queued_true"] = buckets.deposit([Work(pipeline="sdk-manual", site="local", user="sdk",
                                                function="mod.func", parameters={"n": 1}, tags=[tag]).payload])
    # be the runner of a bucket nobody else serves: withdraw, update
    got = Work.from_dict(buckets.withdraw(pipeline="sdk-manual", tags=[tag]))
    seen["withdrawn"] = {"status": got.status, "attempt": got.attempt, "parameters": got.parameters}
    seen["empty"] = buckets.withdraw(pipeline="sdk-manual", tags=[tag])
    got.status, got.results, got.products = "success", {"n": 2}, ["/data/x.h5"]
    seen["updated"] = buckets.update([got.payload])
    (doc,) = buckets.view({"id": got.id}, {"status": True, "results": True, "products": True})
    seen["after_update"] = doc
    seen["pipelines"] = buckets.pipelines()
    seen["details"] = buckets.status(pipeline="sdk-manual")
    seen["audit"] = sorted(buckets.audit())
    seen["deleted"] = buckets.delete_ids([ran, got.id])
    seen["left"] = buckets.view({"tags": {"$in": [tag]}}, {"id": True})
    print(json.dumps(seen))
""")


@pytest.fixture(scope="session")
def workflow_sdk() -> Path:
    """The client's folder, installed once (kept between runs: it is git-ignored)."""
    if not list(SDK_DIR.glob(f"workflow_core-{SDK_VERSION}.dist-info")):
        SDK_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                str(SDK_DIR),
                "--no-deps",
                "--upgrade",
                f"workflow-core=={SDK_VERSION}",
                "tenacity>=8.2,<9",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot install workflow-core from PyPI: {done.stderr[-500:]}")
    return SDK_DIR


WORKSPACE = """
workspace: syncd-test
sites: [local]
http:
  baseurls:
    buckets: {url}
config:
  archive:
    products: {{methods: [bypass, copy], storage: posix}}
    plots: {{methods: [bypass, copy], storage: posix}}
    results: true
"""


def sdk_env(sdk: Path, service, home: Path) -> dict[str, str]:
    """The client reads its workspace from ~/.config/workflow (a Work needs one) and its token only from the
    environment (``token=`` is ignored): a HOME of the test's own."""
    workspace = home / ".config" / "workflow" / "workspace.yml"
    workspace.parent.mkdir(parents=True, exist_ok=True)
    workspace.write_text(WORKSPACE.format(url=service.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WORKFLOW_", "GITHUB_"))}
    return {**env, "PYTHONPATH": str(sdk), "HOME": str(home), "WORKFLOW_TOKEN": service.token}


def run(script: str, env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_official_client_flows_run_unmodified_against_the_emulator(chime_workflow_service, workflow_sdk, tmp_path):
    tag = f"sdk-{uuid.uuid4().hex}"
    seen = run(FLOWS, sdk_env(workflow_sdk, chime_workflow_service, tmp_path), tag, chime_workflow_service.url)
    assert seen["ran"]["status"] == "success" and seen["ran"]["attempt"] == 1
    assert seen["ran"]["results"]["stdout"] == ["hi"] and seen["ran"]["results"]["stderr"] == ["oops"]
    assert seen["queued_true"] is True
    assert seen["withdrawn"] == {"status": "running", "attempt": 1, "parameters": {"n": 1}}
    assert seen["empty"] == {}
    assert seen["updated"] is True
    assert seen["after_update"] == {"status": "success", "results": {"n": 2}, "products": ["/data/x.h5"]}
    assert "sdk-manual" in seen["pipelines"] and seen["details"]["success"] >= 1
    assert seen["audit"] == ["expired", "failed", "stale"]
    assert seen["deleted"] is True and seen["left"] == []
    deposits = [c for c in chime_workflow_service.calls if c["method"] == "POST" and c["path"] == "/work"]
    assert all(c["token"] for c in deposits) and deposits[-1]["query"]["return_ids"] == ["False", "False"]


SEE_WORK = textwrap.dedent("""
    import json, sys
    from workflow.definitions.work import Work
    from workflow.http.buckets import Buckets

    buckets = Buckets(baseurl=sys.argv[2])
    # the client's own model takes the Work syncd deposited
    works = [Work.from_dict(doc) for doc in buckets.view({"tags": {"$in": [sys.argv[1]]}}, {})]
    print(json.dumps([{"id": w.id, "status": w.status, "retries": w.retries, "tags": w.tags, "command": w.command,
                       "parameters": w.parameters, "pipeline": w.pipeline} for w in works]))
""")


def test_the_client_sees_the_work_and_state_syncd_sees(chime_workflow_service, workflow_sdk, tmp_path):
    from tests.conformance.test_chime_workflow import chime_workflow_harness

    harness = chime_workflow_harness(chime_workflow_service, tmp_path)
    spec = harness.spec("echo said; exit 4")
    ref = harness.run(spec)
    status = harness.wait(ref)
    env = sdk_env(workflow_sdk, chime_workflow_service, tmp_path / "home")
    (seen,) = run(SEE_WORK, env, spec.submit_key, chime_workflow_service.url)
    assert (seen["id"], seen["status"]) == (ref.remote_id, status.native) == (ref.remote_id, "failure")
    assert seen["retries"] == 0 and seen["tags"] == [spec.submit_key] and seen["pipeline"] == "syncd-jobs"
    assert seen["parameters"]["syncd_submit_key"] == spec.submit_key and seen["command"][0] == "/bin/sh"
    assert harness.backend.logs(ref).stdout.read_text() == "said\n"
    harness.backend.cleanup(ref)
    assert run(SEE_WORK, env, spec.submit_key, chime_workflow_service.url) == [], "cleanup deleted the Work"
