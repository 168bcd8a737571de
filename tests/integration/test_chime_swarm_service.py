"""The frb-master emulator answers like the service the protocol notes describe, call by call and quirk by quirk.

Each test makes the requests the official client (``chime-frb-api``'s ``core.API`` and ``modules.swarm``) makes, as
the notes record them: a raw JWT in ``authorization``, JSON bodies, names put raw into the path, side-effecting
GETs. The official client itself is driven against the emulator in ``test_chime_swarm_sdk.py``.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import quote

import pytest
import requests

from tests.support.chime_swarm_service import SPAWN_DEFAULTS, ChimeSwarmService, read_jwt


@pytest.fixture(scope="module")
def swarm(chime_swarm_service: ChimeSwarmService) -> ChimeSwarmService:
    return chime_swarm_service


@pytest.fixture(scope="module")
def user(swarm) -> dict:
    return swarm.add_user()


def call(swarm, user, method: str, path: str, **kw) -> requests.Response:
    headers = {"authorization": user["access_token"]} if user else {}
    return requests.request(method, swarm.url + path, headers=headers, timeout=10, **kw)


def spawn(swarm, user, name: str, command: list[str], **fields) -> requests.Response:
    body = {"image_name": "alpine", "command": command, "arguments": [], "job_name": name, **SPAWN_DEFAULTS, **fields}
    return call(swarm, user, "POST", "/v1/swarm/spawn-job", json=body)


def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def test_version_is_open_and_api_calls_need_the_raw_jwt(swarm, user):
    assert requests.get(swarm.url + "/version", timeout=5).json()["version"]
    assert call(swarm, None, "GET", "/v1/swarm/jobs").status_code == 401
    bearer = requests.get(
        swarm.url + "/v1/swarm/jobs", headers={"authorization": f"Bearer {user['access_token']}"}, timeout=5
    )
    assert bearer.status_code == 401, "the token goes in raw, without 'Bearer'"
    assert isinstance(call(swarm, user, "GET", "/v1/swarm/jobs").json(), list)


def test_verify_and_refresh_and_login(swarm, user):
    assert call(swarm, user, "GET", "/auth/verify").json() == {"valid": True}
    assert call(swarm, {"access_token": "x.y.z"}, "GET", "/auth/verify").json() == {"valid": False}
    fresh = call(swarm, user, "POST", "/auth/refresh", json={"refresh_token": user["refresh_token"]})
    assert fresh.status_code == 200
    token = fresh.json()["access_token"]
    assert call(swarm, {"access_token": token}, "GET", "/v1/swarm/jobs").status_code == 200
    refused = call(swarm, user, "POST", "/auth/refresh", json={"refresh_token": "nope"})
    assert refused.status_code == 401
    login = requests.post(swarm.url + "/auth", json={"username": user["user"], "password": user["password"]}, timeout=5)
    assert set(login.json()) == {"access_token", "refresh_token"}
    bad = requests.post(swarm.url + "/auth", json={"username": user["user"], "password": "wrong"}, timeout=5)
    assert bad.status_code == 401


def test_tokens_are_jwts_that_expire_and_a_revoked_refresh_token_is_refused(swarm):
    other = swarm.add_user()
    secret = swarm._load_identity()["secret"]
    claims = read_jwt(secret, other["access_token"])
    assert claims is not None and abs(claims["exp"] - time.time() - swarm.token_life) < 60
    short = {"access_token": swarm.access_token(other["user"], life=-1)}
    assert call(swarm, short, "GET", "/v1/swarm/jobs").status_code == 401
    assert call(swarm, short, "GET", "/auth/verify").json() == {"valid": False}
    swarm.revoke(other["refresh_token"])
    assert (
        call(swarm, other, "POST", "/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401
    )


def test_spawn_runs_the_command_and_status_logs_prune_follow(swarm, user):
    job = name()
    spawn(swarm, user, job, ["sh", "-c"], arguments=['echo out; echo err >&2; echo "$GREETING"'])
    answer = spawn(
        swarm,
        user,
        job + "x",
        ["sh", "-c", 'echo out; echo err >&2; echo "$GREETING"'],
        environment={"GREETING": "hi"},
    )
    assert answer.status_code == 200 and set(answer.json()) == {"ID"}
    swarm.wait_for(job + "x", ("complete",))
    assert call(swarm, user, "GET", f"/v1/swarm/job-status/{job}x").json() == {job + "x": "complete"}
    assert call(swarm, user, "GET", f"/v1/swarm/logs/{job}x").json() == {job + "x": "out\nerr\nhi\n"}
    assert job + "x" in call(swarm, user, "GET", "/v1/swarm/jobs").json()
    assert call(swarm, user, "GET", f"/v1/swarm/prune-job/{job}x").json() == {job + "x": True}
    assert call(swarm, user, "GET", f"/v1/swarm/job-status/{job}x").json() == {}
    # the first one ran "sh -c" with the script as its argument: arguments follow the command
    swarm.wait_for(job, ("complete",))
    assert call(swarm, user, "GET", f"/v1/swarm/logs/{job}").json()[job] == "out\nerr\n\n"


def test_status_is_a_regex_search_so_a_name_finds_the_names_it_prefixes(swarm, user):
    base = name()
    for job in (base, base + "-2", base + "-10"):
        assert spawn(swarm, user, job, ["true"]).status_code == 200
    for job in (base, base + "-2", base + "-10"):
        swarm.wait_for(job, ("complete",))
    assert set(call(swarm, user, "GET", f"/v1/swarm/job-status/{base}").json()) == {base, base + "-2", base + "-10"}
    anchored = quote(f"^(?:{base}|{base}-2)$", safe="")
    assert call(swarm, user, "GET", f"/v1/swarm/job-status/{anchored}").json() == {
        base: "complete",
        base + "-2": "complete",
    }
    assert call(swarm, user, "GET", "/v1/swarm/job-status/" + quote("(", safe="")).status_code == 400
    pruned = call(swarm, user, "GET", f"/v1/swarm/prune-job/{base}").json()
    assert pruned == {base: True, base + "-2": True, base + "-10": True}


def test_a_failed_job_is_failed_and_prune_leaves_it_and_kill_removes_it(swarm, user):
    job = name()
    spawn(swarm, user, job, ["sh", "-c", "exit 3"])
    assert swarm.wait_for(job, ("failed",))["exit_code"] == 3
    assert call(swarm, user, "GET", f"/v1/swarm/prune-job/{job}").json() == {}
    assert call(swarm, user, "GET", f"/v1/swarm/kill-job/{job}").json() == {job: True}
    assert call(swarm, user, "GET", f"/v1/swarm/job-status/{job}").json() == {}
    assert call(swarm, user, "GET", f"/v1/swarm/kill-job/{job}").json() == {job: False}
    assert call(swarm, user, "GET", f"/v1/swarm/logs/{job}").status_code == 404


def test_kill_stops_a_running_job_and_it_disappears(swarm, user, tmp_path):
    job = name()
    marker = tmp_path / "after"
    spawn(swarm, user, job, ["sh", "-c", f"echo started; sleep 30; touch {marker}"])
    swarm.wait_for(job, ("running",))
    assert call(swarm, user, "GET", f"/v1/swarm/kill-job/{job}").json() == {job: True}
    assert job not in call(swarm, user, "GET", "/v1/swarm/jobs").json()
    assert not marker.exists()


def test_pending_while_held_and_the_success_spelling_is_a_knob(swarm, user):
    job = name()
    swarm.hold()
    try:
        spawn(swarm, user, job, ["true"])
        time.sleep(0.1)  # nodes look every 20 ms: a held job must still be pending after several looks
        assert call(swarm, user, "GET", f"/v1/swarm/job-status/{job}").json() == {job: "pending"}
        assert call(swarm, user, "GET", f"/v1/swarm/logs/{job}").json() == {job: ""}
        swarm.success_word = "completed"
    finally:
        swarm.hold(False)
    try:
        assert swarm.wait_for(job, ("completed",))["state"] == "completed"
    finally:
        swarm.success_word = "complete"


def test_spawn_refuses_what_docker_refuses(swarm, user):
    job = name()
    assert spawn(swarm, user, job, ["true"]).status_code == 200
    assert spawn(swarm, user, job, ["true"]).status_code == 500, "a name in use"
    assert spawn(swarm, user, "bad name!", ["true"]).status_code == 500
    assert spawn(swarm, user, "x" * 64, ["true"]).status_code == 500
    assert spawn(swarm, user, name(), ["true"], job_mem_reservation=2, job_mem_limit=1).status_code == 500
    assert spawn(swarm, user, name(), ["true"], job_cpu_limit="2").status_code == 400
    assert spawn(swarm, user, name(), [1]).status_code == 400
    assert spawn(swarm, user, name(), ["true"], surprise=1).status_code == 400
    raw = call(swarm, user, "POST", "/v1/swarm/spawn-job", data=b"{")
    assert raw.status_code == 400


def test_an_image_the_nodes_cannot_pull_is_rejected(swarm, user):
    job = name()
    swarm.missing_images.add("ghcr.io/nowhere/none:1")
    try:
        spawn(swarm, user, job, ["true"], image_name="ghcr.io/nowhere/none:1")
        assert swarm.wait_for(job, ("rejected",))["state"] == "rejected"
    finally:
        swarm.missing_images.clear()


def test_a_request_line_over_8_kib_is_414(swarm, user):
    answer = call(swarm, user, "GET", "/v1/swarm/job-status/" + "a" * 9000)
    assert answer.status_code == 414


def test_state_survives_a_restart_and_a_job_running_then_is_orphaned(tmp_path):
    first = ChimeSwarmService(tmp_path / "state").start()
    user = first.add_user()
    try:
        spawn(first, user, "done-job", ["true"])
        first.wait_for("done-job", ("complete",))
        spawn(first, user, "long-job", ["sleep", "30"])
        first.wait_for("long-job", ("running",))
    finally:
        first.stop()
    second = ChimeSwarmService(tmp_path / "state").start()
    try:
        states = call(second, user, "GET", "/v1/swarm/job-status/-job").json()
        assert states == {"done-job": "complete", "long-job": "orphaned"}
        assert json.loads((tmp_path / "state" / "identity.json").read_text())["users"]
    finally:
        second.stop()
