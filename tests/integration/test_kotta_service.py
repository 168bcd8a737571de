"""The Cloud Kotta emulator answers like the service the protocol notes describe, call by call and quirk by quirk.

There is no official SDK on PyPI (the client, ``kotta_client``, was never published): each test here makes the
official client's own requests, as the notes record them (form fields, a form body on a GET, the flattening of
``items``, the parsing of output links), and checks the answers the notes and the server's source say it gets.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.kotta_service import BUCKET, MEMFILE_MAX, KottaService

pytestmark = pytest.mark.s3

CLIENT_STATES = {
    "unsubmitted",
    "pending",
    "staging_inputs",
    "cancelled",
    "completed",
    "failed",
    "processing",
    "staging_outputs",
}  # KottaJob.set_status raises on any other word


@pytest.fixture(scope="module")
def kotta(kotta_service: KottaService):
    return kotta_service


@pytest.fixture(scope="module")
def user(kotta):
    return kotta.add_user()


def rest(kotta: KottaService, path: str) -> str:
    return f"{kotta.url}/rest/v1/{path}"


def submit(kotta, user, *, refresh: bool = False, **fields) -> dict:
    """``Kotta.submit_task``: the job's fields plus both tokens, form-encoded (None values are dropped)."""
    form = {
        "jobtype": "script",
        "queue": "Test",
        "walltime": "300",
        "executable": "/bin/sh job.sh",
        "script_name": "job.sh",
        "script": "echo hello",
        "output_file_stdout": "STDOUT.txt",
        "output_file_stderr": "STDERR.txt",
        "access_token": user["access_token"],
        "refresh_token": user["refresh_token"] if refresh else None,
        **fields,
    }
    return requests.post(rest(kotta, "submit_task"), data=form, timeout=10).json()


def an_input(kotta, content: bytes = b"input\n", name: str | None = None) -> str:
    """An object the job can read, named by an ``s3://`` URL as the samples do."""
    key = f"inputs/{name or uuid.uuid4().hex + '.txt'}"
    kotta.s3.client().put_object(Bucket=BUCKET, Key=key, Body=content)
    return f"s3://{BUCKET}/{key}"


def status(kotta, job_id: str) -> dict:
    """``Kotta.status_task``: ``items`` flattened; inputs and outputs (several items each) become lists."""
    answer = requests.get(f"{rest(kotta, 'status_task')}/{job_id}", timeout=10)
    assert answer.status_code == 200, answer.text[:300]
    results = answer.json()
    flat: dict = {"status": results["status"]}
    for index in results["items"]:
        ((key, value),) = results["items"][index].items()
        if key in ("inputs", "outputs"):
            flat.setdefault(key, []).append(value)
        else:
            flat[key] = value
    return flat


def link(text: str) -> tuple[str | None, str]:
    """``KOut``: ``<a href="URL">name</a>`` or ``<i>name</i>`` (no file)."""
    if text.startswith('<a href="') and text.endswith("</a>"):
        url, name = text[9:-4].split('">')
        return url, name
    assert text.startswith("<i>") and text.endswith("</i>"), text
    return None, text[3:-4]


def ran(kotta, job_id: str, timeout: float = 30) -> dict:
    kotta.wait_for(job_id, timeout=timeout)
    return status(kotta, job_id)


def test_submit_runs_a_script_and_status_shows_outputs_as_links(kotta, user):
    job = submit(
        kotta,
        user,
        jobname="first",
        walltime="2",
        inputs=an_input(kotta, b"b\na\n", "sort-me.txt"),
        script="echo to-out; echo to-err >&2; sort sort-me.txt > sorted.txt; echo $TURING_JOB_ID",
        outputs="sorted.txt, missing.txt",
    )
    assert job["status"] == "Success" and re.fullmatch(r"[0-9a-f-]{36}", job["job_id"]), job
    info = ran(kotta, job["job_id"])
    assert info["status"] == "completed" and info["jobname"] == "first" and info["jobtype"] == "script"
    assert info["walltime"] == 120, "minutes on the wire, seconds in the record"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", info["submit_time"]) and "i_script" not in info
    assert info["inputs"] == [f'<a href="s3://{BUCKET}/inputs/sort-me.txt">sort-me.txt</a>']
    links = dict(reversed(link(o)) for o in info["outputs"])
    assert sorted(links) == ["STDERR.txt", "STDOUT.txt", "job.sh", "missing.txt", "sorted.txt"]
    assert links["missing.txt"] is None, "a declared output the job did not write is shown in <i>"
    assert requests.get(links["sorted.txt"], timeout=10).content == b"a\nb\n"
    assert requests.get(links["STDOUT.txt"], timeout=10).text == f"to-out\n{job['job_id']}\n"
    assert requests.get(links["STDERR.txt"], timeout=10).text == "to-err\n"
    assert "/outputs/" + job["job_id"] + "/sorted.txt" in urlsplit(links["sorted.txt"]).path


