"""The CyberGIS-Compute emulator keeps each quirk of the gateway that shared/protocols/cybergis.md lists (and
those the server's source adds): one test per quirk, straight on the wire with requests."""

from __future__ import annotations

import base64
import re
import time
import zipfile
from pathlib import Path

import pytest
import requests

from tests.support.cybergis_service import JOB_KEYS, CybergisService

pytestmark = pytest.mark.cybergis


class Gateway:
    def __init__(self, service: CybergisService, token: str | None = None):
        self.service, self.url = service, service.url
        self.token = service.encoded_token(token)

    def call(self, method: str, route: str, *, auth: bool = True, timeout: float = 10, **body) -> requests.Response:
        if auth:
            body.setdefault("jupyterhubApiToken", self.token)
        return requests.request(method, self.url + route, json=body, timeout=timeout)

    def job(self, git: str = "demo", submit: bool = True, **fields) -> str:
        job_id = self.call("POST", "/job").json()["id"]
        self.call("PUT", f"/job/{job_id}", localExecutableFolder={"type": "git", "gitId": git}, **fields)
        if submit:
            assert self.call("POST", f"/job/{job_id}/submit").status_code == 200
        return job_id

    def wait(self, job_id: str, until=lambda job: job["finishedAt"], timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.call("GET", f"/job/{job_id}").json()
            if until(job):
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)


@pytest.fixture
def gateway(cybergis_service) -> Gateway:
    return Gateway(cybergis_service)


@pytest.fixture
def small_gateway(tmp_path) -> Gateway:
    """A gateway of its own (restarted by the test) whose HPC runs one job at a time."""
    service = CybergisService(tmp_path / "gateway")
    service.config["hpc"][service.HPC]["job_pool_capacity"] = 1
    (service.root / "config.json").write_text(__import__("json").dumps(service.config))
    service.start()
    yield Gateway(service)
    service.stop()


def _types(job: dict) -> list[str]:
    return [e["type"] for e in job["events"]]


def test_the_token_travels_in_the_json_body_even_on_get(gateway):
    assert gateway.call("GET", "/user").json() == {"username": "alice@hub.test"}
    headers_only = requests.get(gateway.url + "/user", headers={"Authorization": f"token {gateway.token}"}, timeout=5)
    assert headers_only.status_code == 402
    assert headers_only.json() == {"error": "invalid input", "messages": ['requires property "jupyterhubApiToken"']}


def test_the_token_is_base64_of_host_at_token_and_the_host_must_be_allowlisted(gateway, cybergis_service):
    assert base64.b64decode(gateway.token).decode() == f"hub.test@{cybergis_service.TOKEN}"
    wrong = Gateway(cybergis_service, token="not-a-token")
    assert (wrong.call("GET", "/user").status_code, wrong.call("GET", "/user").json()) == (
        402,
        {"error": "invalid token"},
    )
    for other in ("elsewhere.test@" + cybergis_service.TOKEN, "no-at-sign", "a@b@c"):
        answer = gateway.call("GET", "/user", jupyterhubApiToken=base64.b64encode(other.encode()).decode())
        assert (answer.status_code, answer.json()["error"]) == (404, "Cannot find jupyterhubHost in allowlist")
    assert wrong.call("GET", "/user/job").json() == {"error": "invalid token"}
    assert wrong.call("GET", "/job/x").status_code == 401  # "submit without login is not allowed"


def test_invalid_input_is_402(gateway):
    answer = gateway.call("POST", "/job", maintainer=5)
    assert answer.status_code == 402 and answer.json()["error"] == "invalid input"
    assert answer.json()["messages"] == ["instance.maintainer is not of a type(s) string"]
    assert gateway.call("PUT", "/job/x", auth=False).status_code == 402


def test_unknown_jobs_are_refused_with_200_where_the_server_answers_before_setting_the_status(gateway):
    for method in ("PUT", "GET"):
        answer = gateway.call(method, "/job/1700000000AbCdE")
        assert answer.status_code == 200 and "error" in answer.json(), answer.text
    submit = gateway.call("POST", "/job/1700000000AbCdE/submit")
    assert (submit.status_code, submit.json()["error"]) == (401, "invalid access")
    assert gateway.call("GET", "/job/1700000000AbCdE/result-folder-content").status_code == 401


