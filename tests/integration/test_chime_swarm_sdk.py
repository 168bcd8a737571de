"""The official ``chime-frb-api`` SDK (from PyPI, unmodified) runs its own swarm flows against the frb-master emulator.

The SDK is installed by this test into ``.venv-sdk/chime-frb-api`` (git-ignored) with ``pip --target``, beside our
environment rather than in it: it is no dependency of syncd, and it pins libraries syncd does not (attrs < 23). Only
the modules its swarm client imports are added (PyJWT, pymongo); the rest is met by the test environment. The flows
run in a child Python that sees the SDK folder first, with the tokens in the SDK's own environment variables (its
keyword arguments for tokens are discarded, see the protocol notes). In CI (``CI=true``) a failed install is a
failure, like any skip.
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

SDK_VERSION = "4.10.0"
ROOT = Path(__file__).resolve().parents[2]
SDK_DIR = ROOT / ".venv-sdk" / "chime-frb-api"

FLOWS = textwrap.dedent("""
    import json, sys, time
    import requests
    from chime_frb_api.backends import frb_master

    name = sys.argv[1]
    master = frb_master.FRBMaster(base_url=sys.argv[2])  # probes GET /version first, like in production
    swarm = master.swarm
    seen = {"version": master.version()}
    seen["spawn"] = sorted(swarm.spawn_job(image_name="alpine", command=["sh", "-c"],
                                           arguments=["echo from-the-job; echo to-err >&2; exit 0"],
                                           job_name=name, mount_archiver=False, swarm_network=False))
    deadline = time.time() + 30
    while swarm.jobs_running([name]) and time.time() < deadline:
        time.sleep(0.05)
    seen["status"] = swarm.get_job_status(name)
    seen["logs"] = swarm.get_logs(name)
    seen["listed"] = name in swarm.get_jobs()
    swarm.spawn_job(image_name="alpine", command=["sh", "-c", "exit 5"], arguments=[], job_name=name + "-f")
    while swarm.get_job_status(name + "-f")[name + "-f"] != "failed" and time.time() < deadline:
        time.sleep(0.05)
    seen["killed_failed"] = swarm.kill_failed_jobs(job_name=name)
    swarm.spawn_job(image_name="alpine", command=["sleep", "30"], arguments=[], job_name=name + "-long")
    seen["kill"] = swarm.kill_job(name + "-long")
    seen["prune"] = swarm.prune_jobs(name)
    seen["after"] = swarm.get_job_status(name)
    seen["jobs_left"] = [j for j in swarm.get_jobs() if j.startswith(name)]
    print(json.dumps(seen))
""")

REFUSED = textwrap.dedent("""
    import json, sys
    import requests
    from chime_frb_api.backends import frb_master

    master = frb_master.FRBMaster(debug=True, base_url=sys.argv[1])
    master.swarm.get_jobs()  # the first call is sent with the access token as it is
    try:
        master.swarm.get_jobs()  # the next one is preceded by a refresh, which the server refuses
        print(json.dumps({"refused": None}))
    except requests.HTTPError as exc:
        print(json.dumps({"refused": exc.response.status_code, "path": exc.response.request.path_url}))
""")


@pytest.fixture(scope="session")
def chime_sdk() -> Path:
    """The SDK's folder, installed once (kept between runs: it is git-ignored)."""
    marker = list(SDK_DIR.glob(f"chime_frb_api-{SDK_VERSION}.dist-info"))
    if not (SDK_DIR / "chime_frb_api" / "__init__.py").exists() or not marker or not (SDK_DIR / "jwt").exists():
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
                f"chime-frb-api=={SDK_VERSION}",
                "pyjwt>=2,<3",
                "pymongo",
                "dnspython",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot install the chime-frb-api SDK from PyPI: {done.stderr[-500:]}")
    return SDK_DIR


