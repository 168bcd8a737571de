"""The official client, cybergis-compute-client 0.2.6 from PyPI, unmodified, runs its own flows against the emulator.

It pins IPython 8.3 and widget packages that syncd does not want, so it gets a virtual environment of its own,
``.venv-sdk/cybergis`` (git-ignored), made here on first use and reused after. Its flows run in a child process of
that environment: login (token from the environment, then from the ``cybergis_compute_user.json`` it writes),
the catalogue, create, set, submit, the events and logs loops, status, the job list, the result listing, the
Globus download, cancel, and an error answer raised as the client raises it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cybergis_service import REPO, CybergisService

pytestmark = pytest.mark.cybergis

SDK = "cybergis-compute-client==0.2.6"
VENV = REPO / ".venv-sdk" / "cybergis"

FLOWS = r"""
import json, os, sys, time
from cybergis_compute_client import CyberGISCompute

port, hub, hpc, endpoint, download = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
out = {}
CyberGISCompute.jupyterhubHost = hub  # what enable_jupyter() would read from the page
cg = CyberGISCompute(url="127.0.0.1", port=int(port), protocol="HTTP", suffix="v2", isJupyter=False)
cg.login()
out["username"] = cg.username
out["saved_token"] = json.load(open("cybergis_compute_user.json"))["token"]
out["hpc"] = sorted(cg.list_hpc(raw=True))
out["git"] = sorted(cg.list_git(raw=True))
out["maintainer"] = sorted(cg.list_maintainer(raw=True))
cg.list_info(list_maintainer=True, list_container=True)
cg.list_jupyter_host()
out["usage"] = cg.get_slurm_usage(raw=True)
out["globus_map"] = cg.get_user_jupyter_globus()["endpoint"]

job = cg.create_job(hpc=hpc)
job.set(localExecutableFolder={"type": "git", "gitId": "hello_world"}, param={"greeting": "hi"},
        slurm={"time": "00:10:00", "cpu_per_task": 1})
job.submit()
out["failed"] = job.events(refreshRateInSeconds=0.05)
job.logs(refreshRateInSeconds=0.05)
status = job.status(raw=True)
job.status()
out["id"] = job.id
out["events"] = [e["type"] for e in job.events(raw=True)]
out["logs"] = [log["message"] for log in job.logs(raw=True)]
out["result"] = job.result_folder_content()
out["is_failed"] = status["isFailed"]
try:  # without remotePath the client sends "fromPath": null, which the server's schema refuses
    job.download_result_folder_by_globus(localPath=download, localEndpoint=endpoint)
except Exception as exc:
    out["no_from_path"] = str(exc)
job.download_result_folder_by_globus(localPath=download, localEndpoint=endpoint, remotePath="/")
cg.list_job()
out["listed"] = [j["id"] for j in cg.list_job(raw=True)["job"]]
out["again"] = cg.get_job_by_id(job.id).hpc

long = cg.create_job(hpc=hpc, verbose=False)
long.set(localExecutableFolder={"type": "git", "gitId": "demo"}, param={"seconds": "30"}, printJob=False)
long.submit()
while not long.status(raw=True)["initializedAt"]:
    time.sleep(0.05)
cg.job = long
cg.cancel_job()
out["cancel_failed"] = long.events(refreshRateInSeconds=0.05)
out["cancel_events"] = [e["type"] for e in long.events(raw=True)]

relogin = CyberGISCompute(url="127.0.0.1", port=int(port), protocol="HTTP", suffix="v2", isJupyter=False)
os.environ.pop("JUPYTERHUB_API_TOKEN")
relogin.login()  # from ./cybergis_compute_user.json
out["relogin"] = relogin.username
try:
    cg.get_job_by_id("1700000000AbCdE")
except Exception as exc:
    out["error"] = str(exc)
print("RESULT " + json.dumps(out))
"""


SAME = r"""
import json, sys
from cybergis_compute_client import CyberGISCompute