def test_a_draft_is_created_with_an_invalid_token_and_nobody_can_use_it(gateway, cybergis_service):
    wrong = Gateway(cybergis_service, token="not-a-token")
    draft = wrong.call("POST", "/job").json()
    assert draft["userId"] is None and re.fullmatch(r"\d{10}[A-Za-z0-9]{5}", draft["id"])
    assert gateway.call("GET", f"/job/{draft['id']}").json()["error"] == "invalid access"
    assert Gateway(cybergis_service, token=cybergis_service.OTHER_TOKEN).call("GET", "/user/job").json() == {
        "job": []
    }, "bob sees none of alice's jobs"


def test_job_objects_have_every_key_as_the_entity_in_hand_has_it(gateway):
    created = gateway.call("POST", "/job").json()
    assert list(created) == list(JOB_KEYS)
    assert created["isFailed"] is None and created["events"] is None and created["logs"] is None
    assert "queuedAt" not in created
    updated = gateway.call("PUT", f"/job/{created['id']}", param={"a": "1"}).json()
    assert updated["events"] == [] and updated["logs"] == [] and updated["isFailed"] is False
    assert updated["param"] == {"a": "1"} and updated["remoteResultFolder"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", updated["createdAt"])


def test_submit_needs_an_executable_and_twice_is_refused(gateway):
    draft = gateway.call("POST", "/job").json()["id"]
    refused = gateway.call("POST", f"/job/{draft}/submit")
    assert (refused.status_code, refused.json()) == (402, {"error": "Error: job missing executable file"})
    job_id = gateway.job()
    again = gateway.call("POST", f"/job/{job_id}/submit")
    assert (again.status_code, again.json()["error"]) == (401, "job already submitted or in queue")


def test_slurm_values_beyond_the_hpc_rules_are_refused_at_submit(gateway):
    job_id = gateway.job(submit=False, slurm={"cpu_per_task": 8})
    refused = gateway.call("POST", f"/job/{job_id}/submit")
    assert refused.status_code == 402
    assert refused.json()["error"] == "Error: slurm config cpu_per_task exceeds the threshold of 4 (current value 8)"
    job_id = gateway.job(submit=False, slurm={"memory": "9G"})
    assert "memory exceeds the threshold of 8GB" in gateway.call("POST", f"/job/{job_id}/submit").json()["error"]
    job_id = gateway.job(submit=False, slurm={"time": "03:00:00"})
    assert "time exceeds the threshold of 02:00:00" in gateway.call("POST", f"/job/{job_id}/submit").json()["error"]
    accepted = gateway.job(submit=False, slurm={"cpu_per_task": 4, "memory": "8192M", "time": "02:00:00"})
    assert gateway.call("POST", f"/job/{accepted}/submit").status_code == 200


def test_a_job_runs_ends_with_its_logs_and_lists_its_result_directories(gateway):
    job_id = gateway.job(param={"message": "hi"})
    job = gateway.wait(job_id)
    assert _types(job) == [
        "JOB_QUEUED",
        "JOB_REGISTERED",
        "SLURM_UPLOAD_EXECUTABLE",
        "SLURM_CREATE_RESULT",
        "SLURM_SUBMIT",
        "SLURM_SUBMIT_SUCCESS",
        "JOB_INIT",
        "JOB_ENDED",
    ]
    assert job["isFailed"] is False and job["initializedAt"] and job["slurmId"]
    assert [log["message"] for log in job["logs"]] == ["demo says hi\n", "demo warns\n"]
    listing = gateway.call("GET", f"/job/{job_id}/result-folder-content").json()
    assert listing == ["/", "/out", "/out/deep", "/slurm_log"], "directories only, hidden ones skipped"
    result = Path(job["remoteResultFolder"]["hpcPath"])
    assert (result / "out" / "done.txt").read_text() == "done\n"
    assert (result / "slurm_log" / "job.stdout").read_text() == "demo says hi\n"


def test_user_job_lists_every_job_without_its_events(gateway):
    job_id = gateway.job()
    gateway.wait(job_id)
    listed = {job["id"]: job for job in gateway.call("GET", "/user/job").json()["job"]}
    assert listed[job_id]["events"] == [] and listed[job_id]["logs"] == []
    assert listed[job_id]["finishedAt"] and listed[job_id]["remoteResultFolder"]["id"]


def test_the_result_listing_is_empty_until_the_job_ended(gateway):
    job_id = gateway.job(param={"seconds": "1"})
    gateway.wait(job_id, until=lambda job: job["initializedAt"])
    assert gateway.call("GET", f"/job/{job_id}/result-folder-content").json() == []
    gateway.wait(job_id)
    assert gateway.call("GET", f"/job/{job_id}/result-folder-content").json()[0] == "/"


def test_a_failing_command_ends_job_failed_without_logs_or_listing(gateway):
    job_id = gateway.job(param={"exit": "3"})
    job = gateway.wait(job_id)
    assert _types(job)[-1] == "JOB_FAILED" and job["isFailed"] is True
    assert job["logs"] == [] and gateway.call("GET", f"/job/{job_id}/result-folder-content").json() == []
    assert (Path(job["remoteResultFolder"]["hpcPath"]) / "slurm_log" / "job.stderr").read_text() == "demo warns\n"


def test_a_log_message_is_cut_at_500_characters(gateway):
    job = gateway.wait(gateway.job(param={"message": "x", "big": "y" * 2000}))
    stdout = job["logs"][0]["message"]
    assert len(stdout) == 500 + len("...[download for full log]") and stdout.endswith("...[download for full log]")


def test_param_values_are_spliced_into_the_batch_script(gateway):
    job = gateway.wait(gateway.job(param={"message": 'x"; echo INJECTED; echo "'}))
    assert "INJECTED" in job["logs"][0]["message"], 'the gateway puts param_<k>="<v>" into a shell line'


def test_the_slurm_time_limit_kills_the_job_which_then_looks_ended(gateway):
    job = gateway.wait(gateway.job(param={"seconds": "30"}, slurm={"time": "0:1"}))
    assert _types(job)[-1] == "JOB_ENDED" and job["isFailed"] is False
    assert not (Path(job["remoteResultFolder"]["hpcPath"]) / "out" / "done.txt").exists()


def test_cancel_stops_a_registered_job_which_then_looks_ended(gateway):
    job_id = gateway.job(param={"seconds": "30"})
    gateway.wait(job_id, until=lambda job: job["initializedAt"])
    answer = gateway.call("PUT", f"/job/{job_id}/cancel", jobId=job_id)
    assert answer.json() == {"messages": ["job successfully added to cancel queue"]}
    job = gateway.wait(job_id)
    assert _types(job)[-1] == "JOB_ENDED" and job["isFailed"] is False, "there is no cancelled state"
    after = gateway.call("PUT", f"/job/{job_id}/cancel", jobId=job_id)
    assert (after.status_code, after.json()) == (402, {"error": "job is not in queue or running jobs"})
    draft = gateway.job(submit=False)
    assert gateway.call("PUT", f"/job/{draft}/cancel", jobId=draft).status_code == 402


def test_cancel_cannot_reach_a_queued_job_and_a_restart_forgets_the_running_ones(small_gateway):
    gateway, service = small_gateway, small_gateway.service
    running = gateway.job(param={"seconds": "1.5"})
    queued = gateway.job()
    gateway.wait(running, until=lambda job: job["initializedAt"])
    assert gateway.call("PUT", f"/job/{queued}/cancel", jobId=queued).status_code == 402, "queued: not found"
    service.restart()
    assert gateway.call("PUT", f"/job/{running}/cancel", jobId=running).status_code == 402, "forgotten"
    assert gateway.wait(queued)["isFailed"] is False, "the queue survives a restart"
    result = Path(gateway.call("GET", f"/job/{running}").json()["remoteResultFolder"]["hpcPath"])
    deadline = time.monotonic() + 10
    while not (result / "out" / "done.txt").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # longer than min_job_age and many supervisor ticks
    job = gateway.call("GET", f"/job/{running}").json()
    assert job["finishedAt"] is None and _types(job)[-1] == "JOB_INIT", "nobody maintains it any more"


def test_init_is_tried_three_times_then_the_job_fails(gateway, tmp_path):
    job = gateway.wait(gateway.job(localDataFolder={"type": "local", "localPath": str(tmp_path / "missing")}))
    assert _types(job).count("JOB_RETRY") == 3 and _types(job)[-1] == "JOB_FAILED"
    assert job["initializedAt"] is None and job["remoteResultFolder"] is None
    retries = [e["message"] for e in job["events"] if e["type"] == "JOB_RETRY"]
    assert all("encountered system error Error: could not find folder under path" in m for m in retries)


def test_a_local_data_folder_is_zipped_beside_itself_and_the_zip_is_reused(gateway, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("first\n")
    first = gateway.wait(gateway.job(localDataFolder={"type": "local", "localPath": str(data)}))
    assert zipfile.ZipFile(tmp_path / "data.zip").namelist() == ["in.txt"]
    (data / "in.txt").write_text("second\n")
    second = gateway.wait(gateway.job(localDataFolder={"type": "local", "localPath": str(data)}))
    for job in (first, second):
        assert (Path(job["remoteDataFolder"]["hpcPath"]) / "in.txt").read_text() == "first\n"


def test_globus_download_is_asynchronous_and_forgets_its_task_once_read(gateway, cybergis_service, tmp_path):
    job = gateway.wait(gateway.job())
    folder = job["remoteResultFolder"]["id"]
    init = gateway.call(
        "POST",
        f"/folder/{folder}/download/globus-init",
        jobId=job["id"],
        toEndpoint=cybergis_service.HOST_ENDPOINT,
        toPath=str(tmp_path / "copy"),
    )
    assert re.fullmatch(r"[0-9a-f]{32}", init.json()["globus_task_id"])
    busy = gateway.call(
        "POST",
        f"/folder/{folder}/download/globus-init",
        toEndpoint=cybergis_service.HOST_ENDPOINT,
        toPath=str(tmp_path / "copy"),
    )
    assert busy.status_code == 403 and "currently running" in busy.json()["error"]
    seen = []
    while not seen or seen[-1] not in ("SUCCEEDED", "FAILED"):
        seen.append(gateway.call("GET", f"/folder/{folder}/download/globus-status").json()["status"])
    assert seen[0] == "ACTIVE" and seen[-1] == "SUCCEEDED"
    assert (tmp_path / "copy" / "out" / "done.txt").read_text() == "done\n"
    forgotten = gateway.call("GET", f"/folder/{folder}/download/globus-status")
    assert forgotten.status_code == 403 and "failed to query globus" in forgotten.json()["error"]
    nowhere = gateway.call("POST", f"/folder/{folder}/download/globus-init", toEndpoint="no-such", toPath="/x")
    assert nowhere.status_code == 403 and "EndpointNotFound" in nowhere.json()["error"]


def test_express_answers_html_to_a_broken_body_and_an_unknown_route(gateway):
    broken = requests.post(
        gateway.url + "/job", data=b"{not json", headers={"Content-Type": "application/json"}, timeout=5
    )
    assert broken.status_code == 400 and broken.headers["Content-Type"].startswith("text/html")
    unknown = requests.get(gateway.url + "/no/such/route", timeout=5)
    assert unknown.status_code == 404 and "Cannot GET /no/such/route" in unknown.text
    assert requests.get(
        gateway.url.removesuffix("/v2") + "/user", json={"jupyterhubApiToken": gateway.token}, timeout=5
    ).json() == {"username": "alice@hub.test"}, "the core server without its proxy"


def test_pause_and_resume_never_answer(gateway):
    with pytest.raises(requests.ReadTimeout):
        gateway.call("PUT", "/job/x/pause", timeout=0.3)


def test_the_catalogue_hides_private_hpc_fields_and_normalises_git_manifests(gateway):
    hpc = gateway.call("GET", "/hpc", auth=False).json()["hpc"]["emu_community"]
    assert "root_path" not in hpc and "community_login" not in hpc and hpc["slurm_input_rules"]["cpu_per_task"]
    runner = gateway.call("GET", "/git", auth=False).json()["git"]["syncd_runner"]
    assert runner["slurm_input_rules"]["cpu_per_task"]["unit"] == "None"
    assert runner["slurm_input_rules"]["time"] == {"max": 10, "min": 1, "default_value": 1, "step": 1, "unit": "Hours"}
    assert gateway.call("GET", "/", auth=False).json() == {"message": "hello world"}