def test_status_items_are_numbered_one_key_objects_in_no_fixed_order(kotta, user):
    job = submit(kotta, user, inputs=an_input(kotta))
    assert status(kotta, job["job_id"])["jobname"] == job["job_id"], "jobname defaults to the job id"
    answers = [requests.get(f"{rest(kotta, 'status_task')}/{job['job_id']}", timeout=10).json() for _ in range(6)]
    for answer in answers:
        assert list(answer["items"]) == [str(i) for i in range(len(answer["items"]))]
        assert all(len(item) == 1 for item in answer["items"].values())
    assert len({tuple(next(iter(i)) for i in a["items"].values()) for a in answers}) > 1, "DynamoDB's order varies"


def test_list_tasks_is_a_get_with_a_form_body_and_lists_no_jobname(kotta):
    someone = kotta.add_user("Grace Hopper")
    job = submit(kotta, someone, jobname="listed", inputs=an_input(kotta))
    answer = requests.get(rest(kotta, "list_tasks"), data={"access_token": someone["access_token"]}, timeout=10)
    listed = answer.json()
    assert listed["status"] == "Success"
    (item,) = listed["items"].values()
    assert item["job_id"] == job["job_id"] and set(item) == {"job_id", "status", "jobtype", "submit_stamp"}
    in_query = requests.get(rest(kotta, "list_tasks"), params={"access_token": someone["access_token"]}, timeout=10)
    assert in_query.json() == {"status": "Fail", "reason": "access_token missing"}, "only the body is read"
    as_json = requests.get(rest(kotta, "list_tasks"), json={"access_token": someone["access_token"]}, timeout=10)
    assert as_json.json() == {"status": "Fail", "reason": "access_token missing"}


def test_refusals_are_fail_objects_with_http_200(kotta, user):
    kotta_user = kotta.add_user("Expired Token")
    kotta.expire(kotta_user["access_token"])
    listed = requests.get(rest(kotta, "list_tasks"), data={"access_token": kotta_user["access_token"]}, timeout=10)
    assert (listed.status_code, listed.json()) == (200, {"status": "Fail", "reason": "Failed to authenticate"})
    # validate_tokens returns a dict on this path; the route unpacks its two keys and fails later
    assert submit(kotta, kotta_user) == {"status": "Fail", "reason": "'user_id'"}
    assert submit(kotta, user, queue="Nightly")["reason"] == "Queue : [Nightly] is not valid"
    assert submit(kotta, user, walltime="1.5")["status"] == "Fail"
    assert submit(kotta, user, jobtype=None)["reason"] == "'NoneType' object has no attribute 'strip'"
    assert submit(kotta, {"access_token": None, "refresh_token": None}) == {
        "status": "Fail",
        "reason": "access_token missing",
    }


def test_a_wrong_queue_leaves_a_record_that_never_runs(kotta):
    someone = kotta.add_user("Queue Typo")
    assert submit(kotta, someone, jobname="ghost", queue="test")["status"] == "Fail"
    (record,) = kotta.named("ghost")
    assert record["status"] == "pending" and record["i_user_id"] == someone["user_id"]
    listed = requests.get(rest(kotta, "list_tasks"), data={"access_token": someone["access_token"]}, timeout=10)
    assert [i["status"] for i in listed.json()["items"].values()] == ["pending"]


