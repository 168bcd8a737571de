"""The Workflow Buckets emulator behaves as the protocol notes and workflow-core's runner say, call by call."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.support.chime_workflow_service import ChimeWorkflowService


def _work(tag: str, **extra) -> dict:
    return {"pipeline": "syncd-jobs", "site": "local", "user": "tester", "tags": [tag], "retries": 0, **extra}


@pytest.fixture
def client(chime_workflow_service):
    session = requests.Session()
    session.headers["x-access-token"] = chime_workflow_service.token
    yield session
    session.close()


def _wait_done(client, url: str, work_id: str, deadline: float = 20.0) -> dict:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        (doc,) = client.post(f"{url}/view", json={"query": {"id": work_id}, "projection": {"_id": False}}).json()
        if doc["status"] in ("success", "failure"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"work {work_id} did not end")


def test_tokens_are_checked_on_every_route_but_version(chime_workflow_service):
    url = chime_workflow_service.url
    assert requests.head(f"{url}/version").status_code == 200
    assert requests.post(f"{url}/view", json={"query": {}}).status_code == 401
    refused = requests.post(f"{url}/view", json={"query": {}}, headers={"x-access-token": "wrong"})
    assert refused.status_code == 403 and "detail" in refused.json()


def test_deposit_runs_on_the_site_runner_with_runner_results(client, chime_workflow_service):
    url, tag = chime_workflow_service.url, f"t-{uuid.uuid4().hex}"
    ids = client.post(
        f"{url}/work?return_ids=True&return_ids=True",
        json=[_work(tag, command=["sh", "-c", "echo out; echo err >&2"])],
    ).json()
    assert len(ids) == 1 and len(ids[0]) == 24
    doc = _wait_done(client, url, ids[0])
    assert doc["status"] == "success" and doc["attempt"] == 1 and doc["start"] <= doc["stop"]
    command = ["sh", "-c", "echo out; echo err >&2"]
    assert doc["results"] == {"args": command, "stdout": ["out"], "stderr": ["err"], "returncode": 0}


def test_a_failing_command_fails_without_results_and_is_not_retried_with_retries_zero(client, chime_workflow_service):
    url, tag = chime_workflow_service.url, f"t-{uuid.uuid4().hex}"
    (work_id,) = client.post(f"{url}/work?return_ids=True", json=[_work(tag, command=["sh", "-c", "exit 3"])]).json()
    doc = _wait_done(client, url, work_id)
    assert doc["status"] == "failure" and doc["results"] is None
    chime_workflow_service.audit("failed")
    assert chime_workflow_service.get(work_id)["status"] == "failure", "retries: 0 keeps the audit from re-queueing"


def test_a_command_past_its_timeout_is_stopped(client, chime_workflow_service):
    url, tag = chime_workflow_service.url, f"t-{uuid.uuid4().hex}"
    (work_id,) = client.post(
        f"{url}/work?return_ids=True", json=[_work(tag, command=["sleep", "30"], timeout=1)]
    ).json()
    doc = _wait_done(client, url, work_id)
    assert doc["status"] == "failure" and doc["stop"] - doc["start"] < 10


def test_view_queries_tags_projects_and_pages(client, chime_workflow_service):
    url, tag = chime_workflow_service.url, f"t-{uuid.uuid4().hex}"
    chime_workflow_service.hold()
    try:
        assert client.post(f"{url}/work", json=[_work(tag), _work(tag), _work("other")]).json() is True
        body = {"query": {"tags": {"$in": [tag, "nothing"]}}, "projection": {"status": True, "tags": True}}
        found = client.post(f"{url}/view", json={**body, "limit": 1}).json()
        rest = client.post(f"{url}/view", json={**body, "skip": 1}).json()
        assert [d["tags"] for d in found + rest] == [[tag], [tag]]
        assert set(found[0]) == {"status", "tags"} and found[0]["status"] == "queued"
        ids = [d["id"] for d in client.post(f"{url}/view", json={"query": {"tags": tag}}).json()]
        assert client.delete(f"{url}/work", params={"ids": ids}).json() is True
        assert client.post(f"{url}/view", json={"query": {"tags": tag}}).json() == []
    finally:
        chime_workflow_service.hold(False)


def test_withdraw_takes_the_highest_priority_and_update_needs_a_known_id(client, chime_workflow_service):
    url, tag = chime_workflow_service.url, f"t-{uuid.uuid4().hex}"
    chime_workflow_service.hold()
    try:
        client.post(f"{url}/work", json=[_work(tag, priority=1), _work(tag, priority=5, pipeline="elsewhere")])
        taken = client.post(f"{url}/work/withdraw", json={"pipeline": {"$in": ["elsewhere"]}, "tags": {"$in": [tag]}})
        assert taken.json()["priority"] == 5 and taken.json()["status"] == "running"
        empty = client.post(f"{url}/work/withdraw", json={"pipeline": {"$in": ["elsewhere"]}, "tags": {"$in": [tag]}})
        assert empty.json() == {}
        done = {**taken.json(), "status": "success"}
        assert client.put(f"{url}/work", json=[done]).json() is True
        assert client.put(f"{url}/work", json=[{**done, "id": "0" * 24}]).status_code == 404
        assert client.post(f"{url}/work", json=[{"pipeline": "bad name!"}]).status_code == 422
        assert client.post(f"{url}/work", json=[_work(tag, command=["x"], function="f")]).status_code == 422
    finally:
        chime_workflow_service.hold(False)
        ids = [d["id"] for d in client.post(f"{url}/view", json={"query": {"tags": tag}}).json()]
        client.delete(f"{url}/work", params={"ids": ids})


def test_state_survives_a_restart_and_a_function_runner_archives_products(tmp_path):
    product = tmp_path / "made.dat"

    def pipeline(**params):
        product.write_text(params["word"])
        return {"word": params["word"]}, [str(product)], []

    service = ChimeWorkflowService(tmp_path / "state", runners=1, function=pipeline).start()
    service.hold()
    try:
        session = requests.Session()
        session.headers["x-access-token"] = service.token
        (work_id,) = session.post(
            f"{service.url}/work?return_ids=True", json=[_work("p", parameters={"word": "hi"})]
        ).json()
        service.stop()
        service = ChimeWorkflowService(tmp_path / "state", runners=1, function=pipeline).start()
        session.headers["x-access-token"] = service.token
        doc = _wait_done(session, service.url, work_id)
        assert doc["status"] == "success" and doc["results"] == {"word": "hi"}
        (archived,) = doc["products"]
        assert archived.startswith(str(service.archive / "workflow")) and archived.endswith(f"/{work_id}/made.dat")
        assert open(archived).read() == "hi"
    finally:
        service.stop()
