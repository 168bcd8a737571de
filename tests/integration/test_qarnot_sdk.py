"""The official ``qarnot`` SDK (from PyPI, unmodified) runs its own flows against the emulator.

The SDK is installed by this test into ``.venv-sdk/qarnot`` (git-ignored) with ``pip --target``, beside our
environment rather than in it: it is no dependency of syncd. Its pins (requests, boto3>=1.36) are met by the
test environment, so the flows run in a child Python that sees the SDK folder first. In CI (``CI=true``) a
failed install is a failure, like any skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.s3

SDK_VERSION = "2.23.0"
ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / ".venv-sdk" / "qarnot"

FLOWS = textwrap.dedent("""
    import json, os, sys, tempfile
    import qarnot
    from qarnot.exceptions import MissingTaskException, NotEnoughCreditsException, UnauthorizedException

    seen = {"version": qarnot.__version__}
    conn = qarnot.connection.Connection(client_token=os.environ["QARNOT_CLIENT_TOKEN"],
                                        cluster_url=os.environ["QARNOT_CLUSTER_URL"], retry_count=1, retry_wait=0.01)
    tag, short = sys.argv[1], sys.argv[2]

    def wait(task):
        while not task.wait(timeout=0.2):
            pass

    # submit with buckets, wait, stdout / fresh stdout, download results
    resources = conn.create_bucket("sdk-res-" + short)
    resources.add_string("hello from a bucket\\n", "in.txt")
    task = conn.create_task("sdk-flow", "docker-batch", 1, shortname=short)
    task.constants["DOCKER_CMD"] = "sh -c 'cat in.txt; mkdir -p sub; echo made > sub/made.txt; echo to-err >&2'"
    task.resources = [resources]
    task.results = conn.create_bucket("sdk-out-" + short)
    task.tags = [tag]
    task.submit()
    wait(task)
    seen["state"] = task.state
    seen["stdout"] = task.stdout()
    seen["fresh"] = task.fresh_stdout()
    seen["fresh_again"] = task.fresh_stdout()
    seen["stderr"] = task.stderr()
    out = tempfile.mkdtemp()
    task.download_results(out)
    seen["results"] = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    seen["made"] = open(os.path.join(out, "sub", "made.txt")).read()
    seen["created"] = task.creation_date.isoformat()

    # lookup by shortname, paginate by tag and without
    found = conn.retrieve_task(short)
    seen["lookup"] = found.uuid == task.uuid
    for n in range(3):
        extra = conn.create_task("sdk-page-%d" % n, "docker-batch", 1)
        extra.constants["DOCKER_CMD"] = "true"
        extra.tags = [tag]
        extra.submit()
    seen["tagged"] = len(list(conn.all_tasks(tags=[tag])))
    seen["summaries"] = sum(1 for t in conn.all_tasks() if t.tags and tag in t.tags)

    # abort, delete, a refused submit
    long = conn.create_task("sdk-abort", "docker-batch", 1)
    long.constants["DOCKER_CMD"] = "sleep 60"
    long.submit()
    long.abort()
    wait(long)
    seen["aborted"] = long.state
    try:
        long.abort()
    except UnauthorizedException:
        seen["abort_ended"] = "refused"
    task.delete(purge_resources=True, purge_results=True)
    try:
        conn.retrieve_task(short)
    except MissingTaskException:
        seen["deleted"] = True
    seen["buckets_left"] = sorted(b.uuid for b in conn.buckets() if b.uuid.endswith(short))
    print(json.dumps(seen))
""")


@pytest.fixture(scope="session")
def qarnot_sdk() -> Path:
    """The SDK's folder, installed once (kept between runs: it is git-ignored)."""
    if not (SDK_DIR / "qarnot" / "__init__.py").exists() or not list(SDK_DIR.glob(f"qarnot-{SDK_VERSION}.dist-info")):
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
                f"qarnot=={SDK_VERSION}",
                "deprecation",
                "simplejson",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot install the qarnot SDK from PyPI: {done.stderr[-500:]}")
    return SDK_DIR