def test_a_refresh_token_stands_in_for_an_expired_access_token_except_on_list(kotta):
    someone = kotta.add_user("Refreshing")
    kotta.expire(someone["access_token"])
    assert submit(kotta, someone, refresh=True, inputs=an_input(kotta))["status"] == "Success"
    listed = requests.get(
        rest(kotta, "list_tasks"),
        data={"access_token": someone["access_token"], "refresh_token": someone["refresh_token"]},
        timeout=10,
    )
    assert listed.json()["reason"] == "Failed to authenticate", "list_tasks reads the access token only"
    bad = submit(kotta, {**someone, "refresh_token": "Atzr|revoked"}, refresh=True)
    assert bad["status"] == "Fail" and json.loads(bad["reason"])["error"] == "invalid_grant"


def test_a_session_cookie_outlives_a_refused_token(kotta):
    """Bottle's cookie session (session.auto) keeps the user: a client that keeps cookies goes on working with a
    token the server refuses. The official client keeps none."""
    someone = kotta.add_user("Cookie Keeper")
    with requests.Session() as browser:
        first = browser.post(
            rest(kotta, "submit_task"),
            data={
                "access_token": someone["access_token"],
                "jobtype": "script",
                "queue": "Test",
                "walltime": "1",
                "executable": "true",
                "script": "",
                "script_name": "x.sh",
                "inputs": an_input(kotta),
            },
            timeout=10,
        )
        assert first.json()["status"] == "Success" and "beaker.session.id" in browser.cookies
        kotta.expire(someone["access_token"])
        again = browser.post(
            rest(kotta, "submit_task"),
            data={
                "access_token": someone["access_token"],
                "jobtype": "script",
                "queue": "Test",
                "walltime": "1",
                "executable": "true",
                "script": "",
                "script_name": "x.sh",
                "inputs": an_input(kotta),
            },
            timeout=10,
        )
        assert again.json()["status"] == "Success"
    assert submit(kotta, someone)["reason"] == "'user_id'", "without the cookie the token is refused"


def test_a_login_that_is_not_a_kotta_user_is_an_html_500(kotta):
    stranger = kotta.add_user("Not Registered", kotta_user=False)
    answer = requests.get(rest(kotta, "list_tasks"), data={"access_token": stranger["access_token"]}, timeout=10)
    assert answer.status_code == 500 and answer.headers["Content-Type"].startswith("text/html")


def test_status_is_unauthenticated_and_an_unknown_id_is_an_html_500(kotta, user):
    job = submit(kotta, user, inputs=an_input(kotta))
    assert requests.get(f"{rest(kotta, 'status_task')}/{job['job_id']}", timeout=10).status_code == 200
    unknown = requests.get(f"{rest(kotta, 'status_task')}/{uuid.uuid4()}", timeout=10)
    assert unknown.status_code == 500 and unknown.headers["Content-Type"].startswith("text/html")
    assert "Error: 500 Internal Server Error" in unknown.text and "AttributeError" in unknown.text


def test_a_script_job_without_inputs_cannot_be_read_back(kotta, user):
    """``get_job_info`` shows ``inputs[0]``: a job with none answers an HTML 500 on every status request."""
    job = submit(kotta, user, inputs="")
    assert job["status"] == "Success"
    assert requests.get(f"{rest(kotta, 'status_task')}/{job['job_id']}", timeout=10).status_code == 500


def test_there_is_no_rest_cancel_and_wrong_methods_are_405(kotta, user):
    assert (
        requests.post(rest(kotta, "cancel_task"), data={"access_token": user["access_token"]}, timeout=10).status_code
        == 404
    )
    assert requests.get(rest(kotta, "submit_task"), timeout=10).status_code == 405
    assert requests.post(f"{rest(kotta, 'status_task')}/x", timeout=10).status_code == 405


def test_a_form_body_over_bottles_memfile_max_is_413(kotta, user):
    answer = requests.post(
        rest(kotta, "submit_task"), data={"access_token": user["access_token"], "script": "x" * MEMFILE_MAX}, timeout=10
    )
    assert answer.status_code == 413 and "Request entity too large" in answer.text