CyberGISCompute.jupyterhubHost = sys.argv[2]
cg = CyberGISCompute(url="127.0.0.1", port=int(sys.argv[1]), protocol="HTTP", suffix="v2", isJupyter=False)
cg.login(verbose=False)
out = {}
for job_id in sys.argv[3:]:
    job = cg.get_job_by_id(job_id, verbose=False)
    status = job.status(raw=True)
    out[job_id] = {"events": [e["type"] for e in status["events"]], "failed": status["isFailed"],
                   "param": status["param"], "result": job.result_folder_content(), "logs": job.logs(raw=True)}
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    """The SDK's own virtual environment, installed from PyPI on first use (a failure fails the test)."""
    python, marker = VENV / "bin" / "python", VENV / "installed.txt"
    if not (python.exists() and marker.exists() and marker.read_text() == SDK):
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=120)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            pytest.fail(f"pip install {SDK} failed:\n{done.stdout}\n{done.stderr}")
        marker.write_text(SDK)
    return python


def run_sdk(sdk_python: Path, service: CybergisService, cwd: Path, script: str, *args: str) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "TERM": "dumb",
        "JUPYTERHUB_API_TOKEN": service.TOKEN,
    }
    done = subprocess.run(
        [str(sdk_python), "-c", script, str(service.port), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"the SDK failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_the_official_client_runs_its_own_flows_against_the_emulator(sdk_python, cybergis_service, tmp_path):
    service = cybergis_service
    out = run_sdk(
        sdk_python,
        service,
        tmp_path,
        FLOWS,
        service.HUB,
        service.HPC,
        service.HOST_ENDPOINT,
        str(tmp_path / "download"),
    )
    assert out["username"] == "alice@hub.test"
    assert out["saved_token"] == service.encoded_token(), "login wrote the encoded token into the cwd"
    assert service.HPC in out["hpc"] and {"hello_world", service.RUNNER} <= set(out["git"])
    assert out["maintainer"] == ["community_contribution"] and out["globus_map"] == service.HOST_ENDPOINT
    assert out["usage"]["cpus"] == 0
    assert out["failed"] is False and out["is_failed"] is False
    assert out["events"][0] == "JOB_QUEUED" and out["events"][-1] == "JOB_ENDED"
    assert out["logs"] == [f"hello from {out['id']} with hi\n"]
    assert out["result"] == ["/greetings", "/", "/slurm_log"], "the manifest's downloadable path comes first"
    assert "instance.fromPath is not of a type(s) string" in out["no_from_path"]
    assert (tmp_path / "download" / "greetings" / "hello.txt").read_text() == "hello\n"
    assert out["id"] in out["listed"] and out["again"] == service.HPC
    assert out["cancel_failed"] is False and out["cancel_events"][-1] == "JOB_ENDED", "a cancelled job looks ended"
    assert out["relogin"] == "alice@hub.test"
    assert out["error"].startswith("server 127.0.0.1:") and 'responded with error "invalid access' in out["error"]
    job = next(j for j in service.jobs() if j["id"] == out["id"])
    assert job["slurm"] == {"time": "00:10:00", "cpu_per_task": 1} and job["param"] == {"greeting": "hi"}


def test_the_official_client_sees_the_jobs_syncd_ran_as_syncd_sees_them(sdk_python, cybergis_service, tmp_path):
    from syncd.backends.base import RemoteState
    from tests.conformance.test_cybergis import cybergis_harness

    harness = cybergis_harness(cybergis_service, tmp_path)
    specs = [harness.spec("mkdir -p a/b && echo x > a/b/x.txt; echo said"), harness.spec("echo no >&2; exit 3")]
    refs = [harness.run(spec) for spec in specs]
    states = [harness.wait(ref).state for ref in refs]
    assert states == [RemoteState.SUCCEEDED, RemoteState.FAILED]
    out = run_sdk(sdk_python, cybergis_service, tmp_path, SAME, cybergis_service.HUB, *(r.remote_id for r in refs))
    ok, failed = out[refs[0].remote_id], out[refs[1].remote_id]
    assert (ok["events"][-1], ok["failed"]) == ("JOB_ENDED", False)
    assert (failed["events"][-1], failed["failed"]) == ("JOB_FAILED", True)
    assert ok["param"] == {"syncd_key": specs[0].submit_key}, "the client sees syncd's marker"
    delivered = {o.relpath for o in harness.backend.outputs(refs[0], specs[0])}
    assert {"/a", "/a/b"} <= set(ok["result"]) and "a/b/x.txt" in delivered
    assert "said" in ok["logs"][0]["message"] and "said" in harness.backend.logs(refs[0]).stdout.read_text()
    assert failed["logs"] == [] and failed["result"] == [], "a JOB_FAILED job: no pieces, no listing"
    assert "no" in harness.backend.logs(refs[1]).stderr.read_text(), "syncd reads Slurm's files instead"