def run_flows(sdk: Path, emulator, *args: str) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(sdk),
        "QARNOT_CLUSTER_URL": emulator.url,
        "QARNOT_CLIENT_TOKEN": emulator.token,
    }
    done = subprocess.run([sys.executable, "-c", FLOWS, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_official_sdk_flows_run_unmodified_against_the_emulator(qarnot, qarnot_sdk):
    qarnot.account(page_size=2)  # so that listing the tasks takes several pages
    short = f"sdk-{uuid.uuid4().hex[:8]}"
    seen = run_flows(qarnot_sdk, qarnot, f"tag-{short}", short)
    assert seen["version"].lstrip("v") == SDK_VERSION
    assert seen["state"] == "Success"
    assert seen["stdout"] == "hello from a bucket\n" and seen["stderr"] == "to-err\n"
    assert seen["fresh"] == "hello from a bucket\n" and seen["fresh_again"] == ""
    assert seen["made"] == "made\n" and "sub/made.txt" in seen["results"] and "in.txt" in seen["results"]
    assert seen["lookup"] is True
    assert seen["tagged"] == 4 and seen["summaries"] == 4
    assert seen["aborted"] == "Cancelled" and seen["abort_ended"] == "refused"
    assert seen["deleted"] is True and seen["buckets_left"] == []


SEE_TASK = textwrap.dedent("""
    import json, os, sys, tempfile
    import qarnot
    conn = qarnot.connection.Connection(client_token=os.environ["QARNOT_CLIENT_TOKEN"],
                                        cluster_url=os.environ["QARNOT_CLUSTER_URL"], retry_count=1, retry_wait=0.01)
    task = conn.retrieve_task(sys.argv[1])
    out = tempfile.mkdtemp()
    # Not task.download_results(): on a retrieved task the SDK builds Bucket(create=True), i.e. CreateBucket on
    # the existing result bucket, which SeaweedFS refuses (BucketAlreadyOwnedByYou) where S3 in us-east-1 says 200.
    conn.retrieve_bucket(sys.argv[2]).get_all_files(out)
    files = {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read().decode()
             for d, _, fs in os.walk(out) for f in fs}
    print(json.dumps({"state": task.state, "uuid": task.uuid, "tags": task.tags, "stdout": task.stdout(),
                      "files": files}))
""")


def test_the_sdk_sees_the_states_and_outputs_syncd_sees(qarnot, qarnot_sdk, tmp_path):
    from syncd.backends.base import JobSpec
    from syncd.backends.qarnot import QarnotBackend, QarnotOptions

    backend = QarnotBackend("sdk-view", QarnotOptions.model_validate(qarnot.backend_section()), tmp_path)
    job_id = uuid.uuid4().hex[:10]
    spec = JobSpec(
        job_id=job_id,
        name="seen",
        submit_key=f"syncd-{job_id}",
        attempt=1,
        command="echo made > made.txt; echo said; exit 4",
    )
    backend.stage(spec, [])
    ref = backend.submit(spec)
    deadline = time.monotonic() + 30
    while not (status := backend.poll([ref])[ref.remote_id]).state.terminal:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    outputs = {o.relpath: o.source.read_text() for o in backend.outputs(ref, spec)}
    env = {
        **os.environ,
        "PYTHONPATH": str(qarnot_sdk),
        "QARNOT_CLUSTER_URL": qarnot.url,
        "QARNOT_CLIENT_TOKEN": qarnot.token,
    }
    done = subprocess.run(
        [sys.executable, "-c", SEE_TASK, ref.handle["shortname"], ref.handle["results"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert (seen["uuid"], seen["state"]) == (ref.remote_id, status.native) == (ref.remote_id, "Failure")
    assert seen["stdout"] == backend.logs(ref).stdout.read_text() == "said\n"
    assert backend.tag in seen["tags"]
    assert {rel: seen["files"][rel] for rel in outputs} == outputs, "the same result files, the same bytes"
    assert outputs[".syncd/exit-code"].strip() == "4"
    backend.cleanup(ref)