def test_upload_url_is_a_presigned_put_under_the_users_uploads(kotta, user, tmp_path):
    answer = requests.post(
        rest(kotta, "upload_url"),
        data={
            "access_token": user["access_token"],
            "refresh_token": user["refresh_token"],
            "filepath": "data/blob.dat",
        },
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["status"] == "Success"
    url = answer.json()["upload_url"]
    assert requests.put(url, data=b"uploaded", timeout=10).status_code == 200  # curl --upload-file
    key = f"uploads/{user['user_id']}/python/pkl/data/blob.dat"
    assert kotta.s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"uploaded"
    job = submit(kotta, user, inputs=f"s3://{BUCKET}/{key}", script="cat blob.dat > copy.txt", outputs="copy.txt")
    info = ran(kotta, job["job_id"])
    url = dict(reversed(link(o)) for o in info["outputs"])["copy.txt"]
    assert requests.get(url, timeout=10).content == b"uploaded"
    refused = requests.post(
        rest(kotta, "upload_url"), data={"access_token": "Atza|nobody", "filepath": "x"}, timeout=10
    )
    assert refused.json() == {"status": "Fail", "reason": "'user_id'"}


def test_s3_inputs_lose_trailing_s_3_colon_and_slash_characters(kotta, user):
    """``src.strip("s3://")`` strips characters, not a prefix: a key ending in 's' names another object."""
    url = an_input(kotta, b"x", "results")
    info = ran(kotta, submit(kotta, user, inputs=url)["job_id"])
    assert info["status"] == "failed" and info["ERROR"].startswith("Failed to download inputs"), info


def test_an_input_url_of_another_kind_is_skipped_silently(kotta, user):
    job = submit(
        kotta,
        user,
        inputs=f"ftp://example.org/data.txt,{an_input(kotta, b'x', 'here.txt')}",
        script="ls > listing.txt",
        outputs="listing.txt",
    )
    info = ran(kotta, job["job_id"])
    assert info["status"] == "completed" and info["inputs"] == ['<a href="ftp://example.org/data.txt">data.txt</a>']
    listing = dict(reversed(link(o)) for o in info["outputs"])["listing.txt"]
    assert "here.txt" in (names := requests.get(listing, timeout=10).text) and "data.txt" not in names


def test_an_http_input_lands_under_the_last_url_segment_query_included(kotta, user):
    """The file is named after the URL's last ``/``-segment, query and all; a SigV4 presigned URL's query makes a
    name longer than the filesystem allows, and the download fails."""
    key = "inputs/short.txt"
    kotta.s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"x")
    v2 = kotta.s3.client().generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key})
    job = submit(kotta, user, inputs=v2, script="ls short.txt?* > names.txt", outputs="names.txt")
    names = dict(reversed(link(o)) for o in ran(kotta, job["job_id"])["outputs"])["names.txt"]
    assert requests.get(names, timeout=10).text == v2.split("/")[-1] + "\n"
    v4 = kotta.s3.client(signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}
    )
    info = ran(kotta, submit(kotta, user, inputs=v4)["job_id"])
    assert info["status"] == "failed" and "File name too long" in info["ERROR"], info


def test_walltime_kills_the_job_with_error_code_1001(kotta, user):
    job = submit(kotta, user, walltime="1", inputs=an_input(kotta), script="echo begun; sleep 60")
    record = kotta.wait_for(job["job_id"])
    assert (record["status"], record["ERROR_CODE"]) == ("failed", 1001)
    stdout = dict(reversed(link(o)) for o in status(kotta, job["job_id"])["outputs"])["STDOUT.txt"]
    assert requests.get(stdout, timeout=10).text == "begun\n"


def test_a_cancel_from_the_web_ui_kills_a_long_job_with_1002_and_the_executor_overwrites_the_status(kotta, user):
    job = submit(kotta, user, walltime="60", inputs=an_input(kotta), script="sleep 60")
    kotta.wait_for(job["job_id"], states=("processing",))
    kotta.web_cancel(job["job_id"])
    record = kotta.wait_for(job["job_id"], states=("failed",))
    # The runner may notice the cancel before anyone reads the record back, so "cancelled" is checked through
    # what it leaves behind: the web UI's cancel_time and reason survive the executor's final status.
    assert record["ERROR_CODE"] == 1002 and record["reason"] == "User request cancel" and record["cancel_time"]


