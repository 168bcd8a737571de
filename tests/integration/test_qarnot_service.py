"""The Qarnot emulator keeps each quirk of the service that shared/protocols/qarnot.md lists (one test each)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import boto3
import pytest
import requests
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

pytestmark = pytest.mark.s3


class Api:
    def __init__(self, emulator, token=None):
        self.url = emulator.url
        self.session = requests.Session()
        self.session.headers["Authorization"] = token or emulator.token

    def __call__(self, method, path, body=None, **kw):
        return self.session.request(method, self.url + path, json=body, timeout=10, **kw)


def task_body(command, **extra):
    return {
        "name": "t",
        "profile": "docker-batch",
        "instanceCount": 1,
        "constants": [{"key": "DOCKER_CMD", "value": command}],
        **extra,
    }


def wait_ended(api, task_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = api("GET", f"/tasks/{task_id}").json()
        if task["state"] in ("Success", "Failure", "Cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not end")


def s3(emulator, secret=None):
    return boto3.client(
        "s3",
        endpoint_url=emulator.s3.endpoint,
        aws_access_key_id=emulator.email,
        aws_secret_access_key=secret or emulator.token,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def bucket(emulator):
    name = f"q-{uuid.uuid4().hex[:10]}"
    s3(emulator).create_bucket(Bucket=name)
    return name


def test_the_bare_token_is_the_credential_and_anything_else_is_401(qarnot):
    assert Api(qarnot)("GET", "/info").status_code == 200
    assert Api(qarnot, f"Bearer {qarnot.token}")("GET", "/info").status_code == 401
    refused = Api(qarnot, "wrong")("GET", "/tasks/x")
    assert refused.status_code == 401 and "message" in refused.json()


def test_settings_name_the_storage_and_info_the_s3_access_key(qarnot):
    api = Api(qarnot)
    assert api("GET", "/settings").json() == {"storage": qarnot.s3.endpoint}
    assert api("GET", "/info").json()["email"] == qarnot.email


def test_s3_takes_the_email_and_the_api_token_and_refuses_another_secret(qarnot):
    s3(qarnot).list_buckets()
    with pytest.raises(ClientError):
        s3(qarnot, "not-the-token").list_buckets()


def test_a_task_runs_as_a_process_and_reports_no_exit_code(qarnot):
    api = Api(qarnot)
    task_id = api("POST", "/tasks", task_body("sh -c 'echo out; echo err >&2; exit 3'")).json()["uuid"]
    task = wait_ended(api, task_id)
    assert task["state"] == "Failure" and "exitCode" not in str(task)
    assert api("GET", f"/tasks/{task_id}/stdout").text == "out\n"
    assert api("GET", f"/tasks/{task_id}/stderr").text == "err\n"


def test_dates_come_in_both_forms_the_sdk_parses_and_status_has_its_lists(qarnot):
    api = Api(qarnot)
    task = wait_ended(api, api("POST", "/tasks", task_body("true")).json()["uuid"])
    datetime.strptime(task["creationDate"], "%Y-%m-%dT%H:%M:%SZ")
    datetime.strptime(task["endDate"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert task["status"]["executionTimeByCpuModel"] == [] and task["status"]["executionTimeGhzByCpuModel"] == []


def test_shortname_finds_the_task_must_be_dns_safe_and_unique(qarnot):
    api = Api(qarnot)
    name = f"s-{uuid.uuid4().hex[:8]}"
    task_id = api("POST", "/tasks", task_body("true", shortname=name)).json()["uuid"]
    assert api("GET", f"/tasks/{name}").json()["uuid"] == task_id
    assert api("POST", "/tasks", task_body("true", shortname=name)).status_code == 409
    assert api("POST", "/tasks", task_body("true", shortname="Not_DNS")).status_code == 400
    assert api("GET", "/tasks/no-such-task").status_code == 404


def test_malformed_bodies_are_refused(qarnot):
    api = Api(qarnot)
    assert api("POST", "/tasks", data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert api("POST", "/tasks", {"profile": "docker-batch", "instanceCount": 1}).status_code == 400
    assert api("POST", "/tasks", data=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415


def test_bulk_submit_answers_per_item(qarnot):
    answers = Api(qarnot)("POST", "/tasks", [task_body("true"), {"instanceCount": 1}]).json()
    assert answers[0]["statusCode"] == 200 and answers[0]["uuid"]
    assert answers[1]["statusCode"] == 400 and not answers[1]["uuid"]


def test_paging_is_a_post_with_a_tag_filter_and_ends_with_a_null_next_token(qarnot):
    api = Api(qarnot)
    tag = f"tag-{uuid.uuid4().hex[:6]}"
    made = {api("POST", "/tasks", task_body("true", tags=[tag, "other"])).json()["uuid"] for _ in range(5)}
    seen, token, pages = set(), None, 0
    while True:
        page = api(
            "POST",
            "/tasks/paginate",
            {"filter": {"operator": "Equal", "field": "Tags", "value": tag}, "token": token, "maximumResults": 2},
        ).json()
        seen |= {t["uuid"] for t in page["data"]}
        pages += 1
        if not page["isTruncated"] or page["nextToken"] is None:
            break
        token = page["nextToken"]
    assert seen == made and pages == 3
    summaries = api("POST", "/tasks/summaries/paginate", {"filter": None, "token": None, "maximumResults": None})
    assert all("creationDate" in t for t in summaries.json()["data"])


def test_fresh_stdout_gives_each_token_what_it_has_not_read(qarnot):
    api = Api(qarnot)
    task_id = api("POST", "/tasks", task_body("sh -c 'echo one; sleep 0.5; echo two'")).json()["uuid"]
    time.sleep(0.3)
    first = api("POST", f"/tasks/{task_id}/stdout").text
    wait_ended(api, task_id)
    assert first + api("POST", f"/tasks/{task_id}/stdout").text == "one\ntwo\n"
    assert api("GET", f"/tasks/{task_id}/stdout").text == "one\ntwo\n"


def test_abort_is_a_post_refused_once_the_task_ended_and_delete_removes(qarnot):
    api = Api(qarnot)
    task_id = api("POST", "/tasks", task_body("sleep 60")).json()["uuid"]
    assert api("POST", f"/tasks/{task_id}/abort").status_code == 200
    assert wait_ended(api, task_id)["state"] == "Cancelled"
    assert api("POST", f"/tasks/{task_id}/abort").status_code == 403
    assert api("DELETE", f"/tasks/{task_id}").status_code == 200
    assert api("GET", f"/tasks/{task_id}").status_code == 404


def test_credits_hardware_and_task_quota_refusals(qarnot):
    api = Api(qarnot)
    too_big = [{"discriminator": "MinimumCoreHardwareConstraint", "coreCount": 100000}]
    refused = api("POST", "/tasks", task_body("true", hardwareConstraints=too_big))
    assert refused.status_code == 402 and "hardware constraint" in refused.json()["message"]
    qarnot.account(credits=0)
    assert api("POST", "/tasks", task_body("true")).status_code == 402
    qarnot.account(credits=None, max_task=0)
    refused = api("POST", "/tasks", task_body("true"))
    assert refused.status_code == 403 and "maximum number of tasks reached" in refused.json()["message"].lower()


def test_buckets_must_exist(qarnot):
    assert Api(qarnot)("POST", "/tasks", task_body("true", resultBucket="no-such-bucket-x")).status_code == 404


def test_resources_in_filtered_and_stripped_results_out_to_the_result_bucket(qarnot):
    client, resources, results = s3(qarnot), bucket(qarnot), bucket(qarnot)
    client.put_object(Bucket=resources, Key="job1/in.txt", Body=b"data")
    client.put_object(Bucket=resources, Key="job2/other.txt", Body=b"not mine")
    api = Api(qarnot)
    advanced = [
        {
            "bucketName": resources,
            "filtering": {"prefixFiltering": {"prefix": "job1/"}},
            "resourcesTransformation": {"stripPrefix": {"prefix": "job1/"}},
            "cacheTTLSec": None,
        }
    ]
    body = task_body(
        "sh -c 'cat in.txt > out.txt; ls > ls.txt'", advancedResourceBuckets=advanced, resultBucket=results
    )
    task = wait_ended(api, api("POST", "/tasks", body).json()["uuid"])
    assert task["state"] == "Success" and task["resultsCount"] >= 2
    assert client.get_object(Bucket=results, Key="out.txt")["Body"].read() == b"data"
    assert client.get_object(Bucket=results, Key="ls.txt")["Body"].read().split() == [b"in.txt", b"ls.txt", b"out.txt"]


def test_state_survives_a_kill_and_a_running_task_ends_after_the_restart(qarnot):
    api = Api(qarnot)
    task_id = api("POST", "/tasks", task_body("sh -c 'sleep 1; echo late'")).json()["uuid"]
    deadline = time.monotonic() + 10
    while api("GET", f"/tasks/{task_id}").json()["state"] != "FullyExecuting":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    qarnot.kill()
    with pytest.raises(requests.ConnectionError):
        api("GET", f"/tasks/{task_id}")
    qarnot.start()
    assert wait_ended(api, task_id)["state"] == "Success"
    assert api("GET", f"/tasks/{task_id}/stdout").text == "late\n"


def test_injected_faults_answer_before_anything_else(qarnot):
    qarnot.fail_next(503, "Service Unavailable", method="GET", path="/info", retry_after="1")
    answer = Api(qarnot)("GET", "/info")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    assert Api(qarnot)("GET", "/info").status_code == 200