def sdk_run(sdk: Path, script: str, tokens: dict, *args: str) -> dict:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHIME_FRB_", "FRB_MASTER_"))},
        "PYTHONPATH": str(sdk),
        "CHIME_FRB_ACCESS_TOKEN": tokens["access_token"],
        "CHIME_FRB_REFRESH_TOKEN": tokens["refresh_token"],
    }
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_official_sdk_flows_run_unmodified_against_the_emulator(chime_swarm_service, chime_sdk):
    swarm = chime_swarm_service
    user = swarm.add_user()
    refreshes = swarm.count("/auth/refresh")
    name = f"sdk-{uuid.uuid4().hex[:10]}"
    seen = sdk_run(chime_sdk, FLOWS, user, name, swarm.url)
    assert seen["version"] != "error" and seen["spawn"] == ["ID"]
    assert seen["status"] == {name: "complete"}
    assert seen["logs"] == {name: "from-the-job\nto-err\n"}, "docker service logs merge stdout and stderr"
    assert seen["listed"] is True
    assert seen["killed_failed"] == {name + "-f": True}
    assert seen["kill"] == {name + "-long": True}
    assert seen["prune"] == {name: True} and seen["after"] == {} and seen["jobs_left"] == []
    assert swarm.count("/auth/refresh") - refreshes >= 10, "the SDK refreshes its token before every call"
    assert swarm.count("/auth/verify") >= 1


def test_a_refused_refresh_stops_the_sdk_with_a_401(chime_swarm_service, chime_sdk):
    swarm = chime_swarm_service
    user = swarm.add_user()
    swarm.revoke(user["refresh_token"])
    seen = sdk_run(chime_sdk, REFUSED, user, swarm.url)
    assert seen == {"refused": 401, "path": "/auth/refresh"}


SEE_JOB = textwrap.dedent("""
    import json, sys
    from chime_frb_api.backends import frb_master
    swarm = frb_master.FRBMaster(base_url=sys.argv[2]).swarm
    name = sys.argv[1]
    print(json.dumps({"status": swarm.get_job_status(name), "logs": swarm.get_logs(name), "jobs": swarm.get_jobs()}))
""")


def test_the_sdk_sees_the_states_and_outputs_syncd_sees(chime_swarm_service, chime_sdk, tmp_path):
    from syncd.backends.base import JobSpec
    from syncd.backends.chime_swarm import ChimeSwarmBackend, ChimeSwarmOptions

    swarm = chime_swarm_service
    user = swarm.add_user()
    options = ChimeSwarmOptions.model_validate(
        {
            "type": "chime-swarm",
            "url": swarm.url,
            "access_token": {"token": user["access_token"]},
            "refresh_token": {"token": user["refresh_token"]},
            "image": "alpine",
            "work_folder": str(tmp_path / "site"),
        }
    )
    backend = ChimeSwarmBackend("sdk-view", options, tmp_path / "state")
    job_id = uuid.uuid4().hex[:10]
    spec = JobSpec(
        job_id=job_id, name="seen", submit_key=f"syncd-{job_id}", attempt=1, command="echo made > made.txt; exit 4"
    )
    backend.stage(spec, [])
    ref = backend.submit(spec)
    deadline = time.monotonic() + 30
    while not (status := backend.poll([ref])[ref.remote_id]).state.terminal:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    outputs = {o.relpath: o.source.read_text() for o in backend.outputs(ref, spec)}
    seen = sdk_run(chime_sdk, SEE_JOB, user, ref.remote_id, swarm.url)
    assert seen["status"] == {ref.remote_id: status.native} == {ref.remote_id: "failed"}
    assert ref.remote_id in seen["jobs"]
    assert seen["logs"][ref.remote_id].startswith("syncd: running"), "the job's own output is kept apart"
    assert outputs == {"made.txt": "made\n", ".syncd/exit-code": "4\n"}
    backend.cleanup(ref)
    assert (
        ref.remote_id
        not in sdk_run(chime_sdk, SEE_JOB.replace("swarm.get_logs(name)", "{}"), user, "x", swarm.url)["jobs"]
    )