def test_an_exception_in_the_application_says_Failed_and_the_job_may_still_end_completed(kotta, user):
    job = submit(kotta, user, inputs=an_input(kotta), script_name=None)
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "completed" not in seen:
        seen.add(kotta.table.get(job["job_id"])["status"])
        time.sleep(0.01)
    record = kotta.table.get(job["job_id"])
    assert record["status"] == "completed" and record["ERROR"], record
    assert "Failed" not in CLIENT_STATES, "the official client raises on the capital-F word"


def test_a_nonzero_exit_is_failed_with_its_code_written_after_the_status(kotta, user):
    job = submit(kotta, user, inputs=an_input(kotta), script="exit 7")
    record = kotta.wait_for(job["job_id"])
    assert (record["status"], record["ERROR_CODE"]) == ("failed", 7)
    assert list(record).index("ERROR_CODE") > list(record).index("status")


def test_a_short_walltime_runs_the_executable_without_a_shell(kotta, user):
    """Up to 300 s the executable is split like a shell would and run directly; above, /bin/sh runs it."""
    short = submit(
        kotta, user, walltime="5", inputs=an_input(kotta), executable="echo $HOME > home.txt", outputs="home.txt"
    )
    long = submit(
        kotta, user, walltime="6", inputs=an_input(kotta), executable="echo $HOME > home.txt", outputs="home.txt"
    )
    assert (
        requests.get(
            dict(reversed(link(o)) for o in ran(kotta, short["job_id"])["outputs"])["STDOUT.txt"], timeout=10
        ).text
        == "$HOME > home.txt\n"
    )
    home = dict(reversed(link(o)) for o in ran(kotta, long["job_id"])["outputs"])["home.txt"]
    assert requests.get(home, timeout=10).text == "/home/ubuntu\n"


def test_the_official_clients_flow_submit_wait_status_fetch(kotta, user):
    """``KottaJob(**desc).submit(conn)``, ``wait`` (every state in its whitelist), ``status`` (STDOUT/STDERR
    singled out), then each output fetched by its URL."""
    desc = {
        "inputs": "",
        "outputs": "",
        "walltime": 300,
        "queue": "Test",
        "output_file_stdout": "STDOUT.txt",
        "output_file_stderr": "STDERR.txt",
        "jobtype": "script",
        "executable": "/bin/bash numbers.sh",
        "script_name": "numbers.sh",
        "script": "seq 3 > numbers.txt; echo made",
    }
    desc["inputs"] = an_input(kotta, b"1\n")
    desc["outputs"] = "numbers.txt"
    answer = submit(kotta, user, refresh=True, **{k: str(v) for k, v in desc.items()})
    assert answer["status"] == "Success"
    seen = []
    for _ in range(300):
        word = status(kotta, answer["job_id"])["status"]
        seen.append(word)
        if word in ("completed", "cancelled", "failed"):
            break
        time.sleep(0.05)
    assert set(seen) <= CLIENT_STATES and seen[-1] == "completed", seen
    outputs = [link(o) for o in status(kotta, answer["job_id"])["outputs"]]
    named = {name: url for url, name in outputs}
    assert requests.get(named["STDOUT.txt"], timeout=10).text == "made\n"
    assert requests.get(named["numbers.txt"], timeout=10).text == "1\n2\n3\n"


def test_state_survives_a_restart_and_pending_jobs_run_after_it(seaweedfs, tmp_path):
    first = KottaService(tmp_path / "kotta", seaweedfs, minute=2.0).start()
    try:
        someone = first.add_user()
        first.hold()
        waiting = submit(first, someone, inputs=an_input(first), script="echo later")
        assert status(first, waiting["job_id"])["status"] == "pending"
    finally:
        first.stop()
    second = KottaService(tmp_path / "kotta", seaweedfs, minute=2.0).start()
    try:
        assert ran(second, waiting["job_id"])["status"] == "completed"
        listed = requests.get(rest(second, "list_tasks"), data={"access_token": someone["access_token"]}, timeout=10)
        assert [i["job_id"] for i in listed.json()["items"].values()] == [waiting["job_id"]]
    finally:
        second.stop()
